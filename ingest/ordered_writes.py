"""The writer's batches in flight: written on two pooled connections at once, committed in
batch order.

Batch n+1's COPY runs while batch n commits, and its COMMIT waits until batch n's has
returned, so the ledger's highest committed seq never has an uncommitted batch below it
(recovery replays the journal after that seq). One COPY backend was a serial stage: the
database had a core it could not use through it. A batch whose predecessor did not commit
rolls back, and so does one in its predecessor's way; the writer (ingest/writer.py) then
writes it again, in order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg_pool import ConnectionPool

from ingest.journal import Journal
from ingest.metrics import IngestMetrics
from store.tick_row import Tick
from store.ticks import batch_committed, write_batch


@dataclass
class Batch:
    """Whole journal frames [first_seq, last_seq] and their ticks: one COPY, one ledger row."""

    batch_id: int
    first_seq: int
    last_seq: int
    rows: list[Tick] = field(default_factory=list)
    oldest_received_at: int | None = None
    attempts: int = 0


# Batches written at once, each on its own pooled connection, committed in order.
WRITER_CONNECTIONS = 2

# A fault switch for the exactly-once test of ordered commits: set to "1", the process kills
# itself (SIGKILL) once a batch has been COPYed and the batch before it has committed, at the
# moment between the two commits. Nothing sets it outside that test.
KILL_BETWEEN_COMMITS = "TICKVAULT_FAULT_KILL_BETWEEN_COMMITS"


class Turn:
    """A batch's place in the commit order: the batch after it commits only once this one
    has, and rolls back if this one did not (it is then written again, in order)."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._committed = False
        self.backend_pid: int | None = None  # of its connection, once it has one

    def finish(self, committed: bool) -> None:
        self._committed = committed
        self._done.set()

    def ended(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def committed(self) -> bool:
        """Blocks until the batch's write has ended either way (runs in a writer thread)."""
        self._done.wait()
        return self._committed


class OutOfTurn(Exception):
    """This batch rolled back to let the one before it commit first, or because it did not;
    written again right away, in order."""


# How often a batch waiting for the one before it checks that it is not in that one's way.
_TURN_CHECK_S = 0.1

# Whether this transaction is among the sessions that keep backend %s waiting, directly or
# through others waiting on it: pg_blocking_pids names only the first link of a chain.
_IN_THE_WAY = """
WITH RECURSIVE blocker(pid) AS (
    SELECT unnest(pg_blocking_pids(%s))
    UNION
    SELECT further FROM blocker, unnest(pg_blocking_pids(blocker.pid)) AS further
)
SELECT pg_backend_pid() IN (SELECT pid FROM blocker)
"""


def wait_for_turn(cur: psycopg.Cursor, previous: Turn) -> None:
    """Return once the batch before has committed; raise OutOfTurn if it did not, or if its
    COPY waits on a lock this transaction holds: the first rows of a new chunk make
    TimescaleDB create it under a lock held until commit, so a batch that reached a new
    chunk first would wait for the batch before while that one waits for it, forever (a
    wait the database cannot see as a deadlock: half of it is here). The wait may also run
    through a third session: a job asking for a strong lock on a chunk this batch wrote
    queues behind it, and the batch before queues behind that job."""
    while not previous.ended(_TURN_CHECK_S):
        pid = previous.backend_pid
        if pid is None:
            continue
        row = cur.execute(_IN_THE_WAY, [pid]).fetchone()
        if row and row[0]:
            raise OutOfTurn("in the way of the batch before it (a lock it waits on)")
    if not previous.committed():
        raise OutOfTurn("the batch before it did not commit")


class OrderedWrites:
    """The writes under way, of the writer's first pending batches, in their order: each one
    transaction on a pooled connection of its own, committing only after the one before."""

    def __init__(self, pool: ConnectionPool, journal: Journal, metrics: IngestMetrics) -> None:
        self._pool = pool
        self._journal = journal
        self._metrics = metrics
        self.connections = WRITER_CONNECTIONS
        self._under_way: deque[tuple[Turn, asyncio.Future[None]]] = deque()
        self._kill_between_commits = os.environ.get(KILL_BETWEEN_COMMITS) == "1"

    def __len__(self) -> int:
        return len(self._under_way)

    def top_up(self, pending: Sequence[Batch]) -> None:
        """Start writing the first `pending` batches not yet under way, as many as there are
        connections for."""
        while len(self._under_way) < min(len(pending), self.connections):
            self._start(pending[len(self._under_way)])

    def _start(self, batch: Batch) -> None:
        previous = self._under_way[-1][0] if self._under_way else None
        turn = Turn()
        write = asyncio.ensure_future(asyncio.to_thread(self._write, batch, previous, turn))
        self._under_way.append((turn, write))

    async def first_ended(self, unless: asyncio.Event) -> bool:
        """Wait until the first write ends (True) or `unless` is set first (False): a batch
        enqueued meanwhile should start on the idle connection rather than wait."""
        unless.clear()
        write = self._under_way[0][1]
        waiting = asyncio.ensure_future(unless.wait())
        try:
            await asyncio.wait((write, waiting), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
        return write.done()

    async def first(self) -> None:
        """Wait for the first write: it has committed once this returns, and is let go; it
        raises what the write raised (OutOfTurn, the database's errors)."""
        await self._under_way[0][1]
        self._under_way.popleft()

    async def settle(self) -> None:
        """Wait for every write under way to end (after a failure: none of them committed)."""
        writes = [write for _, write in self._under_way]
        self._under_way.clear()
        await asyncio.gather(*writes, return_exceptions=True)

    def _write(self, batch: Batch, previous: Turn | None, turn: Turn) -> None:
        """One transaction: COPY the rows and record the batch, then COMMIT once `previous`
        (the batch before it, if still being written) has committed (a worker thread).

        The turn says committed only once this transaction has ended cleanly, even where an
        earlier attempt had committed the batch: the writer takes a failed write to mean that
        none of the writes under way after it committed (settle), and writes them all again
        without asking the ledger, so the batch after this one must not commit then."""
        committed = False
        try:
            started = time.perf_counter()
            # Frames must be durable in the journal before the database says they are
            # committed: otherwise a power loss could hand their seqs out again.
            self._journal.sync()
            journal_id = self._journal.journal_id
            with self._pool.connection() as conn:  # commits on leaving, rolls back on a raise
                turn.backend_pid = conn.info.backend_pid
                with conn.cursor() as cur:
                    # After a failure, an earlier attempt may have committed, its answer lost.
                    done = batch.attempts > 0 and batch_committed(cur, journal_id, batch.batch_id)
                    if not done:
                        started += self._copy_in_turn(cur, journal_id, batch, previous)
            committed = True
            if not done:
                self._metrics.batch_seconds.observe(time.perf_counter() - started)
        finally:
            turn.finish(committed)

    def _copy_in_turn(
        self, cur: psycopg.Cursor, journal_id: str, batch: Batch, previous: Turn | None
    ) -> float:
        """COPY and record the batch, then wait for the batch before it to commit; returns
        the seconds waited, which are not this batch's write time."""
        write_batch(cur, journal_id, batch.batch_id, batch.first_seq, batch.last_seq, batch.rows)
        if previous is None:
            return 0.0
        waiting = time.perf_counter()
        wait_for_turn(cur, previous)
        if self._kill_between_commits:
            os.kill(os.getpid(), signal.SIGKILL)
        return time.perf_counter() - waiting
