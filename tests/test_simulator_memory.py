"""The simulator's memory is bounded by configuration, whatever the feed: the one `tickvault
run` starts keeps no per-tick history, the exact-tick record stops at its limit and says
so, and the minute book behind the candles keeps its days and no more. Bytes and objects
held are counted (tracemalloc, the book's size), never wall time."""

from __future__ import annotations

import asyncio
import logging
import tracemalloc
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection

from core.config import Settings
from ingest.simulator import FeedSimulator, NotRecorded
from ingest.simulator.market import DAY_MS, DEFAULT_UNIVERSE, Instrument, Universe
from ingest.simulator.minutes import MINUTE_MS, MinuteBook
from ingest.startup import feed_settings
from ingest.tokens import TokenKeeper
from tests.test_simulator import ALL_KEYS, RELIANCE, feed, http_get, request


async def _read_until(ws: ClientConnection, simulator: FeedSimulator, ticks: int) -> None:
    while simulator.stats()["ticks_sent"] < ticks:
        await asyncio.wait_for(ws.recv(), 15)


def _simulator_bytes() -> int:
    """Bytes the simulator's code allocated since tracemalloc started and still holds."""
    only_ours = [tracemalloc.Filter(True, "*/ingest/simulator/*")]
    snapshot = tracemalloc.take_snapshot().filter_traces(only_ours)
    return sum(stat.size for stat in snapshot.statistics("filename"))


def test_the_ingest_s_simulator_holds_no_more_after_20000_more_ticks(tmp_path: Path) -> None:
    """The simulator `tickvault run` starts (no token) keeps no per-tick history: 20,000
    more ticks leave what its code holds where it was (a tick kept would be 36 bytes or
    more: 700 kB; today's record of tuples held 3 MB), and its candles are served all the
    same."""
    sent = 20_000

    async def scenario() -> tuple[int, int, tuple[int, dict]]:
        settings = Settings(data_dir=tmp_path, simulator_rate=20_000)
        records = [dict(record) for record in DEFAULT_UNIVERSE]
        client_settings, simulator = await feed_settings(
            settings, TokenKeeper(settings), lambda: records
        )
        assert simulator is not None
        try:
            async with feed(simulator) as ws:
                await request(ws, "sub", ALL_KEYS, "full")
                await _read_until(ws, simulator, 2_000)  # every instrument made, minutes begun
                tracemalloc.start()
                try:
                    # The encoder's bounded caches (recent times, quotes) fill first.
                    await _read_until(ws, simulator, simulator.stats()["ticks_sent"] + 5_000)
                    held = _simulator_bytes()
                    start = simulator.stats()["ticks_sent"]
                    await _read_until(ws, simulator, start + sent)
                    held = _simulator_bytes() - held
                finally:
                    tracemalloc.stop()
            base = f"{simulator.url}/v3/historical-candle/intraday/NSE_EQ%7CINE002A01018"
            token = str(client_settings.upstox_access_token)
            candles = await asyncio.to_thread(http_get, f"{base}/minutes/1", token)
            with pytest.raises(NotRecorded, match="record_simulator=True"):
                simulator.sent_ticks()  # no list of ticks: it kept none
            return held, simulator.stats()["ticks_sent"] - start, candles
        finally:
            await simulator.stop()

    held, ticks, (status, body) = asyncio.run(scenario())
    assert ticks >= sent
    assert held < 64 * 1024, f"{held} bytes more after {ticks} ticks"
    assert status == 200, body
    assert body["data"]["candles"], "candles without a record of every tick"


def test_the_tick_record_stops_at_its_limit_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> FeedSimulator:
        simulator = FeedSimulator(rate=5000, frame_interval=0.01, record_limit=2_000)
        async with simulator, feed(simulator) as ws:
            await request(ws, "sub", ALL_KEYS, "full")
            await _read_until(ws, simulator, 6_000)
        return simulator

    with caplog.at_level(logging.WARNING, logger="ingest.simulator.tape"):
        simulator = asyncio.run(scenario())
    stats = simulator.stats()
    assert stats["ticks_sent"] >= 6_000
    assert (stats["recorded_ticks"], stats["record_full"]) == (2_000, True)
    with pytest.raises(NotRecorded, match="limit of 2000 ticks"):
        simulator.sent_ticks()
    full = [r.getMessage() for r in caplog.records if "record is full" in r.getMessage()]
    assert len(full) == 1, full


def test_the_minute_book_keeps_its_days_and_no_more() -> None:
    """Three days of a trade a minute: the book holds today's and yesterday's minutes (its
    default two IST dates), one aggregate per minute, whatever the trades."""
    universe = Universe(DEFAULT_UNIVERSE, seed=1)
    start = 1_767_205_800_000  # 2026-01-01 00:00 IST
    instrument = Instrument(universe.profile(RELIANCE, start), universe, start)
    book = MinuteBook()
    for minute in range(3 * 1440):
        for second in (0, 20, 40):  # three trades a minute, one aggregate
            instrument.trade(start + minute * MINUTE_MS + second * 1000)
            book.traded(instrument)
    assert book.size() == 2 * 1440
    kept = book.minutes(RELIANCE, 0, 2**62)
    assert kept[0][0] == (start + DAY_MS) // MINUTE_MS, "the first day is gone"
    assert kept[-1][0] == (start + 3 * DAY_MS) // MINUTE_MS - 1
