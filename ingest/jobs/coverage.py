"""Records when the store was receiving: the spans of the feed's connections, in the database.

Each open socket of a connection has a `FrameSpan` (its first and last frame, kept by the
connection at the cost of one assignment a frame). Every few seconds the recorder writes the
spans that moved: a new one as a row of `coverage_spans`, a known one by moving its end
(store/coverage.py). A span whose socket has closed is written one last time and forgotten.
A database outage only delays the writes: the spans stay in memory and are written when it
answers again. On a new span, `on_new_span` is called (the service starts a backfill there).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from ingest.client import FrameSpan
from store.coverage import extend_span, open_span

log = logging.getLogger(__name__)

Spans = Callable[[], list[tuple[int, FrameSpan]]]
Connect = Callable[[], AbstractContextManager[psycopg.Connection]]


@dataclass
class _Recorded:
    connection: int
    span: FrameSpan
    row_id: int | None = None  # None until its row is written
    written_us: int = 0  # the end last written


class CoverageRecorder:
    """The spans of `spans()` (FeedClient.frame_spans) written every `interval_s` through
    `connect()`; `flush()` once more at a stop writes them up to the last frame."""

    def __init__(
        self,
        spans: Spans,
        connect: Connect,
        interval_s: float = 2.0,
        on_new_span: Callable[[], None] | None = None,
    ) -> None:
        self._spans = spans
        self._connect = connect
        self._interval_s = interval_s
        self._on_new_span = on_new_span
        self._known: dict[int, _Recorded] = {}  # by id() of the span, which it holds alive
        self._failing = False

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.flush()

    async def flush(self) -> None:
        """Write what moved since the last flush; forget spans of closed sockets once written."""
        current = {id(span): (index, span) for index, span in self._spans()}
        for key, (index, span) in current.items():
            self._known.setdefault(key, _Recorded(index, span))
        pending = [
            (record, record.span.first_us, record.span.last_us)
            for record in self._known.values()
            if record.row_id is None or record.span.last_us > record.written_us
        ]
        if not pending:
            return
        try:
            row_ids = await asyncio.to_thread(self._write, pending)
        except psycopg.Error as error:
            if not self._failing:
                log.warning("coverage spans not written, trying again: %s", str(error).strip())
            self._failing = True
            return
        self._failing = False
        opened = False
        for (record, _, last_us), row_id in zip(pending, row_ids, strict=True):
            opened = opened or record.row_id is None
            record.row_id, record.written_us = row_id, last_us
        for key in [key for key in self._known if key not in current]:
            if self._known[key].written_us == self._known[key].span.last_us:
                del self._known[key]
        if opened and self._on_new_span is not None:
            self._on_new_span()

    def _write(self, pending: list[tuple[_Recorded, int, int]]) -> list[int]:
        row_ids = []
        with self._connect() as conn:
            for record, first_us, last_us in pending:
                last = _instant(last_us)
                if record.row_id is None:
                    row_ids.append(open_span(conn, record.connection, _instant(first_us), last))
                else:
                    extend_span(conn, record.row_id, last)
                    row_ids.append(record.row_id)
        return row_ids


def _instant(epoch_us: int) -> datetime:
    return datetime.fromtimestamp(epoch_us / 1_000_000, UTC)
