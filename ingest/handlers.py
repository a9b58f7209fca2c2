"""Your own code on the stream: each callback in its own task behind a bounded buffer.

`FrameHandler` is what the pipeline calls with every decoded frame `(seq, ticks)`: the writer,
the cache and each `CustomHandler` are one. A custom handler gets each tick as a `TickData`,
built in its own task, so the feed and the writer pay nothing for it.

Each tick keeps the seq of its frame on its way through the buffer: a signal the callback
emits is keyed by it (ingest/signals.py), and `done_seq` says up to which frame the
callback has seen everything, which is how far the signals can be complete.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from ingest.signals import Origin, SignalWriter, handling
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
        *,
        signals: SignalWriter | None = None,
        after_seq: int = 0,
        name: str | None = None,
    ) -> None:
        """`symbol_of` names a tick's trading symbol from its instrument key; `signals`
        takes what the callback emits; `after_seq`: the frames up to it are not this
        handler's to see (it starts with the next); `name`, in status and in its signals'
        key, defaults to the callback's qualified name."""
        self.callback = callback
        self._symbol_of = symbol_of
        self.name = name or getattr(callback, "__qualname__", repr(callback))
        # (seq, tick) in order; a tick of None marks frames up to seq that left nothing to
        # handle (no ticks, or dropped), so that done_seq moves past them.
        self._pending: deque[tuple[int, Tick | None]] = deque()
        self._max_pending = max_pending
        self._origin = Origin(self.name, signals)
        self.done_seq = after_seq
        self._ready = asyncio.Event()
        self.delivered = 0
        self.handled = 0
        self.declined = 0
        self.dropped = 0
        self.errors = 0

    def on_frame(self, seq: int, ticks: list[Tick]) -> None:
        pending = self._pending
        if not ticks or len(pending) + len(ticks) > self._max_pending:
            self.dropped += len(ticks)
            if not pending:
                self.done_seq = seq
            elif pending[-1][1] is None:
                pending[-1] = (seq, None)  # one mark for a run of them: the bound holds
            else:
                pending.append((seq, None))
            return
        pending.extend([(seq, tick) for tick in ticks])
        self._ready.set()

    async def run(self) -> None:
        handling(self._origin)  # this task's signals come from this handler
        pending = self._pending
        while True:
            await self._ready.wait()
            self._ready.clear()
            while pending:
                seq, tick = pending.popleft()
                if tick is None:
                    self.done_seq = seq
                    continue
                symbol = self._symbol_of(tick[KEY])
                self._origin.at(seq, tick, symbol)
                try:
                    handled = await self.callback(TickData.from_tick(tick, symbol))
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
                if not pending or pending[0][0] != seq:
                    self.done_seq = seq

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
