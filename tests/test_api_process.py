"""The API as a process of its own: `tickvault api` beside `tickvault ingest`.

The ingest runs as a real `tickvault ingest` process against a test database; the API reads
what it publishes (ingest/channels/) for the latest ticks, the status and /health, and
the database for everything else. Once the ingest stops, the live endpoints say so with 503
while history and bars still answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields, replace
from datetime import datetime
from pathlib import Path

import httpx
import psycopg
import pytest

import api.ingest_state
from api import create_app
from core.config import Secret, Settings
from ingest.channels.latest_publisher import LatestTickPublisher
from ingest.channels.latest_reader import LatestTickReader
from ingest.channels.latest_table import published_path
from ingest.simulator import FeedSimulator
from ingest.status import BarsStatus, CacheStatus, FeedStatus, IngestStatus, PipelineStatus
from store.instruments import instrument_records
from store.tick_row import as_dict
from tests.conftest import REPO, DbServer, free_port
from tests.test_api import API_KEY, INFY, client, sample_database, serve, wait_for

LATEST = "/api/v1/websocket/latest-ticks"
STATUS = "/api/v1/websocket/status"
SUBSCRIPTIONS = "/api/v1/websocket/subscriptions"


# --- the processes -------------------------------------------------------------------------


def _environment(url: str, data_dir: Path, **env: str) -> dict[str, str]:
    """The environment of a tickvault command: none of a developer's own variables."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TICKVAULT_", "UPSTOX_"))},
        "TICKVAULT_DATABASE_URL": url,
        "TICKVAULT_DATA_DIR": str(data_dir),
        "UPSTOX_ACCESS_TOKEN": "",  # the built-in simulator unless a test says otherwise
        "TICKVAULT_ROLLUP_INTERVAL_S": "1",
        **env,
    }


@contextmanager
def ingest_process(url: str, data_dir: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """`tickvault ingest` on `data_dir`; stopped with SIGTERM at the end if still running."""
    log = (data_dir.parent / f"ingest-{free_port()}.stderr").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tickvault", "ingest"],
        cwd=REPO,
        env=_environment(url, data_dir, TICKVAULT_LOG_LEVEL="WARNING", **env),
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def _health_command(url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickvault", "health"],
        cwd=REPO,
        env=_environment(url, data_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and a clean exit: the open batch flushed, the table marked stopped."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0


@contextmanager
def simulator_thread(url: str) -> Iterator[FeedSimulator]:
    """A feed simulator on an event loop of its own, so the test can quiet the feed."""
    with psycopg.connect(url) as conn:
        records = instrument_records(conn)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def started() -> FeedSimulator:
        simulator = FeedSimulator(records, rate=2000, seed=11, record=False)
        await simulator.start()
        return simulator

    simulator = asyncio.run_coroutine_threadsafe(started(), loop).result(30)
    try:
        yield simulator
    finally:
        asyncio.run_coroutine_threadsafe(simulator.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


STAND_IN_STATUS = IngestStatus(
    is_running=True,
    websocket_connected=True,
    subscribed_symbols=[],
    feed=FeedStatus(source="stand-in"),
    subscriptions=None,
    pipeline=None,
    writer=None,
    cache=CacheStatus(ticks_processed=0, symbols_tracked=0, ticks_per_second=0.0,
                      ignored_instruments=0),
    journal=None,
    bars=BarsStatus(edition=None, last_rollup_error=None),
)  # fmt: skip


@contextmanager
def stand_in_ingest(data_dir: Path) -> Iterator[None]:
    """What a healthy ingest publishes on `data_dir` (a status and a heartbeat), without
    one: for tests of an API without its own ingest that are not about the ingest."""
    publisher = LatestTickPublisher(published_path(data_dir), capacity=16)
    publisher.publish_status(STAND_IN_STATUS)
    done = threading.Event()

    def beat() -> None:  # the publisher is this thread's alone from here on
        while not done.wait(0.1):
            publisher.publish([])
            publisher.publish_status(STAND_IN_STATUS)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(10)
        publisher.close()


# --- the checks ----------------------------------------------------------------------------


def _newest_row(url: str, key: str) -> tuple[float, datetime]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT ltp, ts FROM ticks WHERE instrument_key = %s"
            " ORDER BY received_at DESC, ts DESC LIMIT 1",
            [key],
        ).fetchone()
    assert row is not None
    return row


def _has_tick(http: httpx.Client, symbol: str) -> bool:
    response = http.get(LATEST, params={"symbols": symbol})
    return response.status_code == 200 and bool(response.json()["ticks"])


def _assert_no_ingest(http: httpx.Client, says: str) -> None:
    """The live endpoints answer 503 with the reader's reason; history still answers."""
    for path, params in ((LATEST, {"symbols": "INFY"}), (LATEST, {}), (STATUS, {})):
        response = http.get(path, params=params)
        assert response.status_code == 503, (path, response.text)
        assert says in response.json()["detail"], response.text
    wait_for(lambda: http.get("/health").status_code == 503, timeout=10)
    health = http.get("/health").json()
    assert health["status"] == "unavailable"
    assert says in health["reason"]
    assert "tickvault_ingest_running 0.0" in http.get("/metrics").text
    ticks = http.get("/api/v1/ticks/INFY")
    assert ticks.status_code == 200
    assert ticks.json()["ticks"]
    bars = http.get("/api/v1/bars/INFY", params={"interval": "1m"})
    assert bars.status_code == 200
    assert bars.json()["bars"]
    assert http.get(SUBSCRIPTIONS).status_code == 200


def test_an_api_without_ingest_serves_what_the_ingest_process_publishes(
    apache_server: DbServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, api_key=Secret(API_KEY))
    with (
        sample_database(apache_server) as url,
        simulator_thread(url) as simulator,
        serve(create_app(settings, url)) as base,
        client(base) as http,
    ):
        # Before any ingest: the live endpoints say so; the database answers.
        response = http.get(LATEST, params={"symbols": "INFY"})
        assert response.status_code == 503
        assert "no ingest has published here" in response.json()["detail"]
        health = http.get("/health")
        assert health.status_code == 503
        assert "no ingest has published here" in health.json()["reason"]

        feed = {"UPSTOX_ACCESS_TOKEN": "test-token", "UPSTOX_API_BASE": simulator.url}
        with ingest_process(url, data_dir, **feed) as ingest:
            wait_for(lambda: http.get("/health").status_code == 200)
            assert http.get("/health").json() == {
                "status": "ok",
                "database": "ok",
                "ingest": "running in another process",
            }
            wait_for(lambda: _has_tick(http, "INFY") and _has_tick(http, "Nifty 50"))

            # A quiet feed: every tick received is written and published, so the API, the
            # reader and the database's newest row agree. A frame already on its way when the
            # stall begins may still land, so the three are read together until they agree.
            simulator.stall(30)
            bodies: list[dict] = []  # the latest-ticks answer of the reading that agreed

            def agree() -> bool:
                body = http.get(LATEST, params={"symbols": "INFY,Nifty 50,VSTIND"}).json()
                with LatestTickReader(published_path(data_dir)) as reader:
                    published = as_dict(reader.latest([INFY])[INFY])
                served = body["ticks"][0]
                bodies[:] = [body]
                return (
                    (served["ltp"], datetime.fromisoformat(served["ts"]))
                    == (published["ltp"], published["ts"])
                    == _newest_row(url, INFY)
                )

            wait_for(agree, timeout=20)
            body = bodies[0]
            assert body["source"] == "cache"
            assert body["missing"] == ["VSTIND"]  # in the master, not in the F&O universe
            infy, nifty = body["ticks"]
            assert (infy["symbol"], infy["instrument_key"]) == ("INFY", INFY)
            assert nifty["instrument_key"] == "NSE_INDEX|Nifty 50"
            wait_for(lambda: http.get(STATUS).json()["writer"]["queue_depth"] == 0, timeout=10)

            every = http.get(LATEST).json()["ticks"]
            symbols = [tick["symbol"] for tick in every]
            assert {"INFY", "TCS", "NIFTY"} <= set(symbols)
            assert symbols == sorted(symbols)

            status = http.get(STATUS).json()
            assert set(status) == {item.name for item in fields(IngestStatus)}
            assert status["is_running"] is True
            assert status["websocket_connected"] is True
            assert status["subscriptions"]["total_symbols"] >= 22
            assert status["subscriptions"]["subscription_rate"] == "100.00%"
            assert status["writer"]["rows_written"] > 0
            assert status["journal"]["bytes_on_disk"] > 0
            assert status["cache"]["symbols_tracked"] >= 22
            assert "INFY" in status["subscribed_symbols"]

            listed = {row["symbol"]: row for row in http.get(SUBSCRIPTIONS).json()}
            assert listed["INFY"]["status"] == "subscribed"
            # Changes go to the ingest through its control socket (tests/test_control.py).
            key = {"X-API-Key": API_KEY}
            response = http.delete(f"{SUBSCRIPTIONS}/VSTIND", headers=key)  # not subscribed
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "unsubscribed"
            metrics = http.get("/metrics").text
            assert "tickvault_ingest_running 1.0" in metrics
            assert 'tickvault_subscriptions{status="subscribed"}' in metrics

            pid = ingest.pid
            stop(ingest)
        _assert_no_ingest(http, f"the ingest (pid {pid}) has stopped")

        # A new ingest (on its built-in simulator: the other one is quiet) is followed by
        # itself; one killed is told apart from one stopped.
        with ingest_process(url, data_dir) as ingest:
            wait_for(lambda: http.get("/health").status_code == 200)
            wait_for(lambda: _has_tick(http, "INFY"))
            assert http.get(STATUS).json()["is_running"] is True
            ingest.send_signal(signal.SIGKILL)
            ingest.wait(30)
            _assert_no_ingest(http, f"the ingest (pid {ingest.pid}) is gone")


def test_tickvault_api_runs_two_workers_beside_tickvault_ingest(
    apache_server: DbServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    output = tmp_path / "api.stdout"
    with (
        sample_database(apache_server) as url,
        output.open("w") as log,
        ingest_process(url, data_dir) as ingest,
    ):
        api = subprocess.Popen(
            [sys.executable, "-m", "tickvault", "api"],
            cwd=REPO,
            env=_environment(
                url, data_dir, TICKVAULT_API_PORT=str(port), TICKVAULT_API_WORKERS="2"
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            with client(f"http://127.0.0.1:{port}") as http:

                def healthy() -> bool:
                    assert api.poll() is None, output.read_text()[-3000:]
                    try:
                        return http.get("/health").status_code == 200
                    except httpx.TransportError:
                        return False

                wait_for(healthy, timeout=90)
                wait_for(lambda: _has_tick(http, "INFY"))
                # Many requests, over new connections, so that both workers answer some.
                for _ in range(20):
                    with client(f"http://127.0.0.1:{port}") as fresh:
                        body = fresh.get(LATEST, params={"symbols": "INFY,TCS"}).json()
                        assert body["source"] == "cache"
                        assert [tick["symbol"] for tick in body["ticks"]] == ["INFY", "TCS"]
                status = http.get(STATUS).json()
                assert status["is_running"] is True
                assert status["writer"]["rows_written"] > 0

                # The ingest container's healthcheck says what /health says, without an API.
                assert _health_command(url, data_dir).returncode == 0

                pid = ingest.pid
                stop(ingest)
                _assert_no_ingest(http, f"the ingest (pid {pid}) has stopped")
                stopped = _health_command(url, data_dir)
                assert stopped.returncode == 1
                assert f"the ingest (pid {pid}) has stopped" in stopped.stderr
        finally:
            api.send_signal(signal.SIGTERM)
            try:
                api.wait(60)
            except subprocess.TimeoutExpired:
                api.kill()
                api.wait()
    text = output.read_text()
    assert api.returncode == 0, text[-3000:]
    assert f"127.0.0.1:{port}" in text.splitlines()[0], "the progress line names the address"
    assert "2 worker(s)" in text.splitlines()[0]
    started = set()
    for line in text.splitlines()[1:]:
        with_pid = re.search(r"Started server process \[(\d+)\]", line)
        if with_pid:
            assert json.loads(line)["logger"] == "uvicorn.error"  # JSON lines, as configured
            started.add(with_pid.group(1))
    assert len(started) == 2, text[-3000:]


def test_tickvault_api_needs_at_least_one_worker(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tickvault", "api"],
        cwd=REPO,
        env=_environment("postgresql:///unused", tmp_path, TICKVAULT_API_WORKERS="0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "tickvault: TICKVAULT_API_WORKERS must be at least 1, got 0"


@pytest.mark.parametrize("workers", ["lots", "1.5"])
def test_tickvault_api_workers_must_be_a_whole_number(tmp_path: Path, workers: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tickvault", "api"],
        cwd=REPO,
        env=_environment("postgresql:///unused", tmp_path, TICKVAULT_API_WORKERS=workers),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "TICKVAULT_API_WORKERS must be a whole number" in result.stderr


def test_health_and_status_follow_what_the_ingest_publishes(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/health from the published heartbeat and status; GET status is the published JSON."""
    monkeypatch.setattr(api.ingest_state, "HEARTBEAT_STALE_S", 1.0)
    publisher = LatestTickPublisher(published_path(tmp_path), capacity=16)
    app = create_app(Settings(data_dir=tmp_path), db_url)

    def health_after_a_beat() -> tuple[int, str | None]:
        publisher.publish([])
        response = http.get("/health")
        return response.status_code, response.json().get("reason")

    try:
        with serve(app) as base, client(base) as http:
            # Beats until the watcher has read one: the server's start, or a loaded machine
            # between a beat and the watcher's next read, may take more than the 1 s above.
            wait_for(lambda: "has not published its status yet" in str(health_after_a_beat()))
            response = http.get(STATUS)
            assert response.status_code == 503
            assert "has not published its status yet" in response.json()["detail"]

            publisher.publish_status(STAND_IN_STATUS)
            wait_for(lambda: health_after_a_beat() == (200, None))
            assert http.get(STATUS).json() == json.loads(json.dumps(asdict(STAND_IN_STATUS)))

            dropping = PipelineStatus(
                frames=9, malformed_frames=0, frames_refused=3, journal_error="the disk is full",
                duplicate_ticks_dropped=0, unrequested_ticks_skipped=0, market_status={},
                custom_handlers=[],
            )  # fmt: skip
            reason = "feed frames are being dropped: the disk is full"
            publisher.publish_status(
                replace(STAND_IN_STATUS, pipeline=dropping, health_problem=reason)
            )
            wait_for(lambda: health_after_a_beat() == (503, reason))
            assert http.get(STATUS).json()["pipeline"]["frames_refused"] == 3

            stopped = "the ingest service is not running"
            publisher.publish_status(
                replace(STAND_IN_STATUS, is_running=False, health_problem=stopped)
            )
            wait_for(lambda: health_after_a_beat() == (503, stopped))

            publisher.publish_status(STAND_IN_STATUS)
            wait_for(lambda: health_after_a_beat() == (200, None))
            # A hung ingest: the lock still held, no heartbeat.
            wait_for(lambda: "has not published for" in str(http.get("/health").json()))
            assert http.get(STATUS).status_code == 200  # what it published last

            publisher.close()
            wait_for(lambda: "has stopped" in str(http.get("/health").json()))
    finally:
        publisher.close()
