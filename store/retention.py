"""Retention: old tick chunks go once archived; bars stay (or go after their own period).

One SQL function decides what may go, `drop_old_tick_chunks` (sql/015_archive.sql): the
tick chunks older than the retention period, oldest first, stopping at the first that holds
a day not archived (or whose rows changed since). The editions differ only in who calls it:

- Community: a TimescaleDB job (`add_job` of `tick_retention_job`, hourly, the period in its
  config), so retention goes on while tickvault is stopped. Not `add_retention_policy`: a
  native policy drops by age alone and cannot ask whether a day is archived, so one found on
  `ticks` is removed. Bars are continuous aggregates and have native retention policies.
- Apache: no job scheduler under this license, so `apply_retention` (tickvault's daily
  schedule, or `tickvault archive`) calls the function itself, and `drop_chunks` on the
  bars' materialized stores.

Either way `apply_retention` also applies it at once and says what happened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime

import psycopg

from store.bars import LIVE_VIEWS
from store.editions import Edition

# The bars' refresh (continuous aggregate policies on Community) reaches 3 days back: ticks
# must outlive it, or minutes would be refreshed from ticks that are gone.
MIN_RETENTION_DAYS = 4
_JOB_SCHEDULE = "1 hour"
# What holds the bars built from ticks: the `_live` continuous aggregates on Community (the
# `ohlc_1m`/`ohlc_5m` views over them add the backfilled minutes), the materialized stores on
# Apache. Backfilled minutes are rows of a plain table, deleted by age alongside.
_BAR_RELATIONS = {
    Edition.COMMUNITY: tuple(LIVE_VIEWS.values()),
    Edition.APACHE: ("ohlc_1m_store", "ohlc_5m_store"),
}


@dataclass(frozen=True)
class RetentionResult:
    """What one retention run did. A retention of 0 days keeps that data forever."""

    edition: str
    ticks_retention_days: int
    tick_chunks_dropped: int
    ticks_dropped_before: datetime | None  # the cutoff: every tick before it is gone
    held_back_by: date | None  # the oldest day not archived, where retention stopped
    bars_retention_days: int
    bar_chunks_dropped: int
    backfilled_minutes_deleted: int
    scheduled_by: str  # who runs it between calls


def check_retention_days(days: int, what: str) -> None:
    if days and days < MIN_RETENTION_DAYS:
        raise ValueError(
            f"{what} must be 0 (forever) or at least {MIN_RETENTION_DAYS} days: the "
            "bars are refreshed from the last 3 days of ticks"
        )


def apply_retention(
    conn: psycopg.Connection,
    edition: Edition,
    ticks_days: int,
    bars_days: int,
    require_archived: bool = True,
) -> RetentionResult:
    """Configure retention as given and apply it now, on an autocommit connection owned by
    the schema's owner (policies and jobs are DDL)."""
    check_retention_days(ticks_days, "tick retention")
    check_retention_days(bars_days, "bar retention")
    scheduled_by = "tickvault's daily schedule"
    if edition is Edition.COMMUNITY:
        job = _configure_community(conn, ticks_days, bars_days, require_archived)
        scheduled_by = f"TimescaleDB job {job}" if job is not None else "nothing (kept forever)"
    dropped, cutoff, held = 0, None, None
    if ticks_days:
        row = conn.execute(
            "SELECT chunks_dropped, cutoff, held_back_by"
            " FROM drop_old_tick_chunks(make_interval(days => %s), %s)",
            [ticks_days, require_archived],
        ).fetchone()
        assert row is not None
        dropped, cutoff, held = row
    bar_chunks = backfilled = 0
    if bars_days:
        for relation in _BAR_RELATIONS[edition]:
            bar_chunks += len(
                conn.execute(
                    "SELECT drop_chunks(%s::regclass, older_than => make_interval(days => %s))",
                    [relation, bars_days],
                ).fetchall()
            )
        backfilled = conn.execute(
            "DELETE FROM ohlc_1m_backfill WHERE bucket < now() - make_interval(days => %s)",
            [bars_days],
        ).rowcount
    return RetentionResult(
        edition=edition.value,
        ticks_retention_days=ticks_days,
        tick_chunks_dropped=dropped,
        ticks_dropped_before=cutoff,
        held_back_by=held,
        bars_retention_days=bars_days,
        bar_chunks_dropped=bar_chunks,
        backfilled_minutes_deleted=backfilled,
        scheduled_by=scheduled_by,
    )


def tick_retention_job(conn: psycopg.Connection) -> tuple[int, dict] | None:
    """(job id, config) of the Community job that drops archived tick chunks, if any."""
    row = conn.execute(
        "SELECT job_id, config FROM timescaledb_information.jobs"
        " WHERE proc_name = 'tick_retention_job' AND proc_schema = current_schema()"
    ).fetchone()
    return (row[0], row[1]) if row else None


def _configure_community(
    conn: psycopg.Connection, ticks_days: int, bars_days: int, require_archived: bool
) -> int | None:
    """The job and policies as the settings say; the job's id (None: ticks kept forever)."""
    conn.execute("SELECT remove_retention_policy('ticks', if_exists => true)")
    for relation in _BAR_RELATIONS[Edition.COMMUNITY]:
        conn.execute("SELECT remove_retention_policy(%s::regclass, if_exists => true)", [relation])
        if bars_days:
            conn.execute(
                "SELECT add_retention_policy(%s::regclass,"
                " drop_after => make_interval(days => %s))",
                [relation, bars_days],
            )
    existing = tick_retention_job(conn)
    if not ticks_days:
        if existing is not None:
            conn.execute("SELECT delete_job(%s)", [existing[0]])
        return None
    config = json.dumps({"drop_after": f"{ticks_days} days", "require_archived": require_archived})
    if existing is not None:
        conn.execute("SELECT alter_job(%s, config => %s::jsonb)", [existing[0], config])
        return existing[0]
    row = conn.execute(
        "SELECT add_job('tick_retention_job', %s::interval, config => %s::jsonb)",
        [_JOB_SCHEDULE, config],
    ).fetchone()
    assert row is not None
    return row[0]
