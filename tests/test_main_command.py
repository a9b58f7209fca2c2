"""The README's main command: `tickvault run` on the embedded default, as a newcomer runs it.

It must bring up its own store, migrate, load the sample instruments, feed ticks from the
simulator into TimescaleDB and serve them over HTTP; Ctrl-C must stop it cleanly with every
received tick written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.command import TickvaultCommand
from tests.conftest import REPO, free_port


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="tickvault-run-"))
    root.chmod(0o755)
    yield root / "data"
    env = {**os.environ, "TICKVAULT_DATA_DIR": str(root / "data")}
    env.pop("TICKVAULT_DATABASE_URL", None)
    subprocess.run(
        [sys.executable, "-m", "tickvault", "db", "stop"],
        env=env,
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    subprocess.run(["rm", "-rf", str(root)], check=False)


def test_tickvault_run_serves_ticks_and_stops_cleanly(data_dir: Path) -> None:
    process, env, base = _start_run(data_dir)
    try:
        _wait_healthy(process, base, 90)
        time.sleep(3)
        status, latest = _get(f"{base}/api/v1/websocket/latest-ticks?symbols=INFY")
        assert status == 200
        assert latest["ticks"][0]["ltp"] > 0
        status, bars = _get(f"{base}/api/v1/bars/INFY?interval=1m")
        assert status == 200
        assert bars["bars"], "bars stay current by themselves"
        _, feed = _get(f"{base}/api/v1/websocket/status")
        assert feed["subscriptions"]["subscription_rate"] == "100.00%"
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output[-3000:]
    first_line = output.splitlines()[0] if output else ""
    assert base.removeprefix("http://") in output, "the progress line names where the API is"
    assert "simulator" in output, first_line
    # What it started, it stopped: no PostgreSQL of this data directory is left running.
    assert f"stopped the local TimescaleDB in {data_dir / 'pg'}" in output
    assert _store_status(env) == 3, "the store run started is stopped with it"

    url = _db_url(env)
    with psycopg.connect(url) as conn:
        (written,) = conn.execute("SELECT count(*) FROM ticks").fetchone()
        (unwritten,) = conn.execute(
            "SELECT count(*) FROM ingest_batches WHERE row_count < 0"
        ).fetchone()
    assert written > 1000
    assert unwritten == 0


def _start_run(data_dir: Path, **settings: str) -> tuple[TickvaultCommand, dict[str, str], str]:
    """`tickvault run` as a newcomer starts it (with `settings` as variables): its process,
    environment and API base URL."""
    api_port = free_port()
    env = {**_run_env(data_dir, api_port), **settings}
    process = TickvaultCommand(["run"], env)
    return process, env, f"http://127.0.0.1:{api_port}"


def _run_env(data_dir: Path, api_port: int) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TICKVAULT_", "UPSTOX_"))},
        "TICKVAULT_DATA_DIR": str(data_dir),
        "UPSTOX_ACCESS_TOKEN": "",  # the simulator, whatever a developer's .env says
        "TICKVAULT_PG_PORT": str(free_port()),
        "TICKVAULT_API_PORT": str(api_port),
        "TICKVAULT_ROLLUP_INTERVAL_S": "1",
    }


# The feed's own chatter (the simulator, the candle requests) in a run's JSON log lines.
_FEED_NOISE = ('"logger": "httpx"', '"logger": "ingest.simulator')


def _wait_healthy(process: TickvaultCommand, base: str, seconds: float) -> None:
    """Waits up to `seconds` of the machine's running time for /health to answer 200. A pause
    of this very process (a half-second sleep that took over 5 s: the whole shared machine
    stood still, as one CI run saw for 78 s) is added to the budget: a start cannot be late
    for time in which nothing ran."""
    deadline = time.monotonic() + seconds
    last: object = "no answer"
    while True:
        assert process.poll() is None, process.said()
        try:
            last = _get(f"{base}/health")
            if last[0] == 200:
                return
        except OSError as error:
            last = error
        if time.monotonic() > deadline:
            process.terminate()  # its own words say where the start stopped
            output = process.communicate(timeout=60)[0] or ""
            # Without the feed's chatter: the lines that say how far the supervisor, the
            # ingest and the api got.
            lines = [
                line for line in output.splitlines() if not any(n in line for n in _FEED_NOISE)
            ]
            said = "\n".join(lines[-60:])
            raise AssertionError(f"the API did not come up: /health said {last}\n{said}")
        asleep = time.monotonic()
        time.sleep(0.5)
        if (paused := time.monotonic() - asleep) > 5:
            deadline += paused


def _child(process: subprocess.Popen[str], command: str) -> psutil.Process:
    """The supervised `tickvault <command>` child of `tickvault run`."""
    for child in psutil.Process(process.pid).children():
        if child.cmdline()[-1:] == [command]:
            return child
    raise AssertionError(f"no tickvault {command} child")


def _ticks(url: str) -> tuple[int, int]:
    """(ticks written, batches not yet written)."""
    with psycopg.connect(url) as conn:
        (written,) = conn.execute("SELECT count(*) FROM ticks").fetchone()
        (unwritten,) = conn.execute(
            "SELECT count(*) FROM ingest_batches WHERE row_count < 0"
        ).fetchone()
    return written, unwritten


def _store_status(env: dict[str, str]) -> int:
    """`tickvault db status`'s exit status: 0 running, 3 stopped."""
    return subprocess.run(
        [sys.executable, "-m", "tickvault", "db", "status"],
        cwd=REPO,
        env=env,
        capture_output=True,
        check=False,
    ).returncode


def _db_url(env: dict[str, str]) -> str:
    """The store's URL, started again if need be: `tickvault run` stops the one it started."""
    return (
        subprocess.run(
            [sys.executable, "-m", "tickvault", "db", "start"],
            cwd=REPO,
            text=True,
            env=env,
            capture_output=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )


def test_tickvault_run_brings_a_killed_api_back_and_the_ingest_loses_nothing(
    data_dir: Path,
) -> None:
    """`tickvault run` supervises `tickvault ingest` and `tickvault api`: an api child killed
    outright is started again, while the ingest keeps writing through it."""
    process, env, base = _start_run(data_dir)
    try:
        _wait_healthy(process, base, 90)
        url = _db_url(env)
        ingest = _child(process, "ingest")
        api = _child(process, "api")
        time.sleep(2)
        before, _ = _ticks(url)

        api.send_signal(signal.SIGKILL)
        api.wait(10)
        _wait_healthy(process, base, 60)
        assert _child(process, "api").pid != api.pid, "a new api child serves"
        assert _child(process, "ingest").pid == ingest.pid, "the ingest ran on throughout"
        status, latest = _get(f"{base}/api/v1/websocket/latest-ticks?symbols=INFY")
        assert status == 200
        assert latest["ticks"][0]["ltp"] > 0
        time.sleep(2)
        during, _ = _ticks(url)
        assert during > before, "the ingest kept writing across the api's restart"
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=90)
    assert process.returncode == 0, output[-3000:]
    assert "tickvault api exited with code -9" in output, output[-3000:]
    assert "stopped (api exit code 0, ingest exit code 0)" in output, output[-3000:]
    written, unwritten = _ticks(_db_url(env))
    assert written > during
    assert unwritten == 0
    assert not ingest.is_running(), "the ingest child stopped with the supervisor"


def test_tickvault_simulator_takes_its_own_options() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tickvault", "simulator", "--port", str(port), "--rate", "100"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line, line
        status, _ = _get(f"http://127.0.0.1:{port}/_sim/stats")
        assert status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0


def test_tickvault_simulator_reads_an_instrument_file_through_the_store(tmp_path: Path) -> None:
    """The simulator may not import the store; the command line hands it the checked reader."""
    bad = tmp_path / "complete.json"
    bad.write_text('[{"instrument_key": "NSE_EQ|X", "instrument_key": "NSE_EQ|Y"}]')
    result = subprocess.run(
        [sys.executable, "-m", "tickvault", "simulator", "--port", "0", "--instruments", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().endswith("gives the field 'instrument_key' more than once")
    assert "Traceback" not in result.stderr


def test_a_killed_supervisor_takes_its_children_down_cleanly(data_dir: Path) -> None:
    """SIGKILL to `tickvault run` itself: the ingest is told by the kernel, stops as on
    Ctrl-C (its open batch written), and the api goes too; nothing runs on unsupervised."""
    process, env, base = _start_run(data_dir)
    try:
        _wait_healthy(process, base, 90)
        url = _db_url(env)
        ingest = _child(process, "ingest")
        api = _child(process, "api")
        api_workers = api.children(recursive=True)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        _, alive = psutil.wait_procs([ingest, api, *api_workers], timeout=60)
        assert not alive, f"still running without their supervisor: {alive}"
        # Not our children, so no exit codes here: a clean stop marks the published table.
        health = subprocess.run(
            [sys.executable, "-m", "tickvault", "health"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert health.returncode == 1
        assert f"the ingest (pid {ingest.pid}) has stopped" in health.stderr, health.stderr
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)
    written, unwritten = _ticks(url)
    assert written > 0
    assert unwritten == 0, "the ingest's open batch was written before it exited"


def _recreate_the_database(env: dict[str, str]) -> None:
    """Drop the embedded store's database and create it again, empty (a new oid)."""
    url = _db_url(env)
    name = conninfo_to_dict(url)["dbname"]
    admin = make_conninfo(url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def _health_answer(process: TickvaultCommand, base: str, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, process.said()
        try:
            status, body = _get(f"{base}/health")
            if status == 503 and "belongs to another database" in body.get("reason", ""):
                return body
        except OSError:
            pass
        assert time.monotonic() < deadline, "the API did not say why the ingest cannot run"
        time.sleep(0.5)


def test_a_second_instance_stops_and_a_journal_of_another_database_is_not_restarted(
    data_dir: Path,
) -> None:
    """A second `tickvault run` on the same data directory stops with one line naming the
    running instance; an ingest whose journal belongs to a database dropped and created again
    stops once, is not started again, and /health says why and what to do."""
    process, env, base = _start_run(data_dir, TICKVAULT_JOURNAL_SEGMENT_BYTES="65536")
    try:
        _wait_healthy(process, base, 90)
        ingest = _child(process, "ingest")
        time.sleep(3)  # committed segments are deleted
        second = subprocess.run(
            [sys.executable, "-m", "tickvault", "run"],
            cwd=REPO,
            env={**env, "TICKVAULT_API_PORT": str(free_port())},
            capture_output=True,
            text=True,
            timeout=120,
        )
        alone = subprocess.run(
            [sys.executable, "-m", "tickvault", "ingest"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=90)
    assert process.returncode == 0, output[-3000:]
    assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
    said = second.stderr.strip().splitlines()
    assert len(said) == 1, said
    assert f"pid {ingest.pid}" in said[0]
    assert str(data_dir) in said[0]
    for setting in ("TICKVAULT_DATA_DIR", "TICKVAULT_API_PORT", "TICKVAULT_PG_PORT"):
        assert setting in said[0]
    assert alone.returncode == 78, alone.stderr[-2000:]
    assert "Traceback" not in alone.stderr
    assert f"pid {ingest.pid}" in alone.stderr

    _recreate_the_database(env)
    process = TickvaultCommand(["run"], env)
    try:
        reason = _health_answer(process, base, 120)["reason"]
        time.sleep(5)  # long past a restart's delay
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=90)
    assert "tickvault journal set-aside" in reason
    assert str(data_dir / "journal") in reason
    assert output.count("started tickvault ingest") == 1, output[-3000:]
    assert "Traceback" not in output
    assert process.returncode == 1, output[-3000:]


def test_a_store_running_before_is_left_running_and_a_taken_port_is_named(
    data_dir: Path,
) -> None:
    """`tickvault run` stops only the PostgreSQL it started; a second checkout whose store
    would take the same port gets one line naming the port, whose it is and the setting."""
    api_port = free_port()
    env, base = _run_env(data_dir, api_port), f"http://127.0.0.1:{api_port}"
    started = subprocess.run(
        [sys.executable, "-m", "tickvault", "db", "start"], cwd=REPO, env=env, check=False
    )
    assert started.returncode == 0
    process = TickvaultCommand(["run"], env)
    try:
        _wait_healthy(process, base, 90)
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output[-3000:]
    assert "was running before this run and is left running" in output
    assert _store_status(env) == 0

    other = data_dir.parent / "other"  # the server's OS user must reach it, as data_dir
    second = subprocess.run(
        [sys.executable, "-m", "tickvault", "run"],
        cwd=REPO,
        env={**env, "TICKVAULT_DATA_DIR": str(other), "TICKVAULT_API_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    port = env["TICKVAULT_PG_PORT"]
    assert f"port {port} is taken by the PostgreSQL of {data_dir / 'pg'}" in lines[0]
    assert "TICKVAULT_PG_PORT" in lines[0]
