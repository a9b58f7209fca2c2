"""Your own code on the stream: each callback in its own task behind a bounded buffer.

`FrameHandler` is what the pipeline calls with every decoded frame `(seq, ticks)`: the writer,
the cache and each `CustomHandler` are one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from store.tick import Tick, as_dict

log = logging.getLogger(__name__)

TickCallback = Callable[[dict[str, object]], Awaitable[object]]


class FrameHandler(Protocol):
    def on_frame(self, seq: int, ticks: list[Tick]) -> None: ...


class CustomHandler:
    """Runs one user callback per tick in its own task, never blocking the pipeline.

    When the callback falls behind by more than `max_pending` ticks, new ticks are dropped
    for it (and counted): the feed and the writer come first.
    """

    def __init__(self, callback: TickCallback, max_pending: int = 100_000) -> None:
        self.callback = callback
        self.name = getattr(callback, "__qualname__", repr(callback))
        self._pending: deque[Tick] = deque()
        self._max_pending = max_pending
        self._ready = asyncio.Event()
        self.delivered = 0
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
                    await self.callback(as_dict(tick))
                except Exception:
                    self.errors += 1
                    if self.errors == 1 or self.errors % 1000 == 0:
                        log.exception("tick handler %s failed (%d times)", self.name, self.errors)
                self.delivered += 1

    def get_stats(self) -> dict[str, object]:
        return {
            "handler": self.name,
            "delivered": self.delivered,
            "pending": len(self._pending),
            "dropped": self.dropped,
            "errors": self.errors,
        }
