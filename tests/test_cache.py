"""The latest-tick cache: O(1) answers from the ticks it was handed, in bounded memory."""

from __future__ import annotations

from ingest.cache import AggregatedTickHandler
from store.tick_row import TICK_COLUMNS


def tick(key: str, time: int, ltp: float, volume_delta: int | None) -> tuple:
    row = dict.fromkeys(TICK_COLUMNS)
    row.update(instrument_key=key, ts=time, ltp=ltp, volume_delta=volume_delta, received_at=time)
    return tuple(row[name] for name in TICK_COLUMNS)


def test_latest_tick_per_instrument() -> None:
    cache = AggregatedTickHandler()
    cache.on_frame(1, [tick("A", 1, 100.0, 5), tick("B", 1, 50.0, None)])
    cache.on_frame(2, [tick("A", 2, 103.5, 7)])
    cache.on_frame(3, [tick("A", 3, 99.0, 1)])

    latest = cache.latest("A")
    assert latest is not None
    assert latest[TICK_COLUMNS.index("ltp")] == 99.0
    assert cache.status().ticks_processed == 4
    assert cache.latest("C") is None
    assert set(cache.latest_many(["A", "C"])) == {"A"}


def test_instruments_past_the_bound_are_counted_not_kept() -> None:
    cache = AggregatedTickHandler(max_instruments=2)
    cache.on_frame(1, [tick(key, 1, 10.0, 1) for key in ("A", "B", "C", "D")])
    assert set(cache.latest_many()) == {"A", "B"}
    assert cache.status().ignored_instruments == 2
    cache.on_frame(2, [tick("A", 2, 11.0, 1)])  # known instruments keep updating
    assert cache.latest("A")[TICK_COLUMNS.index("ltp")] == 11.0
