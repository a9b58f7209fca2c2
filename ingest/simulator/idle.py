"""The whole market: instruments nobody follows trade on, heard by nobody.

So that the simulator, like Upstox, has candles for minutes no client was subscribed in (an
outage of the whole store can be backfilled), every instrument it knows (the universe, made
at start, and any key followed once) trades once every INTERVAL_S while no session follows
it; the minute book (minutes.py) keeps those minutes. A minute a client heard stays made of
what it was sent.

Cost: each instrument is made at start (about 6 kB of state), each idle one trades once a
second (a few microseconds), and each keeps up to a minute aggregate a minute (minutes.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from ingest.simulator.following import Following
from ingest.simulator.minutes import MinuteBook

INTERVAL_S = 1.0


class IdleMarket:
    """Trades the idle instruments of `following` into `book` at `clock`'s time."""

    def __init__(self, following: Following, book: MinuteBook, clock: Callable[[], int]) -> None:
        self._following = following
        self._book = book
        self._clock = clock

    async def run(self, keys: Iterable[str]) -> None:
        """Make `keys`' instruments, then trade whichever nobody follows, until cancelled."""
        following, traded = self._following, self._book.traded
        now_ms = self._clock()
        for key in keys:
            following.know(key, now_ms)
        next_round = time.monotonic()
        while True:
            now_ms = self._clock()
            for instrument in following.idle():
                if instrument.trade(now_ms):
                    traded(instrument)
            next_round = max(next_round + INTERVAL_S, time.monotonic())
            await asyncio.sleep(next_round - time.monotonic())
