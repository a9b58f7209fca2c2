"""Signals: what a custom handler concludes from ticks, emitted with one call, stored once.

A handler calls `emit_signal("volume_spike", 7.2, side="buy", ratio=9.1)` from its
`handle_tick`. The signal takes its time, symbol and origin from the tick being handled
(`CustomHandler` says which, through a context variable of the handler's own task), is
checked, and goes into the `SignalWriter`'s bounded queue: nothing else happens on the
feed's event loop. The writer's task batches the queue into the `signals` table with its own
pooled connection, and writes `signals.log` lines for the rows that were new.

Exactly once, with the journal: a signal's key is (journal id, frame seq of the causing tick,
handler, index among that handler's signals from that frame). With each batch the writer
records, in the same transaction, the seq up to which every handler has handled every tick
and every signal emitted from those is in the batch or before (`signal_progress`). The
journal keeps the frames after it (`Journal.hold`), and a restart gives the handlers the
frames after it again: the signals lost with the crash are emitted again, and the ones
already stored are refused by the key.

Bad signals (a NaN value, fields over `MAX_FIELDS_BYTES` or not JSON, a symbol the ingest
does not follow, an unknown side) are logged and counted, never raised into the handler:
`emit_signal` returns None for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import numbers
import re
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from psycopg_pool import ConnectionPool

from core.ist import IST
from ingest.backoff import Backoff
from ingest.journal import Journal
from ingest.status import SignalsStatus
from store.signals import SignalRow, insert_signals, record_progress
from store.tick_row import KEY, TS, Tick, to_datetime

log = logging.getLogger(__name__)

# How often the progress is written when no new signal goes with it. With no signal to store it
# only moves the journal's hold and where a restart gives the handlers frames again (the
# signals those emit a second time are refused by their keys), so it need not cost the ingest
# a transaction every batch: at 200 ms, with no custom handler at all, those were an eighth of
# the idle ingest's CPU (BENCHMARKS.md).
PROGRESS_ALONE_S = 2.0

# signals.log's logger (tickvault/logs.py): one JSON object per stored signal.
SIGNALS_LOGGER = "signals"
signals_log = logging.getLogger(SIGNALS_LOGGER)

MAX_NAME_CHARS = 64
MAX_FIELDS_BYTES = 4096  # a signal is a small record; the tick and the bars hold the data
SIDES = ("buy", "sell")
# One encoder, made once: json.dumps with options builds a new one per call (half an emit).
_FIELDS_JSON = json.JSONEncoder(allow_nan=False, ensure_ascii=False)
_good_names: set[str] = set()  # checked before: a handler emits the same few names
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class Origin:
    """Where the handler being run is: its name and writer, and the tick it handles.

    One per `CustomHandler`, updated before each tick; `n` counts the handler's signals from
    the current frame, so a replayed frame numbers them the same way.
    """

    __slots__ = ("handler", "n", "seq", "symbol", "tick", "writer")

    def __init__(self, handler: str, writer: SignalWriter | None) -> None:
        self.handler = handler
        self.writer = writer
        self.seq = -1
        self.n = 0
        self.tick: Tick = ()
        self.symbol = ""

    def at(self, seq: int, tick: Tick, symbol: str) -> None:
        if seq != self.seq:
            self.seq, self.n = seq, 0
        self.tick, self.symbol = tick, symbol


_origin: ContextVar[Origin | None] = ContextVar("tickvault_signal_origin", default=None)


def handling(origin: Origin) -> None:
    """Make `origin` the current task's (CustomHandler.run, once, in the handler's task)."""
    _origin.set(origin)


class Signal(NamedTuple):
    """One conclusion: the causing tick's time (aware, shown in IST), the symbol, what was
    concluded (`name`) and how much (`value`), a side when it has one, and free fields.
    A named tuple: a handler may emit thousands a second, and it is the cheapest record."""

    ts: datetime
    symbol: str
    name: str
    value: float
    side: str | None = None
    fields: dict[str, Any] | None = None

    def as_json(self, handler: str) -> str:
        """The signal as one signals.log line."""
        return json.dumps(
            {
                "ts": self.ts.astimezone(IST).isoformat(timespec="milliseconds"),
                "symbol": self.symbol,
                "name": self.name,
                "value": self.value,
                "side": self.side,
                "fields": self.fields or {},
                "handler": handler,
            },
            default=str,
        )


class BadSignal(ValueError):
    """A signal refused: the message names the culprit."""


def check_signal(name: object, value: object, side: object, fields: dict[str, Any]) -> str:
    """The fields as JSON text, or BadSignal naming what is wrong: what the table could not
    hold (NaN, a NUL character, a lone surrogate) or should not (a name or fields beyond
    their bounds)."""
    if name not in _good_names:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
            raise BadSignal(
                f"name must be a text of 1 to {MAX_NAME_CHARS} characters, got {name!r}"
            )
        _storable("name", name)
        if len(_good_names) < 10_000:  # a handler names few kinds of signal
            _good_names.add(name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BadSignal(f"value must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise BadSignal(f"value must be finite, got {value!r}")
    if side is not None and side not in SIDES:
        raise BadSignal(f"side must be one of {SIDES} or None, got {side!r}")
    if not fields:
        return "{}"
    try:
        text = _FIELDS_JSON.encode(fields)
    except (TypeError, ValueError) as error:
        raise BadSignal(
            f"fields must be JSON (finite numbers, text, lists, dicts): {error}"
        ) from None
    if len(text) > MAX_FIELDS_BYTES:
        raise BadSignal(f"fields take {len(text)} bytes as JSON, more than {MAX_FIELDS_BYTES}")
    if _JSON_NUL.search(text):  # JSON's escape of NUL, not an escaped backslash before u0000
        raise BadSignal("fields must not contain NUL characters")
    _storable("fields", text)
    return text


def _storable(what: str, text: str) -> None:
    """PostgreSQL's text and jsonb hold neither NUL nor a lone surrogate."""
    if "\x00" in text:
        raise BadSignal(f"{what} must not contain NUL characters")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise BadSignal(f"{what} must be valid Unicode: it holds a lone surrogate") from None


def emit_signal(
    name: str, value: float, *, side: str | None = None, symbol: str | None = None, **fields: Any
) -> Signal | None:
    """Emit a signal from inside a custom handler's `handle_tick`: of the tick's symbol (or
    `symbol`, an instrument the ingest follows), at the tick's time. Never blocks: it is
    queued for the signal writer. A bad one is logged and counted, and None is returned."""
    origin = _origin.get()
    if origin is None or origin.writer is None:
        raise RuntimeError(
            "emit_signal is for a custom handler's handle_tick in the ingest's process (a "
            "handler registered with register_handler); a notebook emits with "
            "tickvault.notebook.emit_signal"
        )
    writer = origin.writer
    try:
        fields_json = check_signal(name, value, side, fields)
        key = origin.tick[KEY] if symbol is None else writer.key_of(symbol)
    except BadSignal as error:
        writer.reject(origin, str(error))
        return None
    signal = Signal(
        to_datetime(origin.tick[TS]),
        origin.symbol if symbol is None else writer.symbol_of(key),
        name,
        float(value),
        side,
        fields,
    )
    writer.put(signal, key, origin, fields_json)
    origin.n += 1
    return signal


class SignalWriter:
    """The signals' own task: batches of the bounded queue to the table, with progress.

    `progress()` is the seq up to which every custom handler has handled every tick (the
    pipeline's `signals_complete_seq`); `key_of(symbol)` the followed instrument's key, from
    memory, or None; `symbol_of(key)` its trading symbol, what a signal is stored under
    whichever name the handler gave.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        journal: Journal,
        progress: Callable[[], int],
        key_of: Callable[[str], str | None],
        symbol_of: Callable[[str], str] = str,
        *,
        max_pending: int = 100_000,
        batch_ms: int = 200,
        retry_max_s: float = 5.0,
        progress_alone_s: float = PROGRESS_ALONE_S,
    ) -> None:
        self._pool = pool
        self._journal = journal
        self._progress = progress
        self._key_of = key_of
        self.symbol_of = symbol_of
        self._max_pending = max_pending
        self._batch_s = batch_ms / 1000
        self._queue: deque[tuple[Signal, SignalRow]] = deque()
        self._backoff = Backoff(initial=0.2, maximum=retry_max_s)
        self._stored_seq = -1
        self._progress_alone_s = progress_alone_s
        self._stored_at = -math.inf  # monotonic, of the last write
        self._wake = asyncio.Event()
        self._stopping = False
        self.emitted = 0
        self.stored = 0
        self.repeated = 0  # emitted again by a replay, already stored
        self.rejected = 0
        self.dropped = 0
        self.errors = 0
        self.last_error: str | None = None

    # --- the handlers' side (the event loop) ----------------------------------------------

    def key_of(self, symbol: str) -> str:
        key = self._key_of(symbol)
        if key is None:
            raise BadSignal(f"symbol {symbol!r} is not an instrument the ingest follows")
        return key

    def reject(self, origin: Origin, why: str) -> None:
        self.rejected += 1
        if self.rejected == 1 or self.rejected % 1000 == 0:
            log.warning(
                "signal refused from handler %s on a %s tick: %s (%d refused so far)",
                origin.handler,
                origin.symbol,
                why,
                self.rejected,
            )

    def put(self, signal: Signal, key: str, origin: Origin, fields_json: str) -> None:
        self.emitted += 1
        if len(self._queue) >= self._max_pending:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "signal queue full (%d): signal %s of %s from %s dropped (%d so far)",
                    self._max_pending,
                    signal.name,
                    signal.symbol,
                    origin.handler,
                    self.dropped,
                )
            return
        row = SignalRow(
            signal.ts,
            signal.symbol,
            key,
            signal.name,
            signal.value,
            signal.side,
            fields_json,
            origin.handler,
            self._journal.journal_id,
            origin.seq,
            origin.n,
        )
        self._queue.append((signal, row))
        if len(self._queue) >= 1000:
            self._wake.set()

    # --- the writer task ------------------------------------------------------------------

    async def run(self) -> None:
        """Write a batch every batch_ms (sooner when 1000 wait) until stop(), then once more
        (one attempt: what fails then is emitted again from the journal at the next start)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._batch_s)
            self._wake.clear()
            written = await self.flush()
            if self._stopping:
                return
            if not written:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._backoff.delay())

    def stop(self) -> None:
        """Ask run() to write what is queued and return (call once the handlers stopped)."""
        self._stopping = True
        self._wake.set()

    async def flush(self) -> bool:
        """Write what is queued and the progress it completes; False when the database
        failed (the batch stays queued, in front)."""
        # Both taken together, with no await between: every signal of the frames up to
        # `seq` was emitted before the handlers moved past them, so it is in `batch`.
        seq = self._progress()
        batch = list(self._queue)
        self._queue.clear()
        if not batch and not self._progress_due(seq):
            return True
        try:
            new = await asyncio.to_thread(self._write_and_log, batch, seq)
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as error:
            self._queue.extendleft(reversed(batch))
            self.errors += 1
            self.last_error = f"{type(error).__name__}: {str(error).strip()[:200]}"
            if self.errors == 1 or self.errors % 100 == 0:
                log.warning("signals not written, retrying: %s", self.last_error)
            return False
        self._backoff.reset()
        self._stored_seq = seq
        self._stored_at = time.monotonic()
        self._journal.hold(seq)
        self.stored += len(new)
        self.repeated += len(batch) - len(new)
        return True

    def _progress_due(self, seq: int) -> bool:
        """Whether progress with no signal to go with it is worth a transaction now: it has
        moved, and PROGRESS_ALONE_S have passed since the last write (or this is the last)."""
        if seq == self._stored_seq:
            return False
        return self._stopping or time.monotonic() - self._stored_at >= self._progress_alone_s

    def _write_and_log(
        self, batch: list[tuple[Signal, SignalRow]], seq: int
    ) -> set[tuple[str, int, str, int]]:
        """Write, then log the new rows to signals.log: in the writer's thread, so that a
        big batch's lines never hold up the feed's event loop."""
        new = self._write([row for _, row in batch], seq)
        if signals_log.isEnabledFor(logging.INFO):
            for signal, row in batch:
                if (row.journal_id, row.seq, row.handler, row.n) in new:
                    signals_log.info("%s", signal.as_json(row.handler))
        return new

    def _write(self, rows: list[SignalRow], seq: int) -> set[tuple[str, int, str, int]]:
        """One transaction: the rows and the progress they complete. A row the database
        refuses despite the checks fails the batch; then each row goes alone and the
        refused ones are logged and counted, so one cannot hold up the rest."""
        with self._pool.connection() as conn:
            try:
                with conn.transaction(), conn.cursor() as cur:
                    new = insert_signals(cur, rows)
                    record_progress(cur, self._journal.journal_id, seq)
                return new
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise
            except psycopg.Error:
                pass  # one row refused: find it below
            new = set()
            for row in rows:
                try:
                    with conn.transaction(), conn.cursor() as cur:
                        new |= insert_signals(cur, [row])
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    raise
                except psycopg.Error as error:
                    self.rejected += 1
                    log.error(
                        "the database refused signal %s of %s: %s", row.name, row.symbol, error
                    )
            with conn.transaction(), conn.cursor() as cur:
                record_progress(cur, self._journal.journal_id, seq)
            return new

    def status(self) -> SignalsStatus:
        return SignalsStatus(
            emitted=self.emitted,
            stored=self.stored,
            repeated=self.repeated,
            rejected=self.rejected,
            dropped=self.dropped,
            pending=len(self._queue),
            complete_seq=self._stored_seq,
            errors=self.errors,
            last_error=self.last_error,
        )
