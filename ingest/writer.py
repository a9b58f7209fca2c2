"""The writer: ticks to the database in batches of binary COPY, exactly once.

Both receive every decoded frame synchronously from the pipeline as `(seq, ticks)`, where
`seq` is the frame's journal sequence number. They must stay cheap there: the writer only
appends to its current batch, and the database work happens in its own task.

Two connections write at once, committing in batch order (ingest/ordered_writes.py).

Through a database outage of any length the writer tries again at most `retry_max_s` apart,
and a stop during one does not wait for the database: what is not committed stays in the
journal, which the next start replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict
from operator import itemgetter
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ingest.backoff import Backoff
from ingest.journal import Journal
from ingest.metrics import IngestMetrics
from ingest.ordered_writes import Batch, OrderedWrites, OutOfTurn
from ingest.status import WriterStatus
from store.tick_row import KEY, RECEIVED_AT, Tick, to_unix_seconds

log = logging.getLogger(__name__)

_instrument_key = itemgetter(KEY)


class _Retries:
    """The writer's waits between database attempts: at most `maximum` apart however long
    the outage, so it writes within seconds of the database's return; cut short by a stop."""

    def __init__(self, maximum: float) -> None:
        self._backoff = Backoff(initial=0.2, maximum=maximum)
        self._stopped = asyncio.Event()

    async def wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), self._backoff.delay())

    def reset(self) -> None:
        self._backoff.reset()

    def stop(self) -> None:
        self._stopped.set()


def _say_left_in_journal(journal: Journal, committed_seq: int) -> None:
    """The one line of a stop that could not wait for the database."""
    log.warning(
        "stopping while the database is unavailable: %d journaled frames after seq %d are not "
        "in the database; they stay in the journal at %s and the next start writes them, "
        "each once",
        journal.last_seq - committed_seq,
        committed_seq,
        journal.directory,
    )


# Builds, from the database, the reader of journaled ticks after a seq that the catch-up
# writes: blocking, so it runs in a thread (Pipeline.journal_ticks with a seeded decoder).
CatchUpSource = Callable[[], Callable[[int], Iterator[tuple[int, list[Tick]]]]]


class TickDataHandler:
    """Persists ticks: a batch is cut at N rows or T ms, then COPYed in one transaction.

    Exactly-once: each batch covers whole journal frames [first_seq, last_seq] and is recorded
    in `ingest_batches` in the same transaction as its COPY. After a crash the service replays
    the journal after the highest committed `last_seq`; after an ambiguous failure (the
    connection died around COMMIT) the writer checks that table before writing again.

    Memory stays bounded through a database outage: past `queue_max_rows` the writer drops
    what it holds in memory and stops taking live ticks, because every one of them is in the
    journal. Once the database is back it re-decodes the journal from the last committed
    frame with a decoder seeded from the database, and switches back to live ticks at the
    exact frame where the journal ends.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        journal: Journal,
        *,
        batch_rows: int,
        batch_ms: int,
        queue_max_rows: int,
        metrics: IngestMetrics,
        catch_up_source: CatchUpSource,
        next_batch_id: int = 1,
        committed_seq: int = 0,
        retry_max_s: float = 5.0,
    ) -> None:
        self._journal = journal
        self._batch_rows = batch_rows
        self._batch_s = batch_ms / 1000
        self._queue_max_rows = queue_max_rows
        self._metrics = metrics
        self._catch_up_source = catch_up_source
        self._next_batch_id = next_batch_id
        self._current: Batch | None = None
        self._current_started = 0.0
        self._pending: deque[Batch] = deque()
        self._writes = OrderedWrites(pool, journal, metrics)  # of the first pending batches
        self._pending_rows = 0
        self._wake = asyncio.Event()
        self._enqueued = asyncio.Event()  # what a drain waiting on one write also wakes for
        self._stopping = False
        self._left_to_journal = False
        self._spilled = False
        self._journal_only_since: int | None = None
        self._db_available = True
        self._last_error: str | None = None
        # Between database retries, in _drain and _catch_up alike; reset by each commit.
        self._retry = _Retries(retry_max_s)
        self._started = time.monotonic()
        self.committed_seq = committed_seq
        self._instruments: set[str] = set()  # with committed rows: bounded by the master
        self.ticks_processed = 0
        self.rows_written = 0
        self.batches_written = 0
        self.spills = 0
        self.errors = 0

    # --- hot path ---------------------------------------------------------------------

    def on_frame(self, seq: int, ticks: list[Tick]) -> None:
        """Add a frame's ticks to the open batch; cut it when it is full."""
        self.ticks_processed += len(ticks)
        if self._spilled:
            return  # in the journal; the catch-up reads it from there
        batch = self._current
        if batch is None:
            batch = self._current = self._new_batch(seq)
            self._current_started = time.monotonic()
        self._add(batch, seq, ticks)
        # The open batch counts towards the memory bound: while the writer retries a batch
        # through an outage, nothing cuts this one on time.
        rows = len(batch.rows)
        if rows >= self._batch_rows or rows + self._pending_rows > self._queue_max_rows:
            self._cut()

    def _new_batch(self, seq: int) -> Batch:
        batch = Batch(self._next_batch_id, seq, seq)
        self._next_batch_id += 1
        return batch

    @staticmethod
    def _add(batch: Batch, seq: int, ticks: list[Tick]) -> None:
        batch.last_seq = seq
        if ticks:
            if batch.oldest_received_at is None:
                batch.oldest_received_at = ticks[0][RECEIVED_AT]
            batch.rows.extend(ticks)

    def _cut(self) -> None:
        batch, self._current = self._current, None
        if batch is not None:
            self._enqueue(batch)
            if self._pending_rows > self._queue_max_rows:
                self._spill()

    def _enqueue(self, batch: Batch) -> None:
        self._pending.append(batch)
        self._pending_rows += len(batch.rows)
        self._metrics.queue_depth.set(self._pending_rows)
        self._wake.set()
        self._enqueued.set()

    def _spill(self) -> None:
        """Drop the in-memory backlog (all of it is journaled) but the batches being written."""
        while len(self._pending) > max(1, len(self._writes)):
            dropped = self._pending.pop()
            self._pending_rows -= len(dropped.rows)
            if dropped.oldest_received_at is not None:
                self._journal_only_since = min(
                    self._journal_only_since or dropped.oldest_received_at,
                    dropped.oldest_received_at,
                )
        self._metrics.queue_depth.set(self._pending_rows)
        self._spilled = True
        self.spills += 1
        log.warning(
            "writer backlog passed TICKVAULT_QUEUE_MAX_ROWS=%d: holding ticks in the journal "
            "only until the database catches up",
            self._queue_max_rows,
        )

    # --- writer task --------------------------------------------------------------------

    async def run(self) -> None:
        """Write batches until stop() is called and everything is flushed."""
        while not self._left_to_journal:
            if self._pending:
                await self._drain()
                continue
            if self._spilled:
                await self._catch_up()
                continue
            if self._stopping and self._current is None:
                return
            # An open batch is cut batch_ms after its first frame, not after we went idle.
            wait = self._batch_s
            if self._current is not None:
                wait = max(0.0, self._current_started + self._batch_s - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            self._wake.clear()
            if self._current is not None and (
                self._stopping or time.monotonic() - self._current_started >= self._batch_s
            ):
                self._cut()

    async def _drain(self, keep: int = 0) -> bool:
        """Write pending batches in order, a few at once (OrderedWrites), until at most `keep`
        are left (their writes may be under way), retrying from the first uncommitted batch
        with backoff; False when a stop during an outage left them to the journal."""
        writes = self._writes
        while True:
            # Started before the check: the catch-up's one batch writes while it reads on.
            writes.top_up(self._pending)
            if len(self._pending) <= keep:
                return True
            batch = self._pending[0]
            if len(writes) < writes.connections and not await writes.first_ended(self._enqueued):
                continue  # a batch was cut meanwhile: it starts on the idle connection
            try:
                await writes.first()
            except OutOfTurn as why:
                await writes.settle()  # those after it wait for it: none committed
                log.info("batch %d written again after the one before it: %s", batch.batch_id, why)
                continue
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as error:
                # The writes after it roll back (each commits only after the one before).
                await writes.settle()
                batch.attempts += 1
                self._note_failure(error)
                if not await self._wait_to_retry():
                    return False
                continue
            self._retry.reset()
            self._committed(batch)

    async def _catch_up(self) -> None:
        """Write journaled frames after the last commit, then go back to live ticks."""
        try:
            ticks_after = await asyncio.to_thread(self._catch_up_source)
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as error:
            self._note_failure(error)
            await self._wait_to_retry()
            return
        after = self.committed_seq
        while True:
            # One pass reads the journal once, up to its end when the pass began; frames
            # that arrive meanwhile are left for the next pass.
            batch: Batch | None = None
            for seq, ticks in ticks_after(after):
                if batch is None:
                    batch = self._new_batch(seq)
                self._add(batch, seq, ticks)
                after = seq
                if len(batch.rows) >= self._batch_rows:
                    self._enqueue(batch)
                    batch = None
                    # Leave the last batch's write under way while the next one is read.
                    if not await self._drain(keep=self._writes.connections - 1):
                        return
            if batch is None and after == self._journal.last_seq:
                # Nothing new since this pass began, and no await since it checked: the next
                # live frame is exactly the next one to write.
                self._spilled = False
                self._journal_only_since = None
                log.info("writer caught up with the journal at seq %d", after)
                return
            if batch is not None:
                self._enqueue(batch)
            if not await self._drain():
                return

    async def _wait_to_retry(self) -> bool:
        """Wait the next retry delay; False once stopping: then what is not written is left
        to the journal (every frame is there) rather than waiting for the database."""
        if not self._stopping:
            await self._retry.wait()
        if not self._stopping:
            return True
        self._left_to_journal = True
        self._pending.clear()
        self._pending_rows = 0
        self._current = None
        self._metrics.queue_depth.set(0)
        _say_left_in_journal(self._journal, self.committed_seq)
        return False

    def _committed(self, batch: Batch) -> None:
        self._pending.popleft()
        self._pending_rows -= len(batch.rows)
        self._metrics.queue_depth.set(self._pending_rows)
        self.rows_written += len(batch.rows)
        self._instruments.update(map(_instrument_key, batch.rows))
        self.batches_written += 1
        self.committed_seq = batch.last_seq
        self._metrics.rows_written.inc(len(batch.rows))
        if batch.oldest_received_at is not None:
            self._metrics.commit_latency_seconds.observe(
                max(0.0, time.time() - to_unix_seconds(batch.oldest_received_at))
            )
        if not self._db_available:
            log.info("database is back: writing the backlog")
        self._db_available = True
        self._journal.mark_committed(batch.last_seq)

    def _note_failure(self, error: Exception) -> None:
        self.errors += 1
        self._metrics.writer_errors.inc()
        self._last_error = f"{type(error).__name__}: {str(error).strip()[:200]}"
        if self._db_available:
            log.warning("database write failed, retrying with backoff: %s", self._last_error)
        self._db_available = False

    async def stop(self) -> None:
        """Ask run() to flush the open batch and everything pending, then return (through an
        outage, after the attempt in flight, leaving the rest to the journal)."""
        self._stopping = True
        self._retry.stop()
        self._wake.set()

    # --- status -------------------------------------------------------------------------

    def oldest_unwritten_age_s(self) -> float:
        oldest = [b.oldest_received_at for b in self._pending if b.oldest_received_at]
        if self._current is not None and self._current.oldest_received_at:
            oldest.append(self._current.oldest_received_at)
        if self._journal_only_since is not None:
            oldest.append(self._journal_only_since)
        return max(0.0, time.time() - to_unix_seconds(min(oldest))) if oldest else 0.0

    @property
    def tick_count(self) -> int:
        """Ticks committed to the database since the start (the guide's name)."""
        return self.rows_written

    def get_stats(self) -> dict[str, Any]:
        """`status()` as a dict, as the Phase 2 guide reads it."""
        return asdict(self.status())

    def status(self) -> WriterStatus:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        current = len(self._current.rows) if self._current else 0
        return WriterStatus(
            ticks_processed=self.ticks_processed,
            symbols_tracked=len(self._instruments),
            batches=self.batches_written,
            rows_written=self.rows_written,
            rows_per_second=round(self.rows_written / elapsed, 1),
            queue_depth=self._pending_rows + current,
            oldest_unwritten_tick_age_s=round(self.oldest_unwritten_age_s(), 3),
            committed_seq=self.committed_seq,
            database_available=self._db_available,
            journal_only=self._spilled,
            spills=self.spills,
            errors=self.errors,
            last_error=self._last_error,
        )
