"""The latest tick of every instrument, in memory: what GET /latest-ticks answers from."""

from __future__ import annotations

import time
from collections.abc import Callable

from store.tick import KEY, Tick


class AggregatedTickHandler:
    """The latest tick per instrument, an O(1) dict lookup.

    Memory is bounded by the number of instruments, itself capped: the feed can carry at
    most a few thousand keys per connection, and past `max_instruments` new keys are counted
    and ignored rather than growing without bound.
    """

    def __init__(
        self, max_instruments: int = 50_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._latest: dict[str, Tick] = {}
        self._max = max_instruments
        self._clock = clock
        self._started = clock()
        self.ticks_processed = 0
        self.ignored_instruments = 0

    def on_frame(self, seq: int, ticks: list[Tick]) -> None:
        latest = self._latest
        for tick in ticks:
            key = tick[KEY]
            if key not in latest and len(latest) >= self._max:
                self.ignored_instruments += 1
                continue
            latest[key] = tick
        self.ticks_processed += len(ticks)

    def latest(self, key: str) -> Tick | None:
        return self._latest.get(key)

    def latest_many(self, keys: list[str] | None = None) -> dict[str, Tick]:
        if keys is None:
            return dict(self._latest)
        return {key: self._latest[key] for key in keys if key in self._latest}

    def get_stats(self) -> dict[str, object]:
        elapsed = max(self._clock() - self._started, 1e-9)
        return {
            "ticks_processed": self.ticks_processed,
            "instruments": len(self._latest),
            "ticks_per_second": round(self.ticks_processed / elapsed, 1),
            "ignored_instruments": self.ignored_instruments,
        }
