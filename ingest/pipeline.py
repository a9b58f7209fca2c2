"""socket frame -> journal -> decoder -> handlers: the one path every tick takes.

The journal comes first, so a frame is durable before anything acts on it; replay after a
crash runs the journaled frames through the same decoder and handlers. Built-in handlers are
called synchronously with `(seq, ticks)`; custom handlers get each tick in their own task
behind a bounded buffer, so a slow or failing one cannot stall the feed or the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Container, Iterator

from ingest.disk import BelowDiskFloor, DiskGuard
from ingest.handlers import CustomHandler, FrameHandler, TickCallback
from ingest.journal import Journal, JournalFull
from ingest.metrics import IngestMetrics
from ingest.signals import SignalWriter
from ingest.status import PipelineStatus
from ingest.upstox.decoder import FeedDecoder, MalformedFrame
from store.tick_row import Tick

log = logging.getLogger(__name__)

# Refusals end once frames have been taken this long without one: a full disk that the
# writer's commits free and new frames fill again in turns is one spell of refusals, logged
# once when it starts and once when it ends, not once per turn.
REFUSALS_END_AFTER_S = 5.0


class Pipeline:
    """The client's frame sink: journals, decodes and hands ticks to every handler."""

    def __init__(
        self,
        journal: Journal,
        decoder: FeedDecoder,
        metrics: IngestMetrics,
        symbol_of: Callable[[str], str] = str,
        disk_guard: DiskGuard | None = None,
    ) -> None:
        """`symbol_of` names the trading symbol of a key, for custom handlers' TickData;
        `disk_guard` refuses frames while a disk is below the floor (ingest/disk.py)."""
        self.journal = journal
        self.disk_guard = disk_guard
        self._symbol_of = symbol_of
        self.decoder = decoder
        self.metrics = metrics
        self.wanted: Container[str] | None = None
        self.handlers: list[FrameHandler] = []
        self.custom_handlers: list[CustomHandler] = []
        self.signals: SignalWriter | None = None  # where custom handlers' signals go
        self.seq = 0  # the last frame handed to the handlers
        self._handler_tasks: list[asyncio.Task[None]] = []
        self.market_status: dict[str, str] = {}
        self.frames = 0
        self.malformed_frames = 0
        self.refused_frames = 0
        self.journal_error: str | None = None  # why frames are refused now; None once they are not
        self._refusing_since = 0.0  # monotonic, of the spell of refusals under way
        self._refused_at = 0.0  # monotonic, of the last refusal
        self._refused_before = 0  # refused_frames when the spell began
        self.duplicates = 0
        self.unwanted = 0

    def add_handler(self, handler: FrameHandler) -> None:
        self.handlers.append(handler)

    async def register_handler(self, callback: TickCallback) -> CustomHandler:
        """Follow every tick with an async `callback`, run in a task of its own."""
        # Two handlers of one class get names of their own: a signal's key holds the name.
        base = getattr(callback, "__qualname__", repr(callback))
        taken = {handler.name for handler in self.custom_handlers}
        name, number = base, 1
        while name in taken:
            number += 1
            name = f"{base}#{number}"
        handler = CustomHandler(
            callback, self._symbol_of, signals=self.signals, after_seq=self.seq, name=name
        )
        self.custom_handlers.append(handler)
        self.handlers.append(handler)
        self._handler_tasks.append(asyncio.create_task(handler.run(), name=handler.name))
        return handler

    async def close(self) -> None:
        """Stop the custom handlers' tasks (ticks still buffered for them are not delivered)."""
        for task in self._handler_tasks:
            task.cancel()
        await asyncio.gather(*self._handler_tasks, return_exceptions=True)
        self._handler_tasks.clear()

    def signals_complete_seq(self) -> int:
        """The last seq every custom handler has handled every tick up to (the last frame
        handed on, with none): how far their signals can be complete."""
        return min((h.done_seq for h in self.custom_handlers), default=self.seq)

    def replay_to_custom_handlers(self, after_seq: int, upto_seq: int) -> int:
        """Give the custom handlers alone the journaled frames after_seq+1..upto_seq again.

        After a crash these frames' ticks are stored but not all their signals: the
        handlers emit them again, and the ones stored before are refused by their key. The
        decoder is a fresh one, since the live one is in the state of a later frame: the
        first tick of each instrument among them carries no volume_delta.
        """
        decoder = FeedDecoder()
        count = 0
        for seq, received_at_us, frame in self.journal.replay(after_seq):
            if seq > upto_seq:
                break
            try:
                ticks = decoder.decode(frame, received_at_us, self.wanted).ticks
            except MalformedFrame:
                ticks = []
            for handler in self.custom_handlers:
                handler.on_frame(seq, ticks)
            count += 1
        return count

    def on_frame(self, frame: bytes, received_at_us: int) -> None:
        """Journal then process one frame; raises MalformedFrame after journaling it.

        A frame the journal cannot take (its bound or the disk is full, the disk refuses
        writes, a disk is below the floor of free space) is dropped before anything acts on
        it, so nothing downstream holds a tick that is not durable and the decoder's state
        stays that of the journaled frames. It is
        counted and makes the service unhealthy; the next frame tries the journal again, so
        the feed resumes by itself once the cause goes. One ERROR line says when refusals
        start, one line when frames have been taken for REFUSALS_END_AFTER_S again.
        """
        try:
            if self.disk_guard is not None and (refusal := self.disk_guard.refusal()):
                raise BelowDiskFloor(refusal)
            seq = self.journal.append(frame, received_at_us)
        except (JournalFull, BelowDiskFloor, OSError) as error:
            self._refuse(error)
            return
        if self.journal_error is not None:
            self._maybe_end_refusals()
        self._process(seq, frame, received_at_us)

    def _maybe_end_refusals(self) -> None:
        now = time.monotonic()
        if now - self._refused_at < REFUSALS_END_AFTER_S:
            return
        log.warning(
            "the journal takes frames again: %d refused over %.0f s (%d in all)",
            self.refused_frames - self._refused_before,
            self._refused_at - self._refusing_since,
            self.refused_frames,
        )
        self.journal_error = None

    def _refuse(self, error: JournalFull | BelowDiskFloor | OSError) -> None:
        self.refused_frames += 1
        self.metrics.frames_refused.inc()
        self._refused_at = time.monotonic()
        first_of_outage = self.journal_error is None
        if first_of_outage:
            self._refusing_since = self._refused_at
            self._refused_before = self.refused_frames - 1
        if isinstance(error, JournalFull | BelowDiskFloor):
            self.journal_error = str(error)
        else:
            self.journal_error = (
                f"frame journal {self.journal.directory} cannot be written: "
                f"{error.strerror or repr(error)}"
            )
        if first_of_outage:
            log.error("%s; frames are dropped until it can", self.journal_error)

    def journal_ticks(
        self, after_seq: int, decoder: FeedDecoder
    ) -> Iterator[tuple[int, list[Tick]]]:
        """(seq, ticks) of each journaled frame after `after_seq`, decoded by `decoder` alone.

        The writer's catch-up after an outage reads the journal here, with a decoder in the
        state of the last committed frame, so that it writes exactly the rows the live path
        would have. Nothing else is told: the live path already counted and dispatched these
        frames, and a malformed one yields no ticks, as it did live.
        """
        for seq, received_at_us, frame in self.journal.replay(after_seq):
            try:
                ticks = decoder.decode(frame, received_at_us, self.wanted).ticks
            except MalformedFrame:
                ticks = []
            yield seq, ticks

    def replay(self, after_seq: int) -> int:
        """Run journaled frames after `after_seq` through decoder and handlers; returns count."""
        count = 0
        for seq, received_at_us, frame in self.journal.replay(after_seq):
            # A malformed frame is counted in _process; it was skipped the first time too.
            with contextlib.suppress(MalformedFrame):
                self._process(seq, frame, received_at_us)
            count += 1
        return count

    def _process(self, seq: int, frame: bytes, received_at_us: int) -> None:
        self.frames += 1
        self.seq = seq
        try:
            decoded = self.decoder.decode(frame, received_at_us, self.wanted)
        except MalformedFrame:
            self.malformed_frames += 1
            self.metrics.malformed_frames.inc()
            for handler in self.handlers:
                handler.on_frame(seq, [])  # the writer still moves past this journal entry
            raise
        ticks = decoded.ticks
        if decoded.market_status:
            self.market_status.update(decoded.market_status)
        self.duplicates += decoded.duplicates
        self.unwanted += decoded.unwanted
        self.metrics.ticks_in.inc(len(ticks))
        for handler in self.handlers:
            handler.on_frame(seq, ticks)

    def status(self) -> PipelineStatus:
        return PipelineStatus(
            frames=self.frames,
            malformed_frames=self.malformed_frames,
            frames_refused=self.refused_frames,
            journal_error=self.journal_error,
            duplicate_ticks_dropped=self.duplicates,
            unrequested_ticks_skipped=self.unwanted,
            market_status=dict(self.market_status),
            custom_handlers=[h.status() for h in self.custom_handlers],
        )
