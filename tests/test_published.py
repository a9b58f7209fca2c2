"""The published table: what the ingest writes is what another process reads, whole or not at
all, across restarts, with a bounded file, and through the running service."""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from core.config import Settings
from ingest.cache import AggregatedTickHandler
from ingest.channels.latest_publisher import LatestTickPublisher
from ingest.channels.latest_reader import LatestTickReader
from ingest.channels.latest_table import (
    SLOT,
    IngestNotRunning,
    PublisherBusy,
    SlotBusy,
    file_size,
    published_path,
)
from ingest.service import WebSocketService
from ingest.status import BarsStatus, CacheStatus, FeedStatus, IngestStatus
from store.tick_row import TICK_COLUMNS, TICK_PG_TYPES
from tests.conftest import REPO

COLUMN = {name: index for index, name in enumerate(TICK_COLUMNS)}


def full_tick(key: str, n: int) -> tuple:
    """Every column set, each derived from `n`: ints are n (times n + a day), floats n + 0.25."""
    values: list[object] = [key]
    for name, pg_type in zip(TICK_COLUMNS[1:], TICK_PG_TYPES[1:], strict=True):
        if pg_type == "float8":
            values.append(n + 0.25)
        elif pg_type == "timestamptz":
            values.append(n + 86_400_000_000)
        else:
            values.append(-n if name == "volume_delta" else n)
    return tuple(values)


def with_nones(tick: tuple, *names: str) -> tuple:
    row = list(tick)
    for name in names:
        row[COLUMN[name]] = None
    return tuple(row)


GREEKS = ("delta", "theta", "gamma", "vega", "rho")
INDEX_NONES = (
    "ltq",
    "vtt",
    "volume_delta",
    "atp",
    "oi",
    "iv",
    "tbq",
    "tsq",
    "bid_price",
    "bid_qty",
    "ask_price",
    "ask_qty",
    *GREEKS,
)


def test_ticks_round_trip_with_every_column_type_and_none(tmp_path: Path) -> None:
    path = tmp_path / "published" / "latest.bin"
    option = full_tick("NSE_FO|43210", 7)
    option = (*option[:2], 24_501.65, 2**62, *option[4:])  # a large int8 and a real price
    equity = with_nones(full_tick("NSE_EQ|INE009A01021", 8), *GREEKS)
    index = with_nones(full_tick("NSE_INDEX|Nifty 50", 9), *INDEX_NONES, "feed_ts")
    negative = full_tick("MCX_FO|1", -5)  # negative times and values
    ticks = [option, equity, index, negative]
    with LatestTickPublisher(path) as publisher, LatestTickReader(path) as reader:
        assert publisher.publish(ticks) == 4
        read = reader.latest([tick[0] for tick in ticks] + ["NSE_EQ|UNKNOWN"])
        assert read == {tick[0]: tick for tick in ticks}
        for tick in ticks:
            for value, got in zip(tick, read[tick[0]], strict=True):
                assert type(value) is type(got), (tick[0], value, got)
        # The same instruments with None moving in both directions, and an int in a float8.
        later = [
            with_nones(full_tick("NSE_FO|43210", 10), "bid_price", "ask_qty"),
            full_tick("NSE_EQ|INE009A01021", 11),
            with_nones(full_tick("NSE_INDEX|Nifty 50", 12), "ltq"),
        ]
        publisher.publish(later)
        assert reader.latest([tick[0] for tick in later]) == {tick[0]: tick for tick in later}
        ltp_as_int = (*full_tick("NSE_FO|43210", 13)[:2], 100, *full_tick("NSE_FO|43210", 13)[3:])
        publisher.publish([ltp_as_int])
        got = reader.latest(["NSE_FO|43210"])["NSE_FO|43210"]
        assert got == ltp_as_int
        assert got[COLUMN["ltp"]] == 100.0


def test_a_tick_that_does_not_fit_is_refused_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "latest.bin"
    bad = (*full_tick("BAD", 1)[:3], "ten", *full_tick("BAD", 1)[4:])  # text in ltq (int8)
    with LatestTickPublisher(path) as publisher, LatestTickReader(path) as reader:
        with caplog.at_level(logging.ERROR, "ingest.channels.latest_publisher"):
            assert publisher.publish([full_tick("GOOD", 1), bad]) == 1
        assert "does not fit" in caplog.text
        assert reader.latest(["GOOD", "BAD"]) == {"GOOD": full_tick("GOOD", 1)}
        assert reader.info()["ticks_refused"] == 1


def test_keys_are_appended_across_publishes(tmp_path: Path) -> None:
    path = tmp_path / "latest.bin"
    with LatestTickPublisher(path) as publisher, LatestTickReader(path) as reader:
        publisher.publish([full_tick("A", 1), full_tick("B", 1)])
        assert reader.keys() == ["A", "B"]
        assert reader.latest(["A", "B", "C"]) == {"A": full_tick("A", 1), "B": full_tick("B", 1)}
        publisher.publish([full_tick("C", 2), full_tick("A", 3), full_tick("A", 4)])
        # The reader learns the new key on its own; the earlier ones keep their slots.
        assert reader.latest(["C", "A"]) == {"C": full_tick("C", 2), "A": full_tick("A", 4)}
        assert reader.keys() == ["A", "B", "C"]
        publisher.publish([full_tick("D", 5)])
        assert reader.keys() == ["A", "B", "C", "D"]
        assert reader.info()["instruments"] == 4


def _status(ticks: int, symbols: list[str]) -> IngestStatus:
    return IngestStatus(
        is_running=True,
        websocket_connected=False,
        subscribed_symbols=symbols,
        feed=FeedStatus(source="simulator", requests={"sub": 2}, connection_states=["open"]),
        subscriptions=None,
        pipeline=None,
        writer=None,
        cache=CacheStatus(
            ticks_processed=ticks,
            symbols_tracked=3,
            ticks_per_second=12.5,
            ignored_instruments=0,
        ),
        journal=None,
        bars=BarsStatus(edition="apache", last_rollup_error=None),
    )


def test_status_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "latest.bin"
    with LatestTickPublisher(path) as publisher, LatestTickReader(path) as reader:
        assert reader.status() is None
        for ticks in range(5):  # both buffers in turn
            status = _status(ticks, [f"SYM{i}" for i in range(ticks * 1000)])
            assert publisher.publish_status(status)
            assert reader.status() == asdict(status)
        assert 0 <= reader.info()["status_age_s"] < 5


def test_a_status_too_large_keeps_the_last_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "latest.bin"
    with LatestTickPublisher(path, 10, status_bytes=4096) as publisher:
        small = _status(1, ["A"])
        assert publisher.publish_status(small)
        with caplog.at_level(logging.ERROR, "ingest.channels.latest_publisher"):
            assert not publisher.publish_status(_status(2, ["X" * 10] * 1000))
        assert "exceeds" in caplog.text
        with LatestTickReader(path) as reader:
            assert reader.status() == asdict(small)
            assert reader.info()["status_too_large"] == 1


# A writer in its own process: ticks whose columns all derive from one counter, for a few
# keys, as fast as it can, None columns changing with the counter, and a status each round.
WRITER = """
import sys, time
from ingest.channels.latest_publisher import LatestTickPublisher
from tests.test_published import GREEKS, full_tick, with_nones

path, seconds = sys.argv[1], float(sys.argv[2])
keys = [f"NSE_FO|{i}" for i in range(4)]
publisher = LatestTickPublisher(path, capacity=16)
publisher.publish([with_nones(full_tick(key, 0), *GREEKS) for key in keys])
print("ready", flush=True)
n = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(100):
        n += 1
        tick = full_tick(keys[n % 4], n)
        publisher.publish([tick if n % 3 else with_nones(tick, *GREEKS)])
    publisher.publish_status({"n": n, "pad": "x" * (n % 5000), "check": n * 7})
print(n, flush=True)
publisher.close()
"""


def expected(key: str, n: int) -> tuple:
    tick = full_tick(key, n)
    return tick if n % 3 else with_nones(tick, *GREEKS)


def _writer(path: Path, seconds: float) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(seconds)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def test_a_reader_in_another_process_never_sees_a_torn_tick(tmp_path: Path) -> None:
    path = tmp_path / "latest.bin"
    writer = _writer(path, 2.5)
    keys = [f"NSE_FO|{i}" for i in range(4)]
    reads = busy = statuses = 0
    seen: dict[str, set[int]] = {key: set() for key in keys}
    last = dict.fromkeys(keys, 0)
    reader = LatestTickReader(path)
    try:
        while writer.poll() is None:
            try:
                ticks = reader.latest(keys)
            except SlotBusy as error:
                busy += 1
                ticks = error.partial
            except IngestNotRunning:
                break  # the writer finished
            for key, tick in ticks.items():
                n = tick[COLUMN["ltq"]]
                assert tick == expected(key, n), f"torn: {tick}"
                assert n >= last[key], "a slot went back in time"
                last[key] = n
                seen[key].add(n)
                reads += 1
            try:
                status = reader.status()
            except (SlotBusy, IngestNotRunning):
                continue
            if status is not None:
                assert status["check"] == status["n"] * 7, status
                assert len(status["pad"]) == status["n"] % 5000
                statuses += 1
        written = int(writer.communicate(timeout=30)[0].split()[-1])
    finally:
        reader.close()
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0
    print(
        f"writer: {written} ticks; reader: {reads} ticks, {statuses} statuses, "
        f"{reader.retries} retries, {busy} busy"
    )
    assert written > 10_000
    assert reads > 1000
    assert statuses > 100
    assert all(len(values) > 100 for values in seen.values()), "reads while the writer wrote"


def test_a_torn_slot_is_reported_busy_never_served(tmp_path: Path) -> None:
    path = tmp_path / "latest.bin"
    with LatestTickPublisher(path, capacity=4) as publisher:
        publisher.publish([full_tick("A", 1), full_tick("B", 2)])
        reader = LatestTickReader(path, busy_timeout_s=0.01)
        assert reader.latest(["A", "B"]) == {"A": full_tick("A", 1), "B": full_tick("B", 2)}
        assert reader._table is not None
        slot_b = reader._table.header["slots_offset"] + SLOT  # the second key's slot
        with path.open("r+b") as file, mmap.mmap(file.fileno(), 0) as raw:
            seq = int.from_bytes(raw[slot_b : slot_b + 8], sys.byteorder)
            # A write under way: the sequence is odd.
            raw[slot_b : slot_b + 8] = (seq + 1).to_bytes(8, sys.byteorder)
            with pytest.raises(SlotBusy) as busy:
                reader.latest(["A", "B"])
            assert busy.value.keys == ["B"]
            assert busy.value.partial == {"A": full_tick("A", 1)}
            # An even sequence over a body that is not the one its crc32 was taken of.
            raw[slot_b : slot_b + 8] = seq.to_bytes(8, sys.byteorder)
            raw[slot_b + 20] ^= 0xFF
            with pytest.raises(SlotBusy):
                reader.latest(["B"])
            raw[slot_b + 20] ^= 0xFF
            assert reader.latest(["B"]) == {"B": full_tick("B", 2)}
        assert reader.busy == 2
        reader.close()


def test_no_file_means_no_ingest(tmp_path: Path) -> None:
    with LatestTickReader(published_path(tmp_path)) as reader:
        with pytest.raises(IngestNotRunning, match="no ingest has published here"):
            reader.latest(["A"])
        with pytest.raises(IngestNotRunning):
            reader.status()


def test_a_stopped_or_killed_writer_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "latest.bin"
    reader = LatestTickReader(path)
    with LatestTickPublisher(path) as publisher:
        publisher.publish([full_tick("A", 1)])
        assert reader.latest(["A"]) == {"A": full_tick("A", 1)}
    with pytest.raises(IngestNotRunning, match="has stopped"):
        reader.latest(["A"])

    writer = _writer(path, 60)
    try:
        assert reader.latest(["NSE_FO|1"])  # a live writer in another process
        pid = reader.info()["pid"]
        assert pid == writer.pid
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    with pytest.raises(IngestNotRunning, match=f"the ingest \\(pid {pid}\\) is gone"):
        reader.latest(["NSE_FO|1"])
    reader.close()


def test_a_restarted_writer_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "latest.bin"
    reader = LatestTickReader(path)
    writer = _writer(path, 60)
    try:
        assert reader.latest(["NSE_FO|1"])
        first = reader.start_token
        writer.send_signal(signal.SIGKILL)  # no clean stop
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    with LatestTickPublisher(path, capacity=8) as publisher:
        assert reader.start_token != first
        assert reader.info()["pid"] == os.getpid()
        assert reader.latest(["NSE_FO|1"]) == {}, "nothing of the old table is served"
        publisher.publish([full_tick("B", 1), full_tick("NSE_FO|1", 2)])
        assert reader.latest(["NSE_FO|1", "B"]) == {
            "NSE_FO|1": full_tick("NSE_FO|1", 2),
            "B": full_tick("B", 1),
        }
        assert reader.keys() == ["B", "NSE_FO|1"]
        second = reader.start_token
    with LatestTickPublisher(path, capacity=8):  # after a clean stop, too
        assert reader.start_token not in (first, second)
        assert reader.latest(["B"]) == {}
    reader.close()


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latest.bin"
    with LatestTickPublisher(path) as first:
        first.publish([full_tick("A", 1)])
        with pytest.raises(PublisherBusy):
            LatestTickPublisher(path)
        with LatestTickReader(path) as reader:  # the first one's table is untouched
            assert reader.latest(["A"]) == {"A": full_tick("A", 1)}
    assert sorted(item.name for item in tmp_path.iterdir()) == ["latest.bin", "latest.lock"]


def test_capacity_bounds_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "latest.bin"
    long_key = "NSE_FO|" + "9" * 60
    with LatestTickPublisher(path, capacity=3) as publisher, LatestTickReader(path) as reader:
        size = path.stat().st_size
        assert size == publisher.file_size == file_size(3) == reader.info()["file_size"]
        with caplog.at_level(logging.WARNING, "ingest.channels.latest_publisher"):
            publisher.publish([full_tick(key, 1) for key in ("A", long_key, "B", "C", "D", "E")])
            publisher.publish([full_tick(key, 2) for key in ("A", "D", "E", long_key)])
        assert reader.latest(["A", "B", "C", "D", "E", long_key]) == {
            "A": full_tick("A", 2),
            "B": full_tick("B", 1),
            "C": full_tick("C", 1),
        }
        info = reader.info()
        assert info["instruments"] == 3
        assert info["keys_over_capacity"] == 2
        assert info["keys_too_long"] == 1
        assert info["ticks_refused"] == 6
        assert caplog.text.count("not published") == 3, "each refused key is logged once"
        assert "the table is full (3 instruments)" in caplog.text
        assert path.stat().st_size == size
    assert file_size(50_000) < 20 * 2**20


def test_the_cache_hands_over_what_changed() -> None:
    cache = AggregatedTickHandler(max_instruments=2)
    assert cache.take_changed() == {}
    cache.on_frame(1, [full_tick("A", 1), full_tick("B", 1), full_tick("A", 2)])
    cache.on_frame(2, [full_tick("C", 1)])  # past the bound: not cached, not handed over
    assert cache.take_changed() == {"A": full_tick("A", 2), "B": full_tick("B", 1)}
    assert cache.take_changed() == {}
    cache.on_frame(3, [full_tick("B", 2), full_tick("C", 2)])
    assert cache.take_changed() == {"B": full_tick("B", 2)}
    assert cache.status().ignored_instruments == 2


def test_the_service_publishes_what_its_cache_holds(instruments_db: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", simulator_rate=3000, rollup_interval_s=1)
    reader = LatestTickReader(published_path(settings.data_dir))

    async def scenario() -> None:
        service = WebSocketService(settings, instruments_db)
        await service.start()
        try:
            await asyncio.sleep(3)
            for _ in range(10):
                # Between two turns of the event loop: what the cache changed since the last
                # publish (at most one period ago) is all that may differ.
                keys = list(service.cache.latest_many())
                cached = service.cache.latest_many(keys)
                pending = set(service.cache._changed)
                published = reader.latest(keys)
                differ = {key for key in keys if published.get(key) != cached[key]}
                assert differ <= pending, "a tick older than one publish period"
                assert len(published) >= len(keys) - len(pending)
                await asyncio.sleep(0.037)
            assert len(keys) > 10
            await asyncio.sleep(0.1)
            status = reader.status()
            assert status is not None
            assert status["is_running"] is True
            assert status["cache"]["ticks_processed"] > 1000
            assert status["feed"]["source"] == "simulator"
            assert reader.info()["heartbeat_age_s"] < 1
        finally:
            await service.stop()
        with pytest.raises(IngestNotRunning, match="has stopped"):
            reader.latest(keys)

    asyncio.run(scenario())
    reader.close()
