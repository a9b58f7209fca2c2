"""What the ingest must know from the database before it accepts a single frame.

After a crash or restart: the last journal sequence number whose batch committed (replay
starts after it), the next batch id, the last stored tick of every instrument ever subscribed,
which seeds the decoder so volume is not counted twice and a re-sent snapshot is not stored
twice, and the keys a restart subscribes again. The SQL is the store's (store.ticks,
store.subscriptions).

And whether the journal and the database belong together: the journal deletes frames once
they are committed, so a database that has not committed them (it was dropped and created
again, or is another one) cannot be given the frames it lacks. That is refused with
JournalMismatch, which a restart cannot fix: the old journal must be set aside.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from ingest.journal import Journal
from ingest.upstox.decoder import FeedDecoder
from store.subscriptions import resumable_keys
from store.tick_row import Tick
from store.ticks import committed_position, forming_bar_rows, newest_tick_rows

log = logging.getLogger(__name__)

SET_ASIDE_COMMAND = "tickvault journal set-aside"


class JournalMismatch(RuntimeError):
    """The journal holds frames of another database than the one asking."""


@dataclass(frozen=True)
class RecoveryState:
    committed_seq: int
    next_batch_id: int
    last_ticks: list[Tick]
    subscribed_keys: frozenset[str]
    database: str  # which database this is, in words (no password)
    forming_bars: list[tuple]  # the stored bars of each instrument's newest two minutes

    def decoder(self) -> FeedDecoder:
        """A decoder in the state of the last committed frame, so that a snapshot re-sent
        after a restart is known as a duplicate and `vtt` is never counted twice."""
        return _seeded_decoder(self.last_ticks)


def decoder_at_last_commit(conn: psycopg.Connection) -> FeedDecoder:
    """RecoveryState.decoder() without the rest of the state: what the writer's catch-up
    after a spill needs. The forming bars a start also reads aggregate every instrument's
    last two minutes of ticks, a second of the database's time at 100,000 ticks/s, and a
    spill comes when the database is already the slowest stage."""
    return _seeded_decoder(newest_tick_rows(conn))


def _seeded_decoder(last_ticks: list[Tick]) -> FeedDecoder:
    decoder = FeedDecoder()
    decoder.seed(last_ticks)
    return decoder


def load_recovery_state(conn: psycopg.Connection, journal_id: str) -> RecoveryState:
    committed_seq, last_batch = committed_position(conn, journal_id)
    return RecoveryState(
        committed_seq,
        last_batch + 1,
        newest_tick_rows(conn),
        resumable_keys(conn),
        database_identity(conn),
        forming_bar_rows(conn),
    )


def database_identity(conn: psycopg.Connection) -> str:
    """The database in words: its name and oid (a new oid when it is dropped and created
    again), its cluster's system identifier (new with every initdb) and where it listens."""
    row = conn.execute(
        "SELECT current_database(), oid FROM pg_database WHERE datname = current_database()"
    ).fetchone()
    name, oid = row if row else ("?", "?")
    try:
        with conn.transaction():
            system = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
    except psycopg.errors.InsufficientPrivilege:
        system = None  # a managed server may not tell
    cluster = f", cluster {system[0]}" if system else ""
    return f"database {name!r} (oid {oid}{cluster}) at {conn.info.host}:{conn.info.port}"


def check_journal(journal: Journal, state: RecoveryState) -> None:
    """Refuse a journal whose frames the database asking cannot be given exactly once
    (JournalMismatch, logged once); otherwise record that database as the journal's."""
    committed, first, last = state.committed_seq, journal.first_seq, journal.last_seq
    if first <= committed + 1 and committed <= last:
        journal.bind_database(state.database)
        return
    if committed > last:
        why = (
            f"{state.database} has committed this journal's frames up to seq {committed}, "
            f"but the journal ends at seq {last} (an older copy of the journal?)"
        )
    else:
        deleted_by = journal.database or "the database they were written to"
        why = (
            f"its frames 1..{first - 1} were deleted once {deleted_by} committed them, and "
            f"the database asking now, {state.database}, has "
            + (f"committed only up to seq {committed}" if committed else "none of them")
        )
    mismatch = JournalMismatch(
        f"the frame journal {journal.directory} (id {journal.journal_id}, frames up to seq "
        f"{last}) belongs to another database: {why}. Replaying it here would lose or repeat "
        f"ticks, so the ingest does not start. If this database is meant to go on without "
        f"that journal, set it aside with `{SET_ASIDE_COMMAND}` (it is moved beside, under "
        "a dated name, with any frames not yet written) and start again; otherwise point "
        "tickvault at the journal's database (TICKVAULT_DATABASE_URL)."
    )
    log.error("%s", mismatch)
    raise mismatch
