"""Signals from custom handlers: one call to emit, stored once, read three ways.

Real ingest processes on the simulator, a real TimescaleDB: a handler that emits a signal
for every tick is SIGKILLed mid-stream and restarted, and every committed tick then has its
signal exactly once; a handler that emits garbage or raises is counted and logged while the
feed goes on; the example spike detector's signal is in signals.log, the table and the API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from api import create_app
from api.status_metrics import StatusCollector
from core.config import Secret, Settings
from ingest.journal import Journal
from ingest.metrics import IngestMetrics
from ingest.pipeline import Pipeline
from ingest.service import WebSocketService, emit_signal
from ingest.signals import Origin, Signal, SignalWriter
from ingest.simulator import FeedSimulator
from ingest.status import IngestStatus
from ingest.tick_data import TickData
from ingest.upstox.decoder import FeedDecoder
from store.instruments import instrument_records
from store.signals import SignalRow
from tests.emitting_ingest import EveryTick
from tests.test_api import serve
from tests.test_ingest_e2e import _assert_exactly_once, _ingest_process, _settings, _wait_for

INFY = "NSE_EQ|INE009A01021"


def _rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def _one(url: str, sql: str) -> object:
    return _rows(url, sql)[0][0]


def test_sigkill_while_a_handler_emits_then_restart_stores_each_signal_once(
    instruments_db: str, tmp_path: Path
) -> None:
    """Every tick of every committed batch has its one `tick` signal: none lost with the
    process, none doubled by the frames given to the handler again."""
    data_dir = tmp_path / "data"
    url = instruments_db

    async def scenario() -> tuple[int, int, int]:
        records = await asyncio.to_thread(_records, url)
        simulator = FeedSimulator(records, rate=3000, seed=11)
        await simulator.start()
        try:
            # The handler pauses now and then, so it falls behind the writer: when the kill
            # comes, committed ticks wait for their signals.
            first = await _ingest_process(url, data_dir, simulator, ("tests.emitting_ingest",))
            await _wait_for(lambda: _one(url, "SELECT count(*) FROM signals") > 2000, 30)
            first.send_signal(signal.SIGKILL)
            await first.wait()
            committed = _one(url, "SELECT coalesce(max(last_seq), 0) FROM ingest_batches")
            complete = _one(url, "SELECT last_seq FROM signal_progress")
            stored_at_kill = _one(url, "SELECT count(*) FROM signals")

            settings = Settings(
                data_dir=data_dir,
                upstox_access_token=Secret("test-token"),
                upstox_api_base=simulator.url,
            )
            service = WebSocketService(settings, url)
            await service.register_handler(EveryTick().handle_tick)
            await service.start()
            try:
                await _wait_for(lambda: service.status().signals.complete_seq >= committed, 30)
                simulator.stall(8.0)  # then let the handler, the writer and signals catch up
                await _wait_for(lambda: _settled(service.status()), 30)
            finally:
                await service.stop()
        finally:
            await simulator.stop()
        return committed, complete, stored_at_kill

    committed, complete, stored_at_kill = asyncio.run(scenario())
    assert complete < committed, "the kill should have left committed ticks without signals"
    ticks = _rows(url, "SELECT instrument_key, ts, ltp FROM ticks")
    signals = _rows(url, "SELECT instrument_key, ts, value FROM signals WHERE name = 'tick'")
    assert len(signals) > stored_at_kill
    assert len(signals) == len(set(signals)), "a signal was stored twice"
    assert sorted(signals) == sorted(ticks), "each stored tick has exactly its one signal"


def _records(url: str) -> list[dict]:
    with psycopg.connect(url) as conn:
        return instrument_records(conn)


def _settled(status: IngestStatus) -> bool:
    [handler] = status.pipeline.custom_handlers
    return (
        handler.pending == 0
        and status.writer.queue_depth == 0
        and status.signals.pending == 0
        and status.signals.complete_seq == status.journal.last_seq
    )


class Garbage:
    """On each INFY tick: a good signal, one of the index by its name, then a NaN, a 1 MB
    field, an unknown symbol and a bad side; every fifth tick it raises."""

    def __init__(self) -> None:
        self.ticks = 0
        self.returned: list[object] = []

    async def handle_tick(self, tick: TickData) -> bool:
        if tick.instrument_key != INFY:
            return False
        self.ticks += 1
        self.returned.append(emit_signal("good", tick.last_price))
        self.returned.append(emit_signal("pcr", 1.3, symbol="Nifty 50"))  # another instrument
        self.returned.append(emit_signal("nan", math.nan))
        self.returned.append(emit_signal("big", 1.0, blob="x" * 1_000_000))
        self.returned.append(emit_signal("elsewhere", 1.0, symbol="NO SUCH THING"))
        self.returned.append(emit_signal("sided", 1.0, side="long"))
        if self.ticks % 5 == 0:
            raise RuntimeError("a bug in user code")
        return True


def test_garbage_and_raising_handlers_are_counted_and_logged_and_stop_nothing(
    instruments_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = Garbage()

    async def scenario() -> tuple[FeedSimulator, IngestStatus]:
        service = WebSocketService(_settings(tmp_path), instruments_db, record_simulator=True)
        await service.register_handler(garbage.handle_tick)
        await service.start()
        await _wait_for(lambda: garbage.ticks >= 50, 30)
        await service.stop()
        assert service.simulator is not None
        return service.simulator, service.status()

    with caplog.at_level(logging.WARNING, logger="ingest.signals"):
        simulator, status = asyncio.run(scenario())
    [handler] = status.pipeline.custom_handlers
    assert handler.errors == garbage.ticks // 5
    assert status.signals.rejected == 4 * garbage.ticks
    good = [r for r in garbage.returned if r is not None]
    assert len(good) == 2 * garbage.ticks
    assert {(s.symbol, s.name) for s in good} == {("INFY", "good"), ("NIFTY", "pcr")}
    stored = _rows(instruments_db, "SELECT symbol, instrument_key, name FROM signals")
    assert set(stored) == {("INFY", INFY, "good"), ("NIFTY", "NSE_INDEX|Nifty 50", "pcr")}
    assert len(stored) == 2 * garbage.ticks
    metrics = {
        sample.labels["outcome"]: sample.value
        for family in StatusCollector(status).collect()
        for sample in family.samples
        if sample.name == "tickvault_signals_total"
    }
    assert metrics["rejected"] == 4 * garbage.ticks
    assert metrics["stored"] == metrics["emitted"] == 2 * garbage.ticks
    refusal = [r.getMessage() for r in caplog.records if "signal refused" in r.getMessage()]
    assert refusal
    assert "value must be finite, got nan" in refusal[0]
    assert "Garbage.handle_tick" in refusal[0]
    assert "INFY" in refusal[0]
    _assert_exactly_once(instruments_db, simulator)


def test_the_spike_detector_signal_is_in_the_log_the_table_and_the_api(
    instruments_db: str, tmp_path: Path
) -> None:
    """`tickvault ingest` with the example handler on, on the simulator (no token), as
    `make run` runs it."""
    data_dir = tmp_path / "data"
    log = data_dir / "logs" / "signals.log"
    url = instruments_db

    def infy_lines() -> list[dict]:
        lines = log.read_text().splitlines() if log.exists() else []
        return [json.loads(line) for line in lines if "INFY" in line]

    async def scenario() -> None:
        simulator = FeedSimulator(await asyncio.to_thread(_records, url), rate=4000, seed=3)
        await simulator.start()
        try:
            ingest = await _ingest_process(
                url, data_dir, simulator, TICKVAULT_SPIKE_DETECTOR="true"
            )
            await _wait_for(lambda: infy_lines(), 90)
            ingest.send_signal(signal.SIGTERM)
            _, stderr = await ingest.communicate()
            assert ingest.returncode == 0, stderr.decode()[-2000:]
        finally:
            await simulator.stop()

    asyncio.run(scenario())
    line = infy_lines()[0]
    assert line["name"] == "volume_spike"
    assert line["handler"] == "SpikeDetector.handle_tick"
    assert line["ts"].endswith("+05:30"), "IST on display"
    assert line["fields"]["z"] > 10
    stored = _rows(url, "SELECT name, value FROM signals WHERE symbol = 'INFY'")
    assert (line["name"], line["value"]) in stored
    with serve(create_app(Settings(data_dir=data_dir), url)) as base:
        answer = httpx.get(
            f"{base}/api/v1/signals",
            params={"symbol": "INFY", "name": "volume_spike"},
            trust_env=False,
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["instrument_key"] == INFY
        assert line["value"] in [s["value"] for s in body["signals"]]
        assert all(s["symbol"] == "INFY" for s in body["signals"])
        bad = httpx.get(f"{base}/api/v1/signals", params={"symbol": "NOPE"}, trust_env=False)
        assert bad.status_code == 404
        assert "NOPE" in bad.text


def test_a_notebook_emits_and_reads_signals(
    instruments_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tickvault import notebook

    monkeypatch.setenv("TICKVAULT_DATABASE_URL", instruments_db)
    at = "2026-01-05 10:00"  # IST, as a notebook user types it
    first = notebook.emit_signal("INFY", "pcr", 1.31, ts=at, side="buy", strike=1900)
    notebook.emit_signal("INFY", "pcr", 1.31, ts=at)  # a second call is a second signal
    notebook.emit_signal("TCS", "pcr", 0.7, ts="2026-01-05 10:01")
    assert first.ts.isoformat() == "2026-01-05T10:00:00+05:30"
    frame = notebook.read_signals("INFY", name="pcr", start="2026-01-05", end="2026-01-06")
    assert len(frame) == 2
    assert str(frame.index[0]) == "2026-01-05 10:00:00+05:30"
    row = frame.iloc[0]
    assert (row["symbol"], row["name"], row["value"]) == ("INFY", "pcr", 1.31)
    assert row["fields"] == {"strike": 1900}
    assert row["handler"] == "notebook"
    assert len(notebook.read_signals(start="2026-01-05", end="2026-01-06")) == 3
    with pytest.raises(ValueError, match="value must be finite, got nan"):
        notebook.emit_signal("INFY", "pcr", math.nan)
    with pytest.raises(ValueError, match="fields take 1000012 bytes"):
        notebook.emit_signal("INFY", "pcr", 1.0, blob="x" * 1_000_000)
    with pytest.raises(LookupError, match="NO SUCH"):
        notebook.emit_signal("NO SUCH", "pcr", 1.0)


def test_a_row_the_database_refuses_is_counted_and_holds_up_no_other(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Past the checks (here bypassed: a NUL in a name), the batch is written row by row."""
    with ConnectionPool(db_url, min_size=1, open=True) as pool, Journal(tmp_path) as journal:
        writer = SignalWriter(pool, journal, lambda: 5, lambda symbol: None)
        ts = datetime(2026, 1, 5, 4, 30, tzinfo=UTC)

        def row(name: str, n: int) -> SignalRow:
            return SignalRow(ts, "INFY", INFY, name, 1.0, None, "{}", "H", journal.journal_id, 5, n)

        with caplog.at_level(logging.ERROR, logger="ingest.signals"):
            new = writer._write([row("one", 0), row("b\x00d", 1), row("two", 2)], 5)
    assert {n for *_, n in new} == {0, 2}
    assert writer.rejected == 1
    assert "the database refused signal" in caplog.text
    assert _rows(db_url, "SELECT name FROM signals ORDER BY n") == [("one",), ("two",)]
    assert _one(db_url, "SELECT last_seq FROM signal_progress") == 5


def test_two_handlers_of_one_class_have_names_of_their_own(tmp_path: Path) -> None:
    """A signal's key holds its handler's name: two instances must not share one, or the
    second one's signals would be refused as the first one's."""

    async def names() -> list[str]:
        with Journal(tmp_path) as journal:
            pipeline = Pipeline(journal, FeedDecoder(), IngestMetrics())
            handlers = [await pipeline.register_handler(EveryTick().handle_tick) for _ in "abc"]
            await pipeline.close()
        return [handler.name for handler in handlers]

    assert asyncio.run(names()) == [
        "EveryTick.handle_tick",
        "EveryTick.handle_tick#2",
        "EveryTick.handle_tick#3",
    ]


def test_progress_alone_waits_its_interval_signals_and_the_last_write_do_not(
    db_url: str, tmp_path: Path
) -> None:
    """Progress with no signal is written once per interval, not every batch; a batch with
    signals carries its progress at once, and stopping writes the last progress whatever
    the interval."""
    seq = 0

    def stored() -> object:
        return _one(db_url, "SELECT last_seq FROM signal_progress")

    async def scenario() -> list[object]:
        nonlocal seq
        seen = []
        with ConnectionPool(db_url, min_size=1, open=True) as pool, Journal(tmp_path) as journal:
            writer = SignalWriter(pool, journal, lambda: seq, lambda s: None, progress_alone_s=60)
            seq = 1
            await writer.flush()  # the first progress: nothing stored yet
            seen.append(stored())
            seq = 2
            await writer.flush()  # within the interval, nothing to go with it
            seen.append(stored())
            seq = 3
            origin = Origin("H", writer)
            origin.at(3, (), "INFY")
            ts = datetime(2026, 1, 5, 4, 30, tzinfo=UTC)
            writer.put(Signal(ts, "INFY", "x", 1.0), INFY, origin, "{}")
            await writer.flush()  # a signal: its progress goes with it
            seen.append(stored())
            seq = 4
            await writer.flush()
            seen.append(stored())
            writer.stop()
            await writer.flush()  # the last write, in the interval
            seen.append(stored())
            seen.append(writer.status().complete_seq)
        return seen

    assert asyncio.run(scenario()) == [1, 1, 3, 3, 4, 4]
