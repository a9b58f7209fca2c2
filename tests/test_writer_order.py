"""The writer's two connections commit in batch order: a batch whose predecessor failed rolls
back and is written again after it, and a batch in the way of its predecessor's lock steps
aside. Real TimescaleDB, real locks; the failures are made by holding a row lock and
terminating a backend, as an outage or an operator would."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from ingest.journal import Journal
from ingest.metrics import IngestMetrics
from ingest.ordered_writes import OutOfTurn, Turn, wait_for_turn
from ingest.writer import TickDataHandler
from store.tick_row import TICK_COLUMNS, Tick, from_datetime
from store.ticks import copy_ticks

ROWS_PER_BATCH = 5
_NOW = from_datetime(datetime.now(UTC))


def _frame_ticks(seq: int) -> list[Tick]:
    """One frame's ticks: ROWS_PER_BATCH rows told apart by their ltp, received now."""
    blanks = (None,) * (len(TICK_COLUMNS) - 4)
    return [
        ("NSE_EQ|TEST", _NOW, float(seq * 100 + i), *blanks, _NOW) for i in range(ROWS_PER_BATCH)
    ]


def _make_todays_chunk(url: str) -> None:
    """Write and delete one tick of today: the chunk stays, so that neither batch creates it
    (the batch creating a chunk holds a lock the other's COPY waits on until it commits)."""
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        copy_ticks(cur, _frame_ticks(0)[:1])
        cur.execute("DELETE FROM ticks")


def _ledger(url: str) -> list[tuple[int, int, int]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT batch_id, first_seq, last_seq FROM ingest_batches ORDER BY batch_id"
        ).fetchall()


def _backends(conn: psycopg.Connection, application: str) -> list[tuple[int, str, str | None]]:
    """(pid, state, wait_event_type) of the writer's connections."""
    return conn.execute(
        "SELECT pid, state, wait_event_type FROM pg_stat_activity WHERE application_name = %s",
        [application],
    ).fetchall()


def _poll(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "journal") as journal:
        yield journal


def test_a_failed_batch_lets_no_later_batch_commit_and_each_is_written_once(
    edition_db_url: str, journal: Journal
) -> None:
    """Batch 1 is held on a row lock while batch 2 COPYs and waits for it; batch 1's backend is
    then terminated. Batch 2 must not commit with batch 1 missing below it; once the lock is
    let go both are written, in order, each once. Batch 2's write time is its own COPY and
    COMMIT, not its wait for batch 1."""
    application = "tickvault-test-writer"
    _make_todays_chunk(edition_db_url)
    seqs = [journal.append(b"frame", time.time_ns() // 1000) for _ in range(2)]
    metrics = IngestMetrics()
    with (
        ConnectionPool(
            edition_db_url,
            min_size=2,
            max_size=4,
            kwargs={"application_name": application},
            open=True,
        ) as pool,
        psycopg.connect(edition_db_url) as blocker,
        psycopg.connect(edition_db_url, autocommit=True) as watcher,
    ):
        # Batch 1's ledger row conflicts with this uncommitted one: its INSERT waits.
        blocker.execute(
            "INSERT INTO ingest_batches (journal_id, batch_id, first_seq, last_seq, row_count)"
            " VALUES (%s, 1, 0, 0, 0)",
            [journal.journal_id],
        )
        writer = TickDataHandler(
            pool,
            journal,
            batch_rows=ROWS_PER_BATCH,
            batch_ms=60_000,
            queue_max_rows=1_000,
            metrics=metrics,
            catch_up_source=lambda: pytest.fail("nothing was spilled"),
            retry_max_s=0.5,
        )

        def both_waiting() -> bool:
            states = _backends(watcher, application)
            locked = [pid for pid, _, wait in states if wait == "Lock"]
            in_turn = [pid for pid, state, _ in states if state.startswith("idle in transaction")]
            return len(locked) == 1 and len(in_turn) == 1

        async def scenario() -> None:
            task = asyncio.create_task(writer.run())
            for seq in seqs:
                writer.on_frame(seq, _frame_ticks(seq))
            await asyncio.to_thread(_poll, both_waiting, "batch 2 to wait for batch 1")
            (pid,) = [p for p, _, wait in _backends(watcher, application) if wait == "Lock"]
            watcher.execute("SELECT pg_terminate_backend(%s)", [pid])
            # Counted once both writes have ended: batch 2's, waiting on batch 1, too.
            await asyncio.to_thread(_poll, lambda: writer.status().errors == 1, "the failure")
            assert _ledger(edition_db_url) == [], "batch 2 committed without batch 1"
            assert writer.status().committed_seq == 0
            # The retry waits on the lock again, batch 2 again behind it; then let it go.
            await asyncio.to_thread(_poll, both_waiting, "the retry")
            await asyncio.sleep(0.6)
            blocker.rollback()
            await asyncio.to_thread(
                _poll, lambda: writer.status().committed_seq == seqs[-1], "both commits"
            )
            await writer.stop()
            await asyncio.wait_for(task, 20)

        asyncio.run(scenario())

    assert _ledger(edition_db_url) == [(1, seqs[0], seqs[0]), (2, seqs[1], seqs[1])]
    with psycopg.connect(edition_db_url) as conn:
        stored = conn.execute("SELECT ltp FROM ticks ORDER BY ltp").fetchall()
    assert [ltp for (ltp,) in stored] == sorted(
        tick[2] for seq in seqs for tick in _frame_ticks(seq)
    )
    status = writer.status()
    assert (status.batches, status.rows_written, status.queue_depth) == (2, 10, 0)
    assert status.database_available
    sample = metrics.registry.get_sample_value
    assert sample("tickvault_batch_write_seconds_count") == 2
    # Batch 1 waited on the lock for 0.6 s and more; batch 2's own write is far quicker.
    assert sample("tickvault_batch_write_seconds_bucket", {"le": "0.5"}) == 1


def _in_thread(url: str, statement: str) -> tuple[threading.Thread, list[int]]:
    """Run `statement` on a connection of its own in a thread (it is expected to wait on a
    lock); its backend pid is put in the list once known."""
    pid: list[int] = []
    ready = threading.Event()

    def run() -> None:
        with psycopg.connect(url) as conn:
            pid.append(conn.info.backend_pid)
            ready.set()
            conn.execute(statement)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    return thread, pid


def _waits_on_lock(watcher: psycopg.Connection, pid: int) -> bool:
    row = watcher.execute(
        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]
    ).fetchone()
    return row is not None and row[0] == "Lock"


@pytest.mark.parametrize("through_a_third_session", [False, True])
def test_a_batch_in_the_way_of_the_one_before_it_steps_aside(
    db_url: str, through_a_third_session: bool
) -> None:
    """The batch before waits on a lock this batch's transaction holds, directly (a row both
    insert) or through a third session queued between them (a job asking for a strong lock
    on a table this batch wrote): waiting for it to commit would wait forever, so this batch
    rolls back instead of waiting."""
    with (
        psycopg.connect(db_url, autocommit=True) as watcher,
        psycopg.connect(db_url) as this_batch,
    ):
        watcher.execute("CREATE TABLE lock_probe (id int PRIMARY KEY)")
        this_batch.execute("INSERT INTO lock_probe VALUES (1)")
        threads = []
        if through_a_third_session:
            job, job_pid = _in_thread(db_url, "LOCK TABLE lock_probe IN ACCESS EXCLUSIVE MODE")
            threads.append(job)
            _poll(lambda: _waits_on_lock(watcher, job_pid[0]), "the job to queue")
            before, before_pid = _in_thread(db_url, "INSERT INTO lock_probe VALUES (2)")
        else:
            before, before_pid = _in_thread(db_url, "INSERT INTO lock_probe VALUES (1)")
        threads.append(before)
        _poll(lambda: _waits_on_lock(watcher, before_pid[0]), "the batch before to wait")
        previous = Turn()
        previous.backend_pid = before_pid[0]
        # Were the wait not seen, the batch before would be taken as committed after 5 s.
        taken_as_committed = threading.Timer(5, previous.finish, [True])
        taken_as_committed.start()
        try:
            with this_batch.cursor() as cur, pytest.raises(OutOfTurn, match="in the way"):
                wait_for_turn(cur, previous)
        finally:
            taken_as_committed.cancel()
            this_batch.rollback()
            for thread in threads:
                thread.join(10)
