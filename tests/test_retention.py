"""Retention on both editions: an old tick chunk goes only once every day it holds was read
back from the archive and matched the database; a day whose archive is missing, unreadable
or different, or whose rows changed since, is kept, reported and archived again by the next
archive run; readers beside it see no error; bars stay."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from api.db import session_conninfo
from core.ist import day_bounds
from store import retention
from store.archive import MANIFEST, PART, archive_day, archive_finished_days, day_directory
from store.bars import interval_bar_rows
from store.editions import Edition, server_edition
from store.instruments import default_sample_path, load_instruments
from store.migrations import migrate
from store.retention import RetentionResult, apply_retention
from store.ticks import recent_ticks_sql, tick_page
from tests import conftest
from tests.conftest import DbServer
from tests.lifecycle import KEYS, bars_of_day, days_ago, insert_day, roll_up_bars, ticks_of_day
from tests.test_compose import AppRole, app_role  # noqa: F401 (a fixture)


def _retain(url: str, archive: Path | None, ticks_days: int = 7) -> RetentionResult:
    with psycopg.connect(url, autocommit=True) as conn:
        return apply_retention(conn, server_edition(conn), ticks_days, 0, archive)


def _runs(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT chunks_dropped, held_back_by, kept FROM tick_retention_runs ORDER BY ran_at"
        ).fetchall()


def _corrupt_bytes(url: str, root: Path, day: date) -> None:
    part = day_directory(root, day) / PART
    data = bytearray(part.read_bytes())
    data[4 : len(data) - 8] = b"\xa5" * (len(data) - 12)  # keeps the PAR1 magic at each end
    part.write_bytes(bytes(data))


def _delete_parquet(url: str, root: Path, day: date) -> None:
    (day_directory(root, day) / PART).unlink()


def _delete_manifest(url: str, root: Path, day: date) -> None:
    (day_directory(root, day) / MANIFEST).unlink()


def _manifest_one_row_off(url: str, root: Path, day: date) -> None:
    path = day_directory(root, day) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["row_count"] += 1
    path.write_text(json.dumps(manifest))


def _empty_parquet(url: str, root: Path, day: date) -> None:
    (day_directory(root, day) / PART).write_bytes(b"")


def _update_a_price(url: str, root: Path, day: date) -> None:
    start, end = day_bounds(day)
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE ticks SET ltp = ltp + 0.05 WHERE instrument_key = %s AND ts >= %s AND ts < %s",
            [KEYS[0], start, end],
        )


def _insert_late(url: str, root: Path, day: date) -> None:
    late = day_bounds(day)[0] + timedelta(hours=11)
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO ticks (instrument_key, ts, ltp) VALUES (%s, %s, 2.0)", [KEYS[0], late]
        )


DAMAGES: dict[str, tuple[Callable[[str, Path, date], None], str]] = {
    "corrupt bytes": (_corrupt_bytes, "cannot be read"),
    "deleted Parquet": (_delete_parquet, "Parquet file is missing"),
    "deleted manifest": (_delete_manifest, "manifest"),
    "manifest row_count off by one": (_manifest_one_row_off, "manifest says"),
    "empty Parquet": (_empty_parquet, "cannot be read"),
    "price updated after archiving": (_update_a_price, "rows changed since it was archived"),
    "row inserted late": (_insert_late, "rows changed since it was archived"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_day_whose_archive_is_bad_is_kept_reported_then_rearchived_and_dropped(
    db_url: str, tmp_path: Path, damage: str
) -> None:
    do_damage, reason = DAMAGES[damage]
    day = days_ago(12)
    insert_day(db_url, day, per_key=40)
    roll_up_bars(db_url, day_bounds(day)[0])
    with psycopg.connect(db_url, autocommit=True) as conn:
        archive_day(conn, tmp_path, day)
    do_damage(db_url, tmp_path, day)
    in_database = ticks_of_day(db_url, day)

    kept = _retain(db_url, tmp_path)
    still_there = ticks_of_day(db_url, day)
    with psycopg.connect(db_url, autocommit=True) as conn:
        rearchived = archive_finished_days(conn, tmp_path)
    dropped = _retain(db_url, tmp_path)

    assert kept.tick_chunks_dropped == 0
    assert kept.held_back_by == day
    assert reason in kept.kept[day]
    assert still_there == in_database
    assert [(a.day, a.action) for a in rearchived] == [(day, "rewritten")]
    assert dropped.tick_chunks_dropped == 1
    assert (dropped.held_back_by, dropped.kept) == (None, {})
    assert ticks_of_day(db_url, day) == []
    runs = _runs(db_url)
    assert runs[0][:2] == (0, day)
    assert reason in runs[0][2][day.isoformat()]
    assert runs[1] == (1, None, {})
    # The archive now holds the database's rows as they were when dropped, new values too.
    with psycopg.connect(db_url, autocommit=True) as conn:
        again = archive_day(conn, tmp_path, day)
    assert (again.action, again.row_count) == ("unchanged", len(in_database))


def test_four_archived_days_three_damaged_only_the_sound_one_goes(
    db_url: str, tmp_path: Path
) -> None:
    """The review's reproduction: bars current as under a running ingest, four days
    archived, one Parquet overwritten, one deleted, one manifest a row off."""
    sound, corrupt, deleted, off = (days_ago(n) for n in (15, 14, 13, 12))
    rows = {day: insert_day(db_url, day, per_key=30) for day in (sound, corrupt, deleted, off)}
    roll_up_bars(db_url, day_bounds(sound)[0])
    with psycopg.connect(db_url, autocommit=True) as conn:
        for day in rows:
            archive_day(conn, tmp_path, day)
    _corrupt_bytes(db_url, tmp_path, corrupt)
    _delete_parquet(db_url, tmp_path, deleted)
    _manifest_one_row_off(db_url, tmp_path, off)

    first = _retain(db_url, tmp_path)
    left = {day: len(ticks_of_day(db_url, day)) for day in rows}
    with psycopg.connect(db_url, autocommit=True) as conn:
        unfit = dict(
            conn.execute("SELECT day, problem FROM tick_archive_days WHERE problem IS NOT NULL")
        )
        rearchived = archive_finished_days(conn, tmp_path)
    second = _retain(db_url, tmp_path)

    assert first.tick_chunks_dropped == 1
    assert first.held_back_by == corrupt
    assert sorted(first.kept) == [corrupt, deleted, off]  # each one reported, not only the first
    assert left == {sound: 0, corrupt: rows[corrupt], deleted: rows[deleted], off: rows[off]}
    assert sorted(unfit) == [corrupt, deleted, off]
    assert [(a.day, a.action) for a in rearchived] == [
        (corrupt, "rewritten"),
        (deleted, "rewritten"),
        (off, "rewritten"),
    ]
    assert (second.tick_chunks_dropped, second.kept) == (3, {})
    assert all(ticks_of_day(db_url, day) == [] for day in rows)


def test_retention_refuses_to_drop_a_day_not_archived(edition_db_url: str, tmp_path: Path) -> None:
    old, older = days_ago(15), days_ago(16)
    rows = {day: insert_day(edition_db_url, day, per_key=60) for day in (older, old)}
    roll_up_bars(edition_db_url, day_bounds(older)[0])
    bars = {day: bars_of_day(edition_db_url, day) for day in (older, old)}
    with psycopg.connect(edition_db_url, autocommit=True) as conn:
        archive_day(conn, tmp_path, older)
    held = _retain(edition_db_url, tmp_path)
    kept_back = len(ticks_of_day(edition_db_url, old))
    with psycopg.connect(edition_db_url, autocommit=True) as conn:
        archive_day(conn, tmp_path, old)
    freed = _retain(edition_db_url, tmp_path)

    # The UTC chunk of `older` went; the next holds `old`, which held it back.
    assert held.held_back_by == old
    assert held.kept == {old: "not archived yet"}
    assert held.tick_chunks_dropped == 1
    assert kept_back == rows[old]
    assert freed.held_back_by is None
    assert freed.tick_chunks_dropped == 1
    assert ticks_of_day(edition_db_url, old) == ticks_of_day(edition_db_url, older) == []
    assert {day: bars_of_day(edition_db_url, day) for day in bars} == bars
    assert all(bars.values())
    assert [run[:2] for run in _runs(edition_db_url)] == [(1, old), (1, None)]


def archived_day_with_a_night_tick(url: str, root: Path, day: date) -> tuple[int, int]:
    """`day`'s session and one tick at 02:00 IST, which lies in the UTC chunk before the
    session's, archived and with bars; (ticks of the day in the session, a tick retention
    in days that reaches the night's chunk only)."""
    rows = insert_day(url, day, per_key=20)
    night = day_bounds(day)[0] + timedelta(hours=2)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ticks (instrument_key, ts, ltp) VALUES (%s, %s, 3.0)", [KEYS[1], night]
        )
        archive_day(conn, root, day)
    roll_up_bars(url, night)
    night_chunk_end = datetime.combine(
        night.astimezone(UTC).date() + timedelta(days=1), datetime.min.time(), UTC
    )
    return rows, (datetime.now(UTC) - night_chunk_end).days


def test_a_day_split_across_chunks_is_compared_by_what_is_left_of_it(
    db_url: str, tmp_path: Path
) -> None:
    """The night's chunk goes first; when the session's goes, the rest of the day is
    compared with the archive's rows from there on, not the whole day."""
    day = days_ago(12)
    rows, night_only = archived_day_with_a_night_tick(db_url, tmp_path, day)
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = apply_retention(conn, Edition.APACHE, night_only, 0, tmp_path)
        after_first = len(ticks_of_day(db_url, day))
        second = _retain(db_url, tmp_path)
        verified = conn.execute(
            "SELECT verified_at IS NOT NULL FROM tick_archive_days WHERE day = %s", [day]
        ).fetchone()
        again = archive_day(conn, tmp_path, day)
    assert (first.tick_chunks_dropped, first.kept) == (1, {})
    assert after_first == rows
    assert (second.tick_chunks_dropped, second.kept) == (1, {})
    assert ticks_of_day(db_url, day) == []
    assert verified == (True,)
    assert (again.action, again.row_count) == ("unchanged", rows + 1)


def test_readers_beside_retention_see_no_error(db_url: str, tmp_path: Path) -> None:
    """The API's tick and bar queries, on sessions like the API's, run in threads while
    retention drops a dozen chunks: every query answers."""
    days = [days_ago(n) for n in range(20, 8, -1)]
    with psycopg.connect(db_url) as conn:
        load_instruments(conn, default_sample_path())
    for day in days:
        insert_day(db_url, day, per_key=30)
    roll_up_bars(db_url, day_bounds(days[0])[0])
    with psycopg.connect(db_url, autocommit=True) as conn:
        archive_finished_days(conn, tmp_path)
    stop = threading.Event()
    errors: list[BaseException] = []
    answered = [0]
    far = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))

    def read() -> None:
        with psycopg.connect(session_conninfo(db_url), autocommit=True) as conn:
            while not stop.is_set():
                try:
                    tick_page(conn, KEYS[0], *far, 50)
                    conn.execute(
                        recent_ticks_sql(start=False, end=False), {"key": KEYS[1], "limit": 50}
                    ).fetchall()
                    interval_bar_rows(conn, "1m", KEYS[2], *far)
                    answered[0] += 1
                except psycopg.Error as error:
                    errors.append(error)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    try:
        while answered[0] < 20 and not errors:
            stop.wait(0.05)
        result = _retain(db_url, tmp_path)
        seen = answered[0]
        while answered[0] < seen + 20 and not errors:
            stop.wait(0.05)
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert errors == []
    assert result.tick_chunks_dropped == len(days)
    assert result.kept == {}


def test_the_apps_role_runs_tick_retention(app_role: AppRole, tmp_path: Path) -> None:  # noqa: F811
    """The ingest in docker compose runs as the app's role, not the schema's owner: ticks
    still go (drop_tick_chunk runs as the owner), bar retention says it needs the owner."""
    day = days_ago(12)
    insert_day(app_role.owner_url, day, per_key=10)
    roll_up_bars(app_role.owner_url, day_bounds(day)[0])
    with psycopg.connect(app_role.app_url, autocommit=True) as conn:
        archive_day(conn, tmp_path, day)
        result = apply_retention(conn, Edition.APACHE, 7, 20, tmp_path)
    assert result.tick_chunks_dropped == 1
    assert ticks_of_day(app_role.owner_url, day) == []
    assert result.bars_skipped is not None
    assert "owner" in result.bars_skipped


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
        result = apply_retention(conn, Edition.APACHE, 7, bars_days=20, archive=None)
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
        apply_retention(conn, Edition.APACHE, ticks_days=2, bars_days=0, archive=None)


def test_community_has_no_tick_retention_job_and_policies_only_for_bars(
    community_server: DbServer, tmp_path: Path
) -> None:
    url = community_server.create_database()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT add_retention_policy('ticks', drop_after => INTERVAL '1 day')")
            first = apply_retention(conn, Edition.COMMUNITY, 9, 400, tmp_path)
            policies = conn.execute(
                "SELECT j.hypertable_name, j.config ->> 'drop_after'"
                " FROM timescaledb_information.jobs j WHERE j.proc_name = 'policy_retention'"
                " ORDER BY 1"
            ).fetchall()
            apply_retention(conn, Edition.COMMUNITY, 12, 0, tmp_path)
            no_bar_policies = conn.execute(
                "SELECT count(*) FROM timescaledb_information.jobs"
                " WHERE proc_name = 'policy_retention'"
            ).fetchone()
            tick_jobs = conn.execute(
                "SELECT count(*) FROM timescaledb_information.jobs"
                " WHERE proc_name IN ('tick_retention_job', 'policy_retention')"
                "  AND hypertable_name IS DISTINCT FROM 'ohlc_1m_live'"
                "  AND hypertable_name IS DISTINCT FROM 'ohlc_5m_live'"
            ).fetchone()
    finally:
        community_server.drop_database(url)
    assert first.scheduled_by.startswith("tickvault's daily schedule")
    # The native policy on ticks (age alone) is gone; the bars have theirs.
    assert policies == [("ohlc_1m_live", "400 days"), ("ohlc_5m_live", "400 days")]
    assert no_bar_policies == (0,)
    assert tick_jobs == (0,)


@pytest.mark.parametrize("edition", ["apache", "community"])
def test_migration_017_removes_the_community_job_from_an_existing_database(
    request: pytest.FixtureRequest, tmp_path: Path, edition: str
) -> None:
    """A database at 016 holding ticks, with 015's job configured (as `tickvault archive
    --retention` did on Community), comes out of 017 with no job, and retention goes on."""
    server: DbServer = request.getfixturevalue(f"{edition}_server")
    old_sql = tmp_path / "sql"
    old_sql.mkdir()
    for path in sorted((conftest.REPO / "sql").glob("0*.sql")):
        if path.name < "017":
            shutil.copy(path, old_sql / path.name)
    url = server.create_database(migrated=False)
    try:
        migrate(url, old_sql)
        day = days_ago(12)
        insert_day(url, day, per_key=10)
        if edition == "community":
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(
                    "SELECT add_job('tick_retention_job', '1 hour',"
                    ' config => \'{"drop_after": "7 days", "require_archived": true}\')'
                )
        applied = migrate(url)
        roll_up_bars(url, day_bounds(day)[0])
        with psycopg.connect(url, autocommit=True) as conn:
            archive_day(conn, tmp_path / "archive", day)
            jobs = conn.execute(
                "SELECT count(*) FROM timescaledb_information.jobs"
                " WHERE proc_name = 'tick_retention_job'"
            ).fetchone()
            result = apply_retention(conn, server_edition(conn), 7, 0, tmp_path / "archive")
    finally:
        server.drop_database(url)
    assert applied == [version for version in conftest.ALL_MIGRATIONS if version >= "017"]
    assert jobs == (0,)
    assert (result.tick_chunks_dropped, result.kept) == (1, {})


def test_a_chunk_in_use_is_left_for_the_next_run_and_its_user_never_fails(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader in a long transaction, then a writer with a late tick not yet committed: the
    one holds the chunk against the drop, the other against retention's SHARE lock. Retention
    gives up each time (kept, "locked by other sessions"), they go on; then it drops."""
    monkeypatch.setattr(retention, "DROP_RETRY_S", 0.01)
    day = days_ago(12)
    insert_day(db_url, day, per_key=20)
    roll_up_bars(db_url, day_bounds(day)[0])
    with psycopg.connect(db_url, autocommit=True) as conn:
        archive_day(conn, tmp_path, day)
    with psycopg.connect(session_conninfo(db_url)) as reader:
        before = reader.execute("SELECT count(*) FROM ticks").fetchone()
        read_busy = _retain(db_url, tmp_path)
        after = reader.execute("SELECT count(*) FROM ticks").fetchone()
    with psycopg.connect(db_url) as writer:
        late = day_bounds(day)[0] + timedelta(hours=14)
        writer.execute(
            "INSERT INTO ticks (instrument_key, ts, ltp) VALUES (%s, %s, 4.0)", [KEYS[2], late]
        )
        write_busy = _retain(db_url, tmp_path)
    changed = _retain(db_url, tmp_path)
    with psycopg.connect(db_url, autocommit=True) as conn:
        rearchived = archive_finished_days(conn, tmp_path)
    dropped = _retain(db_url, tmp_path)

    assert before == after
    for busy in (read_busy, write_busy):
        assert busy.tick_chunks_dropped == 0
        assert "locked by other sessions" in busy.kept[day]
    assert "rows changed since it was archived" in changed.kept[day]
    assert [(a.day, a.action) for a in rearchived] == [(day, "rewritten")]
    assert (dropped.tick_chunks_dropped, dropped.kept) == (1, {})
