"""Retention: a tick chunk goes only once every day it holds was read back from the archive
and found to hold exactly the database's rows; bars stay (or go after their own period).

Tickvault runs it on both editions (the ingest's daily schedule after its archive step, and
`tickvault archive --retention`): the proof is in the Parquet files, which no function or
job inside the database can read (sql/017_retention_reads_archive.sql). Chunks past the
retention period go oldest first, each in a transaction of its own:

1. Outside any transaction, each IST day the chunk holds ticks of is read back
   (store/archive.py): its manifest and its files must hold exactly the rows recorded in
   `tick_archive_days`. This is the slow part, so no lock is held meanwhile.
2. Then the chunks holding those days are locked IN SHARE MODE (no writes; readers go on),
   and the database's figures of each day (what is left of it, when its first part is gone)
   are computed and compared with the files'.
3. Only if every day agrees, the chunk is locked ACCESS EXCLUSIVE and dropped
   (`drop_tick_chunk`, as the schema's owner), its days marked verified and the run's cutoff
   moved, all in that transaction.

A day found not archived, missing, unreadable or different is kept, reported
(RetentionResult.kept, `tick_retention_runs.kept`) and marked unfit for the next archive run
to write again. Drops stop at the first chunk kept, so every tick before the cutoff is gone
and every later one is still in the database (the notebook helper reads across that line);
the chunks after it are still read back, to report every day in need at once.

Beside readers: the session's lock_timeout is a fifth of the server's deadlock_timeout, and
nothing slow runs while retention holds a lock a reader could wait for. When the drop and a
reader wait for each other, retention's wait ends first (a reader's deadlock check would only
run after deadlock_timeout): it rolls back to before its exclusive lock, retries a little
later, and leaves the chunk to the next run if it stays busy. No reader sees a deadlock.

Bars: on Community continuous aggregates with native retention policies (DDL, so only the
schema's owner configures them); on Apache `drop_chunks` on the materialized stores. A
native retention policy on `ticks` drops by age alone, so one found is removed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from core.config import check_retention_days
from core.ist import day_bounds, ist_day
from store.archive import (
    ArchiveRoot,
    Manifest,
    archive_problem,
    archived_part,
    database_manifest,
    mark_unfit,
    recorded_manifest,
    ticks_dropped_before,
)
from store.archive_location import ArchiveLocation, archive_location
from store.bars import LIVE_VIEWS
from store.editions import Edition

# A chunk busy with readers is tried this many times, a growing pause apart, per run.
DROP_ATTEMPTS = 5
DROP_RETRY_S = 0.2
# What holds the bars built from ticks: the `_live` continuous aggregates on Community (the
# `ohlc_1m`/`ohlc_5m` views over them add the backfilled minutes), the materialized stores on
# Apache. Backfilled minutes are rows of a plain table, deleted by age alongside.
_BAR_RELATIONS = {
    Edition.COMMUNITY: tuple(LIVE_VIEWS.values()),
    Edition.APACHE: ("ohlc_1m_store", "ohlc_5m_store"),
}
SCHEDULED_BY = {
    Edition.COMMUNITY: "tickvault's daily schedule (bars: TimescaleDB retention policies)",
    Edition.APACHE: "tickvault's daily schedule",
}


@dataclass(frozen=True)
class RetentionResult:
    """What one retention run did. A retention of 0 days keeps that data forever."""

    edition: str
    ticks_retention_days: int
    tick_chunks_dropped: int
    ticks_dropped_before: datetime | None  # the cutoff: every tick before it is gone
    held_back_by: date | None  # the oldest day kept, where this run's drops stopped
    kept: Mapping[date, str]  # each day retention found it may not drop yet, and why
    bars_retention_days: int
    bar_chunks_dropped: int
    backfilled_minutes_deleted: int
    scheduled_by: str  # who runs it between calls
    bars_skipped: str | None = None  # why bar retention was not applied by this role


@dataclass(frozen=True)
class _Chunk:
    relation: str  # the chunk's qualified name, as the server quotes it
    start: datetime
    end: datetime


def apply_retention(
    conn: psycopg.Connection,
    edition: Edition,
    ticks_days: int,
    bars_days: int,
    archive: ArchiveRoot | None,
) -> RetentionResult:
    """Apply retention now, on an autocommit connection.

    `archive` is the archive's root (a directory or an s3:// URL): a tick chunk goes only once
    its days read back from there match the database. None drops tick chunks by age alone
    (archiving switched off).
    Bar retention needs the schema's owner (policies are DDL, drop_chunks the owner's); under
    another role it is skipped and `bars_skipped` says so, while ticks still go.
    """
    check_retention_days(ticks_days, "tick retention")
    check_retention_days(bars_days, "bar retention")
    dropped, kept, held = 0, {}, None
    if ticks_days:
        dropped, held, kept = _TickRetention(conn, archive, ticks_days).run()
    bar_chunks = backfilled = 0
    skipped = None
    try:
        bar_chunks, backfilled = _apply_bar_retention(conn, edition, bars_days)
    except psycopg.errors.InsufficientPrivilege:
        skipped = (
            "bar retention needs the schema's owner: run `tickvault archive --retention` as"
            " the owner"
        )
    return RetentionResult(
        edition=edition.value,
        ticks_retention_days=ticks_days,
        tick_chunks_dropped=dropped,
        ticks_dropped_before=ticks_dropped_before(conn),
        held_back_by=held,
        kept=kept,
        bars_retention_days=bars_days,
        bar_chunks_dropped=bar_chunks,
        backfilled_minutes_deleted=backfilled,
        scheduled_by=SCHEDULED_BY[edition],
        bars_skipped=skipped,
    )


def _apply_bar_retention(conn: psycopg.Connection, edition: Edition, days: int) -> tuple[int, int]:
    """(bar chunks dropped, backfilled minutes deleted); on Community the policies set."""
    if edition is Edition.COMMUNITY:
        conn.execute("SELECT remove_retention_policy('ticks', if_exists => true)")
    chunks = 0
    for relation in _BAR_RELATIONS[edition]:
        if edition is Edition.COMMUNITY:
            conn.execute(
                "SELECT remove_retention_policy(%s::regclass, if_exists => true)", [relation]
            )
            if days:
                conn.execute(
                    "SELECT add_retention_policy(%s::regclass,"
                    " drop_after => make_interval(days => %s))",
                    [relation, days],
                )
        if days:
            chunks += len(
                conn.execute(
                    "SELECT drop_chunks(%s::regclass, older_than => make_interval(days => %s))",
                    [relation, days],
                ).fetchall()
            )
    if not days:
        return chunks, 0
    backfilled = conn.execute(
        "DELETE FROM ohlc_1m_backfill WHERE bucket < now() - make_interval(days => %s)",
        [days],
    ).rowcount
    return chunks, backfilled


class _TickRetention:
    """One run over the tick chunks past the retention period (the module's docstring)."""

    def __init__(self, conn: psycopg.Connection, archive: ArchiveRoot | None, days: int) -> None:
        self.conn = conn
        self.archive: ArchiveLocation | None = (
            archive_location(archive) if archive is not None else None
        )
        row = conn.execute(
            "SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'"
        ).fetchone()
        self.lock_timeout_ms = max(1, (row[0] if row else 1000) // 5)
        run = conn.execute(
            "INSERT INTO tick_retention_runs (keep, require_archived, chunks_dropped)"
            " VALUES (make_interval(days => %s), %s, 0) RETURNING ran_at",
            [days, archive is not None],
        ).fetchone()
        assert run is not None
        self.ran_at = run[0]
        self.chunks = [
            _Chunk(*row)
            for row in conn.execute(
                "SELECT chunk::text, range_start, range_end"
                " FROM tick_chunks_past(make_interval(days => %s))",
                [days],
            )
        ]

    def run(self) -> tuple[int, date | None, dict[date, str]]:
        """(chunks dropped, the day that stopped the drops, every day kept and why)."""
        dropped, held = 0, None
        kept: dict[date, str] = {}
        present_from = self.chunks[0].start if self.chunks else None
        for chunk in self.chunks:
            assert present_from is not None
            if held is not None and self.archive is None:
                break
            expected, problems = self._read_back(chunk, present_from)
            if not problems and held is None:
                problems = self._drop(chunk, expected, present_from)
            elif not problems:  # past the chunk that stopped the drops: for the report
                problems = self._differences(chunk, expected, present_from)
            kept.update(problems)
            if problems and held is None:
                held = min(problems)
            if held is None:
                dropped += 1
                present_from = chunk.end
        self.conn.execute(
            "UPDATE tick_retention_runs SET held_back_by = %s, kept = %s WHERE ran_at = %s",
            [held, Jsonb({day.isoformat(): why for day, why in sorted(kept.items())}), self.ran_at],
        )
        return dropped, held, kept

    def _days_with_ticks(self, chunk: _Chunk) -> list[date]:
        """The IST days the chunk holds ticks of (a day spans two UTC chunks)."""
        days = []
        day = ist_day(chunk.start)
        while day <= ist_day(chunk.end - timedelta(microseconds=1)):
            start, end = day_bounds(day)
            if self.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM ticks WHERE ts >= %s AND ts < %s)",
                [max(start, chunk.start), min(end, chunk.end)],
            ).fetchone() == (True,):
                days.append(day)
            day += timedelta(days=1)
        return days

    def _read_back(
        self, chunk: _Chunk, present_from: datetime
    ) -> tuple[dict[date, Manifest], dict[date, str]]:
        """Each day of the chunk as its archive holds it (from `present_from` on, the part of
        it the database still has), or why it cannot stand for the database. Unfit archives
        are marked for the next archive run. Nothing to read when archiving is off."""
        if self.archive is None:
            return {}, {}
        expected: dict[date, Manifest] = {}
        problems: dict[date, str] = {}
        for day in self._days_with_ticks(chunk):
            recorded = recorded_manifest(self.conn, day)
            if recorded is None:
                problems[day] = "not archived yet"
                continue
            problem = archive_problem(self.archive, day, recorded)
            if problem is None and day_bounds(day)[0] < present_from:
                part = archived_part(self.archive, day, present_from)
                if isinstance(part, str):
                    problem = part
                else:
                    recorded = part  # compared with what is left of the day
            if problem is not None:
                problems[day] = f"its archive is unfit: {problem}"
                mark_unfit(self.conn, day, problems[day])
            else:
                expected[day] = recorded
        return expected, problems

    def _lock_days(self, chunk: _Chunk, days: list[date]) -> None:
        """No writes to the chunks holding `chunk` and what is left of `days` until commit
        (readers go on: SHARE conflicts with writers and vacuum only)."""
        until = max([chunk.end, *(day_bounds(day)[1] for day in days)])
        relations = [
            sql.SQL(row[0])  # a regclass's text: qualified and quoted by the server
            for row in self.conn.execute(
                "SELECT format('%%I.%%I', chunk_schema, chunk_name)::regclass::text"
                " FROM timescaledb_information.chunks"
                " WHERE hypertable_schema = current_schema() AND hypertable_name = 'ticks'"
                "  AND range_start < %s AND range_end > %s ORDER BY range_start",
                [until, chunk.start],
            )
        ]
        self.conn.execute(
            sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.SQL(", ").join(relations))
        )

    def _retrying(self, locked: Callable[[], None]) -> bool:
        """Run `locked` (which takes a lock first) in a savepoint until it gets its locks
        within lock_timeout; when it does not, roll back to the savepoint, so that whoever
        queued behind its request goes on, and try again a little later. False when the
        locks stayed taken for every attempt."""
        for attempt in range(DROP_ATTEMPTS):
            try:
                with self.conn.transaction():
                    locked()
                return True
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
                time.sleep(DROP_RETRY_S * (attempt + 1))
        return False

    def _differences(
        self, chunk: _Chunk, expected: dict[date, Manifest], present_from: datetime
    ) -> dict[date, str]:
        """The days of the chunk whose rows in the database are not the archive's, now."""
        problems = {}
        for day in self._days_with_ticks(chunk):
            archived = expected.get(day)
            if archived is None:
                problems[day] = "ticks of it arrived while retention read its archive"
                continue
            held = database_manifest(self.conn, day, present_from)
            if held != archived:
                problems[day] = (
                    f"its rows changed since it was archived: the database holds"
                    f" {held.row_count} of them, the archive {archived.row_count}"
                    " (or other values)"
                )
                mark_unfit(self.conn, day, problems[day])
        return problems

    def _drop(
        self, chunk: _Chunk, expected: dict[date, Manifest], present_from: datetime
    ) -> dict[date, str]:
        """Drop the chunk if the database's rows of its days are the archive's; else the days
        that keep it, and why."""
        days = list(expected) if self.archive is not None else []
        with self.conn.transaction():
            self.conn.execute(
                "SELECT set_config('lock_timeout', %s, true)", [f"{self.lock_timeout_ms}ms"]
            )
            if not self._retrying(lambda: self._lock_days(chunk, days)):
                return self._busy(chunk)
            if self.archive is not None:
                problems = self._differences(chunk, expected, present_from)
                if problems:
                    return problems
            if not self._retrying(lambda: self._drop_locked(chunk)):
                return self._busy(chunk)
            self.conn.execute(
                "UPDATE tick_archive_days SET verified_at = now() WHERE day = ANY(%s)", [days]
            )
            self.conn.execute(
                "UPDATE tick_retention_runs SET cutoff = %s,"
                " chunks_dropped = chunks_dropped + 1 WHERE ran_at = %s",
                [chunk.end, self.ran_at],
            )
        return {}

    def _drop_locked(self, chunk: _Chunk) -> None:
        """Lock the chunk against readers too, then drop it: nothing slow in between."""
        self.conn.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.SQL(chunk.relation))
        )
        self.conn.execute("SELECT drop_tick_chunk(%s::regclass)", [chunk.relation])

    def _busy(self, chunk: _Chunk) -> dict[date, str]:
        reason = "its chunk stayed locked by other sessions; the next run tries again"
        return {day: reason for day in self._days_with_ticks(chunk)} or {
            ist_day(chunk.start): reason
        }
