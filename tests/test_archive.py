"""The Parquet archive: exactly the database's rows, past retention, read back by tickvault's
notebook helper and by DuckDB as a user outside tickvault would."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import duckdb
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.ist import day_bounds
from store.archive import (
    PART,
    ArchiveError,
    archive_day,
    database_manifest,
    day_directory,
    file_manifest,
)
from store.editions import Edition, server_edition
from store.instruments import default_sample_path, load_instruments
from store.retention import apply_retention
from tests.lifecycle import KEYS, bars_of_day, days_ago, insert_day, roll_up_bars, ticks_of_day
from tests.test_retention import archived_day_with_a_night_tick
from tickvault import notebook
from tickvault.cli import main


@pytest.fixture
def lifecycle_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The notebook helper reads the data directory and database from the environment."""
    monkeypatch.setenv("TICKVAULT_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data" / "archive"


def test_an_archived_day_survives_retention_and_reads_back(
    edition_db_url: str, lifecycle_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", edition_db_url)
    old, older, recent = days_ago(20), days_ago(21), days_ago(1)
    with psycopg.connect(edition_db_url) as conn:
        load_instruments(conn, default_sample_path())
    rows = {day: insert_day(edition_db_url, day) for day in (older, old, recent)}
    roll_up_bars(edition_db_url, day_bounds(older)[0])
    before = ticks_of_day(edition_db_url, old)
    bars_before = bars_of_day(edition_db_url, old)
    assert len(before) == rows[old]
    assert bars_before

    with psycopg.connect(edition_db_url, autocommit=True) as conn:
        in_database = database_manifest(conn, old)
        archived = [archive_day(conn, lifecycle_env, day) for day in (older, old)]
        edition = server_edition(conn)
        retention = apply_retention(conn, edition, 10, 0, lifecycle_env)

    assert [a.action for a in archived] == ["written", "written"]
    assert archived[1].row_count == in_database.row_count == rows[old]
    assert archived[1].checksum == in_database.checksum
    directory = lifecycle_env / "ticks" / f"date={old.isoformat()}"
    assert file_manifest(lifecycle_env, old) == in_database
    manifest = json.loads((directory / "_manifest.json").read_text())
    assert manifest["row_count"] == rows[old]
    assert manifest["checksum"] == in_database.checksum
    assert (
        pq.ParquetFile(directory / "part-0.parquet").metadata.row_group(0).column(0).compression
        == "ZSTD"
    )

    # Retention dropped both archived days, kept the recent one and every bar.
    assert retention.tick_chunks_dropped >= 2
    assert retention.held_back_by is None
    assert ticks_of_day(edition_db_url, old) == []
    assert len(ticks_of_day(edition_db_url, recent)) == rows[recent]
    assert bars_of_day(edition_db_url, old) == bars_before

    # The notebook helper reads the dropped day from the archive, the recent one from the
    # database, and a range over both from both.
    start, end = day_bounds(old)
    frame = notebook.read_ticks("INFY", start, end)
    expected = [row for row in before if row[0] == KEYS[0]]
    assert [ts.timestamp() for ts in frame.index] == [row[1].timestamp() for row in expected]
    assert frame["ltp"].tolist() == [row[2] for row in expected]
    assert str(frame.index.tz) == "Asia/Kolkata"
    both = notebook.read_ticks("INFY", day_bounds(older)[0], day_bounds(recent)[1])
    assert len(both) == 3 * rows[old] // len(KEYS)
    assert both.index.is_monotonic_increasing
    # Several instruments in one read (those the sample master has): each one's archived
    # ticks, labelled as asked.
    many = notebook.read_ticks(["INFY", "Nifty 50"], start, end)
    assert len(many) == 2 * rows[old] // len(KEYS)
    pd.testing.assert_frame_equal(many.xs("INFY", level="symbol"), frame, check_dtype=False)

    # DuckDB reads the archive by itself: hive partitions, UTC times, the same rows.
    glob = str(lifecycle_env / "ticks" / "*" / "*.parquet")
    duck = duckdb.connect()
    duck.execute("SET TimeZone = 'UTC'")
    counted = duck.execute(
        "SELECT date::varchar, count(*) FROM read_parquet(?, hive_partitioning = true)"
        " GROUP BY 1 ORDER BY 1",
        [glob],
    ).fetchall()
    assert counted == [(older.isoformat(), rows[older]), (old.isoformat(), rows[old])]
    read = duck.execute(
        "SELECT instrument_key, ts, ltp, ltq, vtt, oi, delta, received_at"
        " FROM read_parquet(?, hive_partitioning = true) WHERE date = ?"
        " ORDER BY instrument_key, ts, received_at",
        [glob, old.isoformat()],
    ).fetchall()
    assert [(r[0], r[1].timestamp(), *r[2:7], r[7].timestamp()) for r in read] == [
        (r[0], r[1].timestamp(), *r[2:7], r[7].timestamp()) for r in before
    ]


def test_archiving_again_is_a_no_op_until_the_rows_change(db_url: str, tmp_path: Path) -> None:
    day = days_ago(6)
    insert_day(db_url, day, per_key=50)
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = archive_day(conn, tmp_path, day)
        again = archive_day(conn, tmp_path, day)
        late = day_bounds(day)[0] + timedelta(hours=15)
        conn.execute(
            "INSERT INTO ticks (instrument_key, ts, ltp) VALUES (%s, %s, 1.5)", [KEYS[0], late]
        )
        changed = archive_day(conn, tmp_path, day)
        recorded = conn.execute(
            "SELECT row_count, checksum FROM tick_archive_days WHERE day = %s", [day]
        ).fetchone()
    assert (first.action, again.action, changed.action) == ("written", "unchanged", "rewritten")
    assert again.checksum == first.checksum != changed.checksum
    assert changed.row_count == first.row_count + 1
    assert recorded == (changed.row_count, changed.checksum)
    leftovers = [p.name for p in (tmp_path / "ticks").iterdir()]
    assert leftovers == [f"date={day.isoformat()}"]  # no staging or retired directory


def test_a_day_not_over_is_refused_and_an_empty_day_writes_nothing(
    db_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        with pytest.raises(ArchiveError, match="not over yet"):
            archive_day(conn, tmp_path, days_ago(0))
        empty = archive_day(conn, tmp_path, days_ago(3))
    assert empty.action == "empty"
    assert empty.row_count == 0
    assert not (tmp_path / "ticks").exists()


def test_the_archive_command_archives_finished_days_then_applies_retention(
    db_url: str, lifecycle_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", db_url)
    monkeypatch.setenv("TICKVAULT_TICKS_RETENTION_DAYS", "7")
    old, recent = days_ago(9), days_ago(2)
    rows = {day: insert_day(db_url, day, per_key=10) for day in (old, recent)}
    roll_up_bars(db_url, day_bounds(old)[0])

    assert main(["archive", "--retention"]) == 0
    out = capsys.readouterr().out
    assert f"{old}: written, {rows[old]} ticks" in out
    assert f"{recent}: written, {rows[recent]} ticks" in out
    assert "tick chunks dropped" in out
    assert ticks_of_day(db_url, old) == []
    assert len(ticks_of_day(db_url, recent)) == rows[recent]

    assert main(["archive", "--date", old.isoformat()]) == 0
    assert f"{old}: unchanged, {rows[old]} ticks" in capsys.readouterr().out
    assert main(["archive", "--date", days_ago(0).isoformat()]) == 1
    assert "not over yet" in capsys.readouterr().err


@pytest.mark.parametrize("broken", ["corrupt bytes", "empty file"])
def test_archiving_again_rewrites_a_day_whose_parquet_is_broken_though_recorded(
    db_url: str, tmp_path: Path, broken: str
) -> None:
    """The manifest and tick_archive_days still say archived: the files are read back."""
    day = days_ago(6)
    rows = insert_day(db_url, day, per_key=20)
    part = day_directory(tmp_path, day) / PART
    with psycopg.connect(db_url, autocommit=True) as conn:
        archive_day(conn, tmp_path, day)
        size = part.stat().st_size
        part.write_bytes(
            b"PAR1" + b"\x00" * (size - 8) + b"PAR1" if broken == "corrupt bytes" else b""
        )
        with pytest.raises((OSError, pa.ArrowException), match="Parquet"):
            pq.read_table(part)
        again = archive_day(conn, tmp_path, day)
        in_database = database_manifest(conn, day)
    assert (again.action, again.row_count) == ("rewritten", rows)
    assert file_manifest(tmp_path, day) == in_database


def test_the_archive_command_reports_a_kept_day_and_fixes_it_on_the_next_run(
    db_url: str, lifecycle_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", db_url)
    monkeypatch.setenv("TICKVAULT_TICKS_RETENTION_DAYS", "7")
    day = days_ago(9)
    rows = insert_day(db_url, day, per_key=10)
    roll_up_bars(db_url, day_bounds(day)[0])
    assert main(["archive"]) == 0
    (day_directory(lifecycle_env, day) / PART).unlink()
    capsys.readouterr()

    assert main(["archive", "--retention"]) == 0
    kept = capsys.readouterr().out
    assert main(["archive", "--retention"]) == 0
    fixed = capsys.readouterr().out

    assert "every finished day is archived already" in kept
    assert f"0 tick chunks dropped; held back by {day}; kept {day}: its archive is unfit" in kept
    assert f"{day}: rewritten, {rows} ticks" in fixed
    assert "1 tick chunks dropped" in fixed
    assert ticks_of_day(db_url, day) == []


def test_a_day_retention_began_to_drop_is_never_rewritten_from_what_is_left(
    db_url: str, tmp_path: Path
) -> None:
    """A tick at 02:00 IST lies in the UTC chunk before the day's session; once retention has
    dropped that chunk, the archive is the day's only whole copy: archiving the day again
    keeps it (even with its record lost), and reports it damaged when its file breaks."""
    day = days_ago(12)
    rows, night_only = archived_day_with_a_night_tick(db_url, tmp_path, day)
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = apply_retention(conn, Edition.APACHE, night_only, 0, tmp_path)
        conn.execute("DELETE FROM tick_archive_days WHERE day = %s", [day])
        kept = archive_day(conn, tmp_path, day)
        again = archive_day(conn, tmp_path, day)
        part = day_directory(tmp_path, day) / PART
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
        damaged = archive_day(conn, tmp_path, day)
        held = apply_retention(conn, Edition.APACHE, 7, 0, tmp_path)
    assert first.tick_chunks_dropped == 1
    assert (kept.action, kept.row_count) == ("unchanged", rows + 1)
    assert (again.action, again.row_count) == ("unchanged", rows + 1)
    assert damaged.action == "damaged"
    assert held.tick_chunks_dropped == 0
    assert "cannot be read" in held.kept[day]
    assert len(ticks_of_day(db_url, day)) == rows
