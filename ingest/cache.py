"""The latest tick of every instrument, in memory: what GET /latest-ticks answers from."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

from ingest.status import CacheStatus
from ingest.symbols import SymbolDirectory
from ingest.tick_data import TickData
from store.tick_row import KEY, Tick


class AggregatedTickHandler:
    """The latest tick per instrument, an O(1) dict lookup.

    Memory is bounded by the number of instruments, itself capped: the feed can carry at
    most a few thousand keys per connection, and past `max_instruments` new keys are counted
    and ignored rather than growing without bound.
    """

    def __init__(
        self,
        symbols: SymbolDirectory | None = None,
        max_instruments: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`symbols` lets `get_latest_tick` take trading symbols and index names too."""
        self._symbols = symbols
        self._latest: dict[str, Tick] = {}
        # The instruments whose latest tick changed since take_changed(), with that tick.
        self._changed: dict[str, Tick] = {}
        self._max = max_instruments
        self._clock = clock
        self._started = clock()
        self.ticks_processed = 0
        self.ignored_instruments = 0

    def on_frame(self, seq: int, ticks: list[Tick]) -> None:
        latest = self._latest
        changed = self._changed
        if len(latest) + len(ticks) <= self._max:  # no key can be one too many: no check
            for tick in ticks:
                key = tick[KEY]
                latest[key] = changed[key] = tick
        else:
            for tick in ticks:
                key = tick[KEY]
                if key not in latest and len(latest) >= self._max:
                    self.ignored_instruments += 1
                    continue
                latest[key] = changed[key] = tick
        self.ticks_processed += len(ticks)

    def take_changed(self) -> dict[str, Tick]:
        """key -> latest tick of each instrument that changed since the last call (the first
        call: since the start), and start afresh. Bounded like the cache: one entry per
        instrument however long between calls. The published table's feed."""
        changed, self._changed = self._changed, {}
        return changed

    def latest(self, key: str) -> Tick | None:
        return self._latest.get(key)

    def latest_many(self, keys: list[str] | None = None) -> dict[str, Tick]:
        if keys is None:
            return dict(self._latest)
        return {key: self._latest[key] for key in keys if key in self._latest}

    def get_latest_tick(self, symbol: str) -> dict[str, Any] | None:
        """The latest tick of a trading symbol, index name or instrument key, with the guide's
        keys (`symbol`, `price`, `volume`, `timestamp`, ...); None before its first tick.

        Raises UnknownSymbol for what names no instrument. A symbol is resolved once (a query
        the first time), then this is two dict lookups.
        """
        key = self._symbols.key_of(symbol) if self._symbols is not None else symbol
        tick = self._latest.get(key)
        if tick is None:
            return None
        name = self._symbols.symbol_of(key) if self._symbols is not None else key
        return TickData.from_tick(tick, name).as_dict()

    def get_latest_ticks(self, symbols: Iterable[str]) -> dict[str, dict[str, Any]]:
        """symbol as given -> its latest tick (as `get_latest_tick`), for those that have one."""
        found = {symbol: self.get_latest_tick(symbol) for symbol in symbols}
        return {symbol: tick for symbol, tick in found.items() if tick is not None}

    def get_stats(self) -> dict[str, Any]:
        """`status()` as a dict, as the Phase 2 guide reads it."""
        return asdict(self.status())

    def status(self) -> CacheStatus:
        elapsed = max(self._clock() - self._started, 1e-9)
        return CacheStatus(
            ticks_processed=self.ticks_processed,
            symbols_tracked=len(self._latest),
            ticks_per_second=round(self.ticks_processed / elapsed, 1),
            ignored_instruments=self.ignored_instruments,
        )
