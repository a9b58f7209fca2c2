"""Database outages of any length: the ingest writes again within seconds of the database's
return, and a stop in the middle of an outage ends at once, leaving the frames in the journal
for the next start, which writes each tick once.

The real test cluster is stopped and started under a running ingest fed by a standalone
simulator, which records every tick it wrote to a socket.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

import psycopg
import pytest

from core.config import Settings
from ingest.channels.latest_reader import LatestTickReader
from ingest.channels.latest_table import IngestNotRunning, published_path
from ingest.service import WebSocketService
from ingest.simulator import FeedSimulator
from store.instruments import instrument_records
from tests.conftest import DbServer
from tests.test_ingest_e2e import _assert_exactly_once, _ingest_process, _wait_for

# The pool's own reconnects back off 1, 2, 4 ... 32 s without a cap: an outage of this long
# leaves its next attempt tens of seconds after the database is back.
OUTAGE_S = 40
RETRY_MAX_S = 1.0


def _cluster(server: DbServer):
    if server.cluster is None:
        pytest.skip("needs the test-owned cluster to stop and start it")
    return server.cluster


async def _simulator(url: str) -> FeedSimulator:
    with psycopg.connect(url) as conn:
        records = instrument_records(conn)
    simulator = FeedSimulator(records, rate=2000, seed=11, record=True)
    await simulator.start()
    return simulator


def _settings(data_dir: Path, simulator: FeedSimulator) -> Settings:
    return Settings(
        data_dir=data_dir,
        upstox_access_token="test-token",
        upstox_api_base=simulator.url,
        rollup_interval_s=1,
        db_retry_max_s=RETRY_MAX_S,
        schedule_enabled=False,
    )


async def _quiet_stop(service: WebSocketService, simulator: FeedSimulator) -> float:
    """Stop with the feed quiet, so that every tick on the wire was read; the seconds the
    stop took."""
    simulator.stall(3.0)
    await asyncio.sleep(1.0)
    started = time.monotonic()
    await asyncio.wait_for(service.stop(), 60)
    return time.monotonic() - started


def test_the_ingest_writes_within_seconds_of_the_database_return_after_a_long_outage(
    edition_server: DbServer,
    edition_instruments_db: str,
    tmp_path: Path,
) -> None:
    cluster = _cluster(edition_server)
    instruments_db = edition_instruments_db

    async def scenario() -> tuple[FeedSimulator, float]:
        simulator = await _simulator(instruments_db)
        try:
            service = WebSocketService(_settings(tmp_path / "data", simulator), instruments_db)
            await service.start()
            await _wait_for(lambda: service.status().writer.rows_written > 0)
            await asyncio.to_thread(cluster.stop)
            try:
                await asyncio.sleep(OUTAGE_S)
                assert service.status().writer.database_available is False
            finally:
                await asyncio.to_thread(cluster.start)
            back = time.monotonic()
            await _wait_for(lambda: service.status().writer.database_available, 120)
            waited = time.monotonic() - back
            await _quiet_stop(service, simulator)
        finally:
            await simulator.stop()
        return simulator, waited

    simulator, waited = asyncio.run(scenario())
    # Retries at most RETRY_MAX_S apart, plus a connection request's own wait (5 s).
    assert waited < 12, f"the first commit came {waited:.0f} s after the database was back"
    _assert_exactly_once(instruments_db, simulator)


def test_a_stop_during_an_outage_ends_at_once_and_the_next_start_writes_every_tick_once(
    edition_server: DbServer,
    edition_instruments_db: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = _cluster(edition_server)
    instruments_db = edition_instruments_db
    data_dir = tmp_path / "data"

    async def scenario() -> tuple[FeedSimulator, float, int]:
        simulator = await _simulator(instruments_db)
        try:
            first = WebSocketService(_settings(data_dir, simulator), instruments_db)
            await first.start()
            await _wait_for(lambda: first.status().writer.rows_written > 0)
            await asyncio.to_thread(cluster.stop)
            try:
                await asyncio.sleep(8)
                waiting = first.status().journal.backlog_frames
                with caplog.at_level(logging.WARNING, logger="ingest.writer"):
                    took = await _quiet_stop(first, simulator)
            finally:
                await asyncio.to_thread(cluster.start)
            second = WebSocketService(_settings(data_dir, simulator), instruments_db)
            await second.start()
            await asyncio.sleep(3)
            await _quiet_stop(second, simulator)
        finally:
            await simulator.stop()
        return simulator, took, waiting

    simulator, took, waiting = asyncio.run(scenario())
    assert waiting > 0, "the outage should have left frames only in the journal"
    # One attempt in flight (a connection request waits at most 5 s), not the outage.
    assert took < 20, f"the stop took {took:.0f} s"
    said = [r.getMessage() for r in caplog.records if "stay in the journal" in r.getMessage()]
    assert len(said) == 1, said
    assert "journaled frames after seq" in said[0]
    _assert_exactly_once(instruments_db, simulator)


def test_sigterm_to_tickvault_ingest_during_an_outage_ends_it_in_seconds(
    apache_server: DbServer,
    instruments_db: str,
    tmp_path: Path,
) -> None:
    """The process as `tickvault run` supervises it: SIGTERM mid-outage, then a restart once
    the database is back writes every tick once."""
    cluster = _cluster(apache_server)
    data_dir = tmp_path / "data"
    retry = {"TICKVAULT_DB_RETRY_MAX_S": str(RETRY_MAX_S)}

    async def scenario() -> tuple[FeedSimulator, float, int | None]:
        simulator = await _simulator(instruments_db)
        try:
            first = await _ingest_process(instruments_db, data_dir, simulator, **retry)
            await _wait_for(lambda: _rows(instruments_db) > 0, 60)
            await asyncio.to_thread(cluster.stop)
            try:
                await asyncio.sleep(8)
                simulator.stall(3.0)
                await asyncio.sleep(1.0)
                started = time.monotonic()
                first.send_signal(signal.SIGTERM)
                await asyncio.wait_for(first.wait(), 60)
                took = time.monotonic() - started
            finally:
                await asyncio.to_thread(cluster.start)
            second = await _ingest_process(instruments_db, data_dir, simulator, **retry)
            # Started (the journal replayed, the feed read) before it is stopped.
            await _wait_for(lambda: _publishing(data_dir), 60)
            await asyncio.sleep(2)
            simulator.stall(3.0)
            await asyncio.sleep(1.0)
            second.send_signal(signal.SIGTERM)
            _, stderr = await second.communicate()
            assert second.returncode == 0, stderr.decode()[-3000:]
        finally:
            await simulator.stop()
        return simulator, took, first.returncode

    simulator, took, code = asyncio.run(scenario())
    assert code == 0
    assert took < 20, f"SIGTERM took {took:.0f} s to stop the ingest"
    log = (data_dir / "logs" / "trading.log").read_text()
    assert log.count("stay in the journal") == 1, log[-3000:]
    _assert_exactly_once(instruments_db, simulator)


def _rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        (count,) = conn.execute("SELECT count(*) FROM ticks").fetchone()
    return count


def _publishing(data_dir: Path) -> bool:
    with LatestTickReader(published_path(data_dir)) as reader:
        try:
            reader.info()
        except IngestNotRunning:
            return False
    return True
