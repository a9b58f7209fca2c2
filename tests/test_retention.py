"""Retention on both editions: old tick chunks go only once archived, bars stay, and on
Community a TimescaleDB job carries the configured period."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from core.ist import day_bounds
from store.archive import archive_day
from store.editions import Edition, server_edition
from store.retention import apply_retention, tick_retention_job
from tests.conftest import DbServer
from tests.lifecycle import bars_of_day, days_ago, insert_day, roll_up_bars, ticks_of_day


def test_retention_refuses_to_drop_a_day_not_archived(edition_db_url: str, tmp_path: Path) -> None:
    old, older = days_ago(15), days_ago(16)
    rows = {day: insert_day(edition_db_url, day, per_key=60) for day in (older, old)}
    roll_up_bars(edition_db_url, day_bounds(older)[0])
    bars = {day: bars_of_day(edition_db_url, day) for day in (older, old)}
    with psycopg.connect(edition_db_url, autocommit=True) as conn:
        edition = server_edition(conn)
        archive_day(conn, tmp_path, older)
        held = apply_retention(conn, edition, ticks_days=7, bars_days=0)
        kept_back = len(ticks_of_day(edition_db_url, old))
        archive_day(conn, tmp_path, old)
        freed = apply_retention(conn, edition, ticks_days=7, bars_days=0)
        runs = conn.execute(
            "SELECT chunks_dropped, held_back_by FROM tick_retention_runs ORDER BY ran_at"
        ).fetchall()

    # The UTC chunk of `older` went; the next holds `old`, which held it back.
    assert held.held_back_by == old
    assert held.tick_chunks_dropped == 1
    assert kept_back == rows[old]
    assert freed.held_back_by is None
    assert freed.tick_chunks_dropped == 1
    assert ticks_of_day(edition_db_url, old) == ticks_of_day(edition_db_url, older) == []
    assert {day: bars_of_day(edition_db_url, day) for day in bars} == bars
    assert all(bars.values())
    assert runs[-1] == (freed.tick_chunks_dropped, None)
    assert runs[0][1] == old


def test_retention_refuses_a_day_whose_rows_changed_since_archived(
    db_url: str, tmp_path: Path
) -> None:
    day = days_ago(12)
    insert_day(db_url, day, per_key=20)
    roll_up_bars(db_url, day_bounds(day)[0])
    with psycopg.connect(db_url, autocommit=True) as conn:
        archive_day(conn, tmp_path, day)
        late = day_bounds(day)[0] + timedelta(hours=11)
        conn.execute("INSERT INTO ticks (instrument_key, ts, ltp) VALUES ('X|1', %s, 2.0)", [late])
        refused = apply_retention(conn, Edition.APACHE, ticks_days=7, bars_days=0)
        archive_day(conn, tmp_path, day)
        dropped = apply_retention(conn, Edition.APACHE, ticks_days=7, bars_days=0)
    assert refused.held_back_by == day
    assert refused.tick_chunks_dropped == 0
    assert dropped.held_back_by is None
    assert dropped.tick_chunks_dropped >= 1


def test_without_archiving_retention_drops_by_age_and_bars_go_after_their_own_period(
    db_url: str,
) -> None:
    old, recent = days_ago(40), days_ago(10)
    for day in (old, recent):
        insert_day(db_url, day, per_key=30)
    roll_up_bars(db_url, day_bounds(old)[0])
    # A backfilled minute on each day (a minute with no tick: 15:29 IST), kept like the bars.
    backfilled = {
        day: day_bounds(day)[0] + timedelta(hours=15, minutes=29) for day in (old, recent)
    }
    with psycopg.connect(db_url) as conn:
        for bucket in backfilled.values():
            conn.execute(
                "INSERT INTO ohlc_1m_backfill (instrument_key, bucket, open, high, low, close)"
                " VALUES ('NSE_EQ|INE002A01018', %s, 1, 1, 1, 1)",
                [bucket],
            )
    with psycopg.connect(db_url, autocommit=True) as conn:
        result = apply_retention(conn, Edition.APACHE, 7, bars_days=20, require_archived=False)
        left = [row[0] for row in conn.execute("SELECT bucket FROM ohlc_1m_backfill")]
    assert result.tick_chunks_dropped >= 2
    assert ticks_of_day(db_url, old) == ticks_of_day(db_url, recent) == []
    assert bars_of_day(db_url, old) == []  # past the bars' 20 days
    assert bars_of_day(db_url, recent) != []  # within them, though its ticks are gone
    assert (result.backfilled_minutes_deleted, left) == (1, [backfilled[recent]])


def test_retention_shorter_than_the_bars_refresh_window_is_refused(db_url: str) -> None:
    with (
        psycopg.connect(db_url, autocommit=True) as conn,
        pytest.raises(ValueError, match="at least 4 days"),
    ):
        apply_retention(conn, Edition.APACHE, ticks_days=2, bars_days=0)


def test_community_runs_retention_as_a_job_with_the_configured_period(
    community_server: DbServer,
) -> None:
    url = community_server.create_database()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT add_retention_policy('ticks', drop_after => INTERVAL '1 day')")
            first = apply_retention(conn, Edition.COMMUNITY, ticks_days=9, bars_days=400)
            job = tick_retention_job(conn)
            policies = conn.execute(
                "SELECT j.hypertable_name, j.config ->> 'drop_after'"
                " FROM timescaledb_information.jobs j WHERE j.proc_name = 'policy_retention'"
                " ORDER BY 1"
            ).fetchall()
            apply_retention(conn, Edition.COMMUNITY, ticks_days=12, bars_days=0)
            changed = tick_retention_job(conn)
            no_bar_policies = conn.execute(
                "SELECT count(*) FROM timescaledb_information.jobs"
                " WHERE proc_name = 'policy_retention'"
            ).fetchone()
            apply_retention(conn, Edition.COMMUNITY, ticks_days=0, bars_days=0)
            gone = tick_retention_job(conn)
    finally:
        community_server.drop_database(url)
    assert job is not None
    assert job[1] == {"drop_after": "9 days", "require_archived": True}
    assert first.scheduled_by == f"TimescaleDB job {job[0]}"
    # The native policy on ticks (age alone) is gone; the bars have theirs.
    assert policies == [("ohlc_1m_live", "400 days"), ("ohlc_5m_live", "400 days")]
    assert changed == (job[0], {"drop_after": "12 days", "require_archived": True})
    assert no_bar_policies == (0,)
    assert gone is None
