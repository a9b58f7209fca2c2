"""A new Upstox token reaches a running ingest without a restart, and nothing is lost.

The feed runs on a token from the data directory's token file against the simulator; the
simulator then accepts only a new token (as Upstox does once a daily token has ended) and
drops the feed. The ingest must say the token is rejected, once, and wait without hammering
the server; a new token, from `tickvault token set` (a real process, the token on its stdin)
or from `POST /api/v1/token` (a real uvicorn), must bring the feed back, and the database
must then hold exactly the ticks the simulator sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from api import create_app
from core.config import Secret, Settings
from ingest.service import WebSocketService
from ingest.simulator import FeedSimulator
from ingest.status import IngestStatus
from ingest.tokens import MAX_FILE_BYTES, choose_token, load_token, save_token, token_path
from store.instruments import instrument_records
from tests.conftest import REPO
from tests.test_api import API_KEY, client, serve
from tests.test_ingest_e2e import _assert_exactly_once, _wait_for

OLD = "old-token-5b2e91d0"
NEW = "new-token-c47a0f13"
TOKEN_ROUTE = "/api/v1/token"

Swap = Callable[[Path], Awaitable[None]]


def _settings(data_dir: Path, simulator: FeedSimulator, **overrides: object) -> Settings:
    return Settings(
        data_dir=data_dir,
        upstox_api_base=simulator.url,
        rollup_interval_s=1,
        **overrides,
    )


def _environment(data_dir: Path, **env: str) -> dict[str, str]:
    """A tickvault command's environment: none of a developer's own variables."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TICKVAULT_", "UPSTOX_"))},
        "TICKVAULT_DATA_DIR": str(data_dir),
        "UPSTOX_ACCESS_TOKEN": "",
        **env,
    }


async def _swap_through_the_command(data_dir: Path) -> None:
    """`tickvault token set`, the token typed on its standard input."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tickvault",
        "token",
        "set",
        cwd=REPO,
        env=_environment(data_dir),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    arguments = " ".join(psutil.Process(process.pid).cmdline())
    stdout, stderr = await process.communicate(f"{NEW}\n".encode())
    assert process.returncode == 0, stderr.decode()
    assert "token" in arguments
    assert NEW not in arguments
    assert NEW not in (stdout + stderr).decode()
    assert "stored the analytics token" in stdout.decode()


async def _run_swap(db_url: str, data_dir: Path, swap: Swap) -> tuple[FeedSimulator, dict]:
    """Feed on OLD, then OLD refused and the feed dropped, then `swap` stores NEW."""
    with psycopg.connect(db_url) as conn:
        records = instrument_records(conn)
    simulator = FeedSimulator(records, token=OLD, rate=3000, seed=5)
    await simulator.start()
    seen: dict[str, IngestStatus | int] = {}
    try:
        save_token(data_dir, OLD)
        service = WebSocketService(_settings(data_dir, simulator), db_url)
        await service.start()
        try:
            await _wait_for(lambda: len(simulator.sent_ticks()) > 500)
            seen["before"] = service.status()
            simulator.accept_token(NEW)  # OLD has ended
            await simulator.drop_connections()
            await _wait_for(lambda: service.status().token.state == "rejected")
            seen["rejected"] = service.status()
            await asyncio.sleep(2.5)  # several backoff steps: no authorize call may follow
            seen["waiting"] = service.status()
            sent_while_waiting = len(simulator.sent_ticks())
            await swap(data_dir)
            await _wait_for(lambda: service.status().websocket_connected, 10)
            await _wait_for(lambda: len(simulator.sent_ticks()) > sent_while_waiting + 500)
            seen["after"] = service.status()
        finally:
            await service.stop()
    finally:
        await simulator.stop()
    return simulator, seen


def _check_the_swap(
    db_url: str, simulator: FeedSimulator, seen: dict, caplog: pytest.LogCaptureFixture
) -> None:
    before, rejected, waiting, after = (seen[k] for k in ("before", "rejected", "waiting", "after"))
    assert (before.token.source, before.token.state, before.token.kind) == (
        "file",
        "valid",
        "analytics",
    )
    assert rejected.feed.state == "token_rejected"
    assert waiting.feed.attempts == rejected.feed.attempts, "a rejected token is not retried"
    assert waiting.token.state == "rejected"
    assert (after.token.source, after.token.state) == ("file", "valid")
    assert after.feed.state == "connected"
    lines = [
        r for r in caplog.records if r.levelno >= logging.ERROR and "rejected" in r.getMessage()
    ]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "waits for a new one" in lines[0].getMessage()
    for secret in (OLD, NEW):
        assert secret not in caplog.text
        assert all(secret not in repr(status) for status in seen.values())
    _assert_exactly_once(db_url, simulator)


def test_token_set_while_the_feed_waits_resumes_with_no_tick_lost(
    instruments_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    with caplog.at_level(logging.DEBUG):
        simulator, seen = asyncio.run(
            _run_swap(instruments_db, data_dir, _swap_through_the_command)
        )
    _check_the_swap(instruments_db, simulator, seen, caplog)
    assert stat.S_IMODE(token_path(data_dir).stat().st_mode) == 0o600
    assert load_token(data_dir).token == NEW


def test_post_token_while_the_feed_waits_resumes_with_no_tick_lost(
    instruments_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The API as `tickvault api` runs it: another process's ingest, reached by the file."""
    data_dir = tmp_path / "data"
    api_settings = Settings(data_dir=data_dir, api_key=Secret(API_KEY))
    answers: list[httpx.Response] = []

    with serve(create_app(api_settings, instruments_db)) as base:
        http = client(base)

        def post(body: object, key: str | None = API_KEY) -> httpx.Response:
            headers = {"X-API-Key": key} if key else {}
            return http.post(TOKEN_ROUTE, json=body, headers=headers)

        async def swap(_: Path) -> None:
            for body, key in (
                ({"access_token": NEW}, None),  # no key: refused before the body is read
                ({"access_token": NEW, "kind": "weekly"}, API_KEY),
                ({"access_token": f"{NEW} x", "kind": "daily"}, API_KEY),
                ([NEW], API_KEY),
                ({"access_token": NEW, "kind": "daily"}, API_KEY),
            ):
                answers.append(await asyncio.to_thread(post, body, key))

        with caplog.at_level(logging.DEBUG):
            simulator, seen = asyncio.run(_run_swap(instruments_db, data_dir, swap))
        status = http.get("/api/v1/websocket/status")
        http.close()
    _check_the_swap(instruments_db, simulator, seen, caplog)
    assert [answer.status_code for answer in answers] == [401, 422, 422, 422, 200]
    for answer in answers:
        assert NEW not in answer.text
    stored = answers[-1].json()
    assert stored["kind"] == "daily"
    assert stored["note"].startswith("the running ingest takes it within a second")
    assert stored["expires_at"].endswith("T03:30:00+05:30")
    assert NEW not in status.text
    assert stat.S_IMODE(token_path(data_dir).stat().st_mode) == 0o600


def test_the_environment_token_wins_over_the_file(instruments_db: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    save_token(data_dir, "from-the-file")

    async def scenario() -> IngestStatus:
        with psycopg.connect(instruments_db) as conn:
            records = instrument_records(conn)
        async with FeedSimulator(records, token="from-the-env", rate=500) as simulator:
            settings = _settings(data_dir, simulator, upstox_access_token=Secret("from-the-env"))
            assert choose_token(settings).source == "env"
            service = WebSocketService(settings, instruments_db)
            await service.start()
            try:
                save_token(data_dir, "another-file-token")  # ignored: the environment wins
                await asyncio.sleep(1.5)
                return service.status()
            finally:
                await service.stop()

    status = asyncio.run(scenario())
    assert (status.token.source, status.token.state) == ("env", "valid")
    assert status.websocket_connected


def test_the_token_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        save_token(tmp_path / "data", "a-token-1", kind="daily")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(token_path(tmp_path / "data").stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["upstox_token.json"]


def test_token_status_names_the_source_and_never_the_token(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    def status(**env: str) -> tuple[int, str]:
        done = subprocess.run(
            [sys.executable, "-m", "tickvault", "token", "status"],
            cwd=REPO,
            env=_environment(data_dir, **env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.returncode, done.stdout + done.stderr

    code, text = status()
    assert code == 3
    assert "source: missing" in text
    save_token(data_dir, "stored-token-77", kind="daily")
    code, text = status()
    assert code == 0
    assert "source: file" in text
    assert "kind: daily" in text
    assert "T03:30:00+05:30" in text
    assert "stored-token-77" not in text
    code, text = status(UPSTOX_ACCESS_TOKEN="env-token-88")
    assert code == 0
    assert "source: env" in text
    assert "env-token-88" not in text
    token_path(data_dir).write_text("not json")
    code, text = status()
    assert code == 1
    assert "is not one tickvault wrote" in text


def _token_status(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`tickvault token status` as a user runs it; a hang fails the test at the timeout."""
    return subprocess.run(
        [sys.executable, "-m", "tickvault", "token", "status"],
        cwd=REPO,
        env=_environment(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("kind", ["link to /dev/zero", "link to a token file", "fifo", "huge"])
def test_a_token_path_that_is_not_a_small_regular_file_is_refused_in_one_line(
    tmp_path: Path, kind: str
) -> None:
    """A link to /dev/zero took gigabytes and a FIFO hung the command: each is refused
    without being read, in one line naming the file and the fix."""
    data_dir = tmp_path / "data"
    elsewhere = tmp_path / "elsewhere"
    save_token(elsewhere, "linked-token-31")
    data_dir.mkdir()
    path = token_path(data_dir)
    if kind == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "link to a token file":
        path.symlink_to(token_path(elsewhere))
    elif kind == "fifo":
        os.mkfifo(path, 0o600)
    else:
        path.write_text(" " * (MAX_FILE_BYTES + 1))
        path.chmod(0o600)
    done = _token_status(data_dir)
    assert done.returncode == 1
    expected = {
        "link to /dev/zero": "is a symbolic link, not a file tickvault wrote",
        "link to a token file": "is a symbolic link, not a file tickvault wrote",
        "fifo": "is not a regular file",
        "huge": f"is over {MAX_FILE_BYTES} bytes, more than a token",
    }[kind]
    assert done.stderr.splitlines() == [
        f"tickvault: the token file {path} {expected}: store a token again with"
        " `tickvault token set` or `tickvault login`"
    ]
    assert "linked-token-31" not in done.stdout + done.stderr


def test_a_token_file_others_may_read_is_read_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    save_token(data_dir, "shared-token-52", kind="daily")
    path = token_path(data_dir)
    path.chmod(0o644)
    done = _token_status(data_dir)
    assert done.returncode == 0, done.stderr
    assert "source: file" in done.stdout
    assert done.stderr.splitlines() == [
        f"{path} is open to its group and other users (mode 0644) but holds the Upstox access"
        f" token: run chmod 600 {path}"
    ]
    assert "shared-token-52" not in done.stdout + done.stderr

    # Read again and again (the API reads it per request): warned once.
    path.chmod(0o640)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            stored = load_token(data_dir)
            assert stored is not None
            assert stored.token == "shared-token-52"
    assert [r.getMessage() for r in caplog.records] == [
        f"{path} is open to its group (mode 0640) but holds the Upstox access token:"
        f" run chmod 600 {path}"
    ]
    path.chmod(0o600)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_token(data_dir)
    assert not caplog.records


SIMULATOR_NOTE = (
    "the running ingest feeds from the simulator and takes no token while it runs:"
    " restart it to feed from Upstox with this one"
)


def test_a_stored_token_is_answered_with_what_the_ingest_will_do(
    instruments_db: str, tmp_path: Path
) -> None:
    """An ingest on the simulator never takes a stored token while it runs: POST
    /api/v1/token and `tickvault token set` must say so, not promise a second."""
    alone, beside = tmp_path / "alone", tmp_path / "beside"

    def post(base: str) -> dict[str, object]:
        with client(base) as http:
            answer = http.post(
                TOKEN_ROUTE, json={"access_token": NEW}, headers={"X-API-Key": API_KEY}
            )
        assert answer.status_code == 200, answer.text
        assert NEW not in answer.text
        return answer.json()

    api_alone = Settings(data_dir=alone, api_key=Secret(API_KEY))
    with serve(create_app(api_alone, instruments_db)) as base:
        note = post(base)["note"]
    assert note.startswith("no ingest runs on this data directory: the next one starts with")

    async def beside_an_ingest_on_the_simulator() -> tuple[str, str]:
        service = WebSocketService(Settings(data_dir=beside, simulator_rate=100), instruments_db)
        await service.start()
        try:
            assert service.status().token.source == "simulator"
            api_beside = Settings(data_dir=beside, api_key=Secret(API_KEY))
            app = create_app(api_beside, instruments_db)
            with serve(app) as base:
                with client(base) as http:  # the status is published
                    await _wait_for(lambda: http.get("/api/v1/websocket/status").status_code == 200)
                note = await asyncio.to_thread(post, base)
            command = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tickvault", "token", "set",
                cwd=REPO, env=_environment(beside), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            stdout, stderr = await command.communicate(f"{NEW}\n".encode())
            assert command.returncode == 0, stderr.decode()
            await asyncio.sleep(1.5)  # what the ingest does with it meanwhile
            assert service.status().token.source == "simulator"
            return str(note["note"]), stdout.decode()
        finally:
            await service.stop()

    note, printed = asyncio.run(beside_an_ingest_on_the_simulator())
    assert note == f"{SIMULATOR_NOTE}; see GET /api/v1/websocket/status"
    assert SIMULATOR_NOTE in printed
    assert "within a second" not in printed


def test_a_token_too_short_to_be_real_is_not_stored(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-m", "tickvault", "token", "set"],
        cwd=REPO,
        env=_environment(data_dir),
        input="t\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "tickvault: the access token is shorter than 8 characters: not an Upstox token"
    ]
    assert not token_path(data_dir).exists()
