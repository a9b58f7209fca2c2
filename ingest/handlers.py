"""Your own code on the stream: each callback in its own task behind a bounded buffer.

`FrameHandler` is what the pipeline calls with every decoded frame `(seq, ticks)`: the writer,
the cache and each `CustomHandler` are one. A custom handler gets each tick as a `TickData`,
built in its own task, so the feed and the writer pay nothing for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from ingest.status import HandlerStatus
from ingest.tick_data import TickData
from store.tick_row import KEY, Tick

log = logging.getLogger(__name__)

# True: handled; False: declined; an exception: failed (each counted in the handler's status).
TickCallback = Callable[[TickData], Awaitable[bool | None]]


class FrameHandler(Protocol):
    def on_frame(self, seq: int, ticks: list[Tick]) -> None: ...


class CustomHandler:
    """Runs one user callback per tick in its own task, never blocking the pipeline.

    When the callback falls behind by more than `max_pending` ticks, new ticks are dropped
    for it (and counted): the feed and the writer come first.
    """

    def __init__(
        self,
        callback: TickCallback,
        symbol_of: Callable[[str], str] = str,
        max_pending: int = 100_000,
    ) -> None:
        """`symbol_of` names a tick's trading symbol from its instrument key."""
        self.callback = callback
        self._symbol_of = symbol_of
        self.name = getattr(callback, "__qualname__", repr(callback))
        self._pending: deque[Tick] = deque()
        self._max_pending = max_pending
        self._ready = asyncio.Event()
        self.delivered = 0
        self.handled = 0
        self.declined = 0
        self.dropped = 0
        self.errors = 0

    def on_frame(self, seq: int, ticks: list[Tick]) -> None:
        if len(self._pending) + len(ticks) > self._max_pending:
            self.dropped += len(ticks)
            return
        self._pending.extend(ticks)
        self._ready.set()

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._pending:
                tick = self._pending.popleft()
                try:
                    handled = await self.callback(
                        TickData.from_tick(tick, self._symbol_of(tick[KEY]))
                    )
                except Exception:
                    self.errors += 1
                    if self.errors == 1 or self.errors % 1000 == 0:
                        log.exception("tick handler %s failed (%d times)", self.name, self.errors)
                else:
                    if handled is False:
                        self.declined += 1
                    else:
                        self.handled += 1
                self.delivered += 1

    def status(self) -> HandlerStatus:
        return HandlerStatus(
            handler=self.name,
            delivered=self.delivered,
            handled=self.handled,
            declined=self.declined,
            errors=self.errors,
            pending=len(self._pending),
            dropped=self.dropped,
        )
