"""No tick lost: the rows in `ticks` equal what the simulator sent, no more, no less.

Through a clean stop, a SIGKILL of the ingest process mid-stream followed by a restart,
and a database that goes away for several seconds. Real processes, real sockets, a real
TimescaleDB; the simulator records every distinct tick it wrote to a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from core.config import Secret, Settings
from ingest.journal import Journal
from ingest.ordered_writes import KILL_BETWEEN_COMMITS
from ingest.service import WebSocketService
from ingest.simulator import FeedSimulator
from ingest.status import IngestStatus
from ingest.tick_data import TickData
from store.instruments import instrument_records
from tests.clock import FeedClock
from tests.conftest import REPO, DbServer


def _stored(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT instrument_key, (extract(epoch FROM ts) * 1000)::bigint, ltp, vtt FROM ticks"
        ).fetchall()


def _sent(simulator: FeedSimulator) -> list[tuple]:
    return [(key, ltt, ltp, vtt) for key, ltt, ltp, _ltq, vtt in simulator.sent_ticks()]


def _assert_exactly_once(url: str, simulator: FeedSimulator) -> None:
    stored, sent = _stored(url), _sent(simulator)
    assert len(sent) > 500, "the simulator should have streamed a good number of ticks"
    assert len(stored) == len(set(stored)), "a tick was written twice"
    assert sorted(stored) == sorted(sent)


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", simulator_rate=3000, rollup_interval_s=1, **overrides
    )


async def _wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.1)


def _bars_disagree_with_ticks(url: str) -> list[tuple]:
    """Instruments whose 1-minute bars do not count the ticks and volume stored."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT * FROM (SELECT instrument_key, count(*) AS ticks, sum(volume_delta) AS volume"
            " FROM ticks GROUP BY 1) t FULL JOIN (SELECT instrument_key, sum(tick_count) AS"
            " ticks, sum(volume) AS volume FROM ohlc_1m GROUP BY 1) b USING (instrument_key)"
            " WHERE (t.ticks, t.volume) IS DISTINCT FROM (b.ticks, b.volume)"
        ).fetchall()


def test_clean_stop_writes_every_tick_once(
    instruments_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """And its bars count them all. The feed runs 150 s late, so its ticks land in a minute
    the rollup (every second) has already materialized: the ticks after its last pass are
    counted only by the stop's own pass."""
    FeedClock(offset_s=-150).install(monkeypatch)

    async def scenario() -> FeedSimulator:
        service = WebSocketService(_settings(tmp_path), instruments_db, record_simulator=True)
        await service.start()
        await asyncio.sleep(3)
        await service.stop()
        assert service.simulator is not None
        return service.simulator

    simulator = asyncio.run(scenario())
    _assert_exactly_once(instruments_db, simulator)
    assert _bars_disagree_with_ticks(instruments_db) == []


def test_database_outage_loses_nothing(
    edition_server: DbServer, edition_instruments_db: str, tmp_path: Path
) -> None:
    if edition_server.cluster is None:
        pytest.skip("needs the test-owned cluster to stop and start it")
    cluster = edition_server.cluster
    instruments_db = edition_instruments_db

    async def scenario() -> tuple[FeedSimulator, IngestStatus, IngestStatus]:
        # A memory bound far below what the outage accumulates: the writer must fall back
        # to the journal and catch up from it.
        service = WebSocketService(
            _settings(tmp_path, queue_max_rows=1500), instruments_db, record_simulator=True
        )
        await service.start()
        await asyncio.sleep(1.5)
        await asyncio.to_thread(cluster.stop)
        try:
            await asyncio.sleep(6)
            during = service.status()
        finally:
            await asyncio.to_thread(cluster.start)
        await _wait_for(lambda: service.status().writer.database_available, 60)
        await asyncio.sleep(1)
        await service.stop()
        after = service.status()
        assert service.simulator is not None
        return service.simulator, during, after

    simulator, during, after = asyncio.run(scenario())
    assert during.websocket_connected, "the feed must keep reading during the outage"
    assert during.writer.database_available is False
    assert during.journal.backlog_frames > 0
    assert during.writer.oldest_unwritten_tick_age_s > 3
    assert during.writer.spills >= 1, "the backlog should have passed the memory bound"
    assert after.journal.backlog_frames == 0
    _assert_exactly_once(instruments_db, simulator)


def _ingest_process(
    url: str,
    data_dir: Path,
    simulator: FeedSimulator,
    module: tuple[str, ...] = ("tickvault", "ingest"),
    **env: str,
):
    """`python -m tickvault ingest` (or `module`) on `simulator`, with `env` added."""
    environment = {
        **os.environ,
        "TICKVAULT_DATABASE_URL": url,
        "TICKVAULT_DATA_DIR": str(data_dir),
        "UPSTOX_ACCESS_TOKEN": "test-token",
        "UPSTOX_API_BASE": simulator.url,
        "TICKVAULT_LOG_LEVEL": "WARNING",
        **env,
    }
    return asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *module,
        cwd=REPO,
        env=environment,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def _start_then_kill(url: str, data_dir: Path, simulator: FeedSimulator) -> None:
    """An ingest with long batches SIGKILLed mid-stream: seconds of ticks are journaled but
    unwritten when the kill comes."""
    process = await _ingest_process(
        url, data_dir, simulator, TICKVAULT_BATCH_MS="60000", TICKVAULT_BATCH_ROWS="1000000"
    )
    await _wait_for(lambda: len(simulator.sent_ticks()) > 3000, 30)
    # Quiet the feed so every frame on the wire has been read and journaled, then kill.
    simulator.stall(3.0)
    await asyncio.sleep(1.0)
    process.send_signal(signal.SIGKILL)
    await process.wait()


def _journaled(data_dir: Path) -> int:
    with Journal(data_dir / "journal") as journal:
        return journal.status().last_seq


def _ledger(url: str) -> list[tuple[int, int]]:
    """(first_seq, last_seq) of every committed batch, in journal order."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT first_seq, last_seq FROM ingest_batches ORDER BY first_seq"
        ).fetchall()


async def _restart_and_stop(
    url: str, data_dir: Path, simulator: FeedSimulator, journaled: int
) -> None:
    """Start again, wait until the frames journaled before have committed, stop cleanly."""
    process = await _ingest_process(url, data_dir, simulator)
    await _wait_for(lambda: max((last for _, last in _ledger(url)), default=0) >= journaled, 60)
    process.send_signal(signal.SIGTERM)
    _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()[-2000:]


def test_sigkill_mid_stream_then_restart_writes_each_tick_once(
    edition_instruments_db: str, tmp_path: Path
) -> None:
    instruments_db = edition_instruments_db
    data_dir = tmp_path / "data"

    async def scenario() -> tuple[FeedSimulator, int, list[tuple[int, int]]]:
        with psycopg.connect(instruments_db) as conn:
            records = instrument_records(conn)
        simulator = FeedSimulator(records, rate=3000, seed=7)
        await simulator.start()
        try:
            await _start_then_kill(instruments_db, data_dir, simulator)
            journaled, ledger = _journaled(data_dir), _ledger(instruments_db)
            await _restart_and_stop(instruments_db, data_dir, simulator, journaled)
        finally:
            await simulator.stop()
        return simulator, journaled, ledger

    simulator, journaled, ledger = asyncio.run(scenario())
    committed = ledger[-1][1] if ledger else 0
    assert journaled > committed, "the kill should have left journaled frames unwritten"
    _assert_exactly_once(instruments_db, simulator)


def test_kill_between_the_two_writers_commits_then_restart_writes_each_tick_once(
    edition_instruments_db: str, tmp_path: Path
) -> None:
    """Batch n committed on one connection, batch n+1 COPYed on the other and waiting for it:
    the ingest dies at that moment, and the next start writes n+1 and the rest, once.

    Deterministic: a first ingest is killed with seconds of frames unwritten, so the second
    starts by replaying them as many small batches at once, both connections busy; its
    writer's fault switch (KILL_BETWEEN_COMMITS) SIGKILLs it after the first commit."""
    edition_db_url = edition_instruments_db
    data_dir = tmp_path / "data"
    with psycopg.connect(edition_db_url) as conn:
        records = instrument_records(conn)

    async def scenario() -> tuple[FeedSimulator, int, list[tuple[int, int]]]:
        simulator = FeedSimulator(records, rate=3000, seed=11)
        await simulator.start()
        try:
            await _start_then_kill(edition_db_url, data_dir, simulator)
            simulator.stall(60.0)  # the second start replays the journal only
            between = await _ingest_process(
                edition_db_url,
                data_dir,
                simulator,
                TICKVAULT_BATCH_ROWS="50",
                TICKVAULT_LOG_LEVEL="INFO",
                **{KILL_BETWEEN_COMMITS: "1"},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(between.wait(), 30)
            died = between.returncode
            if died is None:
                between.kill()
            _, stderr = await between.communicate()
            assert died == -signal.SIGKILL, stderr.decode()[-3000:]
            journaled, ledger = _journaled(data_dir), _ledger(edition_db_url)
            simulator.stall(0.0)
            await _restart_and_stop(edition_db_url, data_dir, simulator, journaled)
        finally:
            await simulator.stop()
        return simulator, journaled, ledger

    simulator, journaled, ledger = asyncio.run(scenario())
    assert ledger, "one batch should have committed before the kill"
    assert journaled > ledger[-1][1], "the kill should have left journaled frames unwritten"
    assert [first for first, _ in ledger] == [1] + [last + 1 for _, last in ledger[:-1]], (
        "a batch committed with an uncommitted one below it"
    )
    _assert_exactly_once(edition_db_url, simulator)


def test_token_never_reaches_the_logs(
    instruments_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = "sekret-token-3f9a7c"

    async def scenario() -> IngestStatus:
        with psycopg.connect(instruments_db) as conn:
            records = instrument_records(conn)
        simulator = FeedSimulator(records, token="another-token", rate=500)
        await simulator.start()
        try:
            settings = _settings(
                tmp_path, upstox_access_token=Secret(token), upstox_api_base=simulator.url
            )
            service = WebSocketService(settings, instruments_db)
            start = asyncio.create_task(service.start())
            await asyncio.sleep(3)  # the token is rejected: the client waits for a new one
            status = service.status()
            start.cancel()
            await service.stop()
            return status
        finally:
            await simulator.stop()

    with caplog.at_level("DEBUG"):
        status = asyncio.run(scenario())
    assert token not in caplog.text
    assert token not in repr(status)
    assert status.feed.state == "token_rejected"


def test_slow_and_failing_custom_handlers_stall_nothing(
    instruments_db: str, tmp_path: Path
) -> None:
    seen: list[TickData] = []

    class SlowHandler:
        async def handle_tick(self, tick: TickData) -> bool:
            seen.append(tick)
            await asyncio.sleep(10)
            return True

    class FailingHandler:
        async def handle_tick(self, tick: TickData) -> bool:
            raise ValueError("a bug in user code")

    async def scenario() -> tuple[FeedSimulator, IngestStatus]:
        service = WebSocketService(_settings(tmp_path), instruments_db, record_simulator=True)
        await service.register_handler(SlowHandler().handle_tick)
        await service.start()
        await service.register_handler(FailingHandler().handle_tick)
        await asyncio.sleep(3)
        status = service.status()
        await service.stop()
        assert service.simulator is not None
        return service.simulator, status

    simulator, status = asyncio.run(scenario())
    slow, failing = status.pipeline.custom_handlers
    assert len(seen) == 1, "the slow handler is still on its first tick"
    assert seen[0].instrument_key
    assert seen[0].symbol != seen[0].instrument_key, "the trading symbol, from the master"
    assert seen[0].last_price > 0
    assert slow.pending > 1000, "ticks wait for the slow handler, not the feed"
    assert failing.errors > 100
    assert failing.delivered == failing.errors
    _assert_exactly_once(instruments_db, simulator)
