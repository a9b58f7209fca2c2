"""The Parquet archive on S3-compatible object storage (TICKVAULT_ARCHIVE_URL): written by
tickvault's archive code to a real S3 server on loopback (moto's server mode), read back equal
to the database's rows, and guarding retention exactly as on disk: a day whose objects are
corrupt, missing or short is kept and reported, then archived again and dropped. The AWS
secret never reaches an output or a log line."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import psycopg
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from moto.server import ThreadedMotoServer

from core.ist import day_bounds
from store.archive import (
    MANIFEST,
    PART,
    archive_day,
    archive_finished_days,
    batches_manifest,
    database_manifest,
    day_path,
    file_manifest,
    read_archived_ticks,
)
from store.archive_location import archive_location
from store.editions import server_edition
from store.retention import RetentionResult, apply_retention
from store.tick_row import TICK_COLUMNS
from tests.lifecycle import KEYS, days_ago, insert_day, roll_up_bars, ticks_of_day
from tests.test_retention import archived_day_with_a_night_tick
from tickvault import notebook
from tickvault.cli import main

SECRET = "tickvault-test-secret-never-printed"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """One S3-compatible server on loopback for the module's tests, each in its own bucket."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_url(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A bucket of its own, reached through the AWS variables a user would set."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "tickvault-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    bucket = f"ticks-{uuid.uuid4().hex[:12]}"
    filesystem, _ = pafs.FileSystem.from_uri(f"s3://{bucket}?allow_bucket_creation=true")
    filesystem.create_dir(bucket)
    return f"s3://{bucket}/tickvault"


def _objects(url: str) -> list[str]:
    """Every object under the archive's root, as paths below it."""
    location = archive_location(url)
    infos = location.filesystem.get_file_info(pafs.FileSelector(location.base, recursive=True))
    return sorted(info.path[len(location.base) + 1 :] for info in infos if info.is_file)


def _object(url: str, day: date, name: str) -> str:
    return archive_location(url).path(day_path(day), name)


def _rows(url: str, day: date, key: str) -> list[tuple]:
    """The database's rows of one instrument and day, every archived column."""
    start, end = day_bounds(day)
    with psycopg.connect(url) as conn:
        return conn.execute(
            f"SELECT {', '.join(TICK_COLUMNS)} FROM ticks"
            " WHERE instrument_key = %s AND ts >= %s AND ts < %s ORDER BY ts, received_at",
            [key, start, end],
        ).fetchall()


def _retain(url: str, archive: str) -> RetentionResult:
    with psycopg.connect(url, autocommit=True) as conn:
        return apply_retention(conn, server_edition(conn), 7, 0, archive)


def test_the_archive_command_writes_to_object_storage_and_retention_drops_what_reads_back(
    db_url: str,
    s3_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("TICKVAULT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", db_url)
    monkeypatch.setenv("TICKVAULT_ARCHIVE_URL", s3_url)
    monkeypatch.setenv("TICKVAULT_TICKS_RETENTION_DAYS", "7")
    old, recent = days_ago(9), days_ago(2)
    rows = {day: insert_day(db_url, day, per_key=40) for day in (old, recent)}
    roll_up_bars(db_url, day_bounds(old)[0])
    with psycopg.connect(db_url) as conn:
        in_database = {day: database_manifest(conn, day) for day in rows}
    old_rows = {key: _rows(db_url, old, key) for key in KEYS}

    assert main(["archive", "--retention"]) == 0
    captured = capsys.readouterr()

    shown = f"{s3_url}/{day_path(old)}"
    assert f"{old}: written, {rows[old]} ticks in {shown}" in captured.out
    assert "1 tick chunks dropped" in captured.out
    assert ticks_of_day(db_url, old) == []
    assert len(ticks_of_day(db_url, recent)) == rows[recent]
    assert not (tmp_path / "data" / "archive").exists()  # nothing went to the local disk
    # The hive layout a Spark, Trino, DuckDB or Polars user points at: date=... directories.
    assert _objects(s3_url) == [
        f"{day_path(day)}/{name}" for day in sorted(rows) for name in (MANIFEST, PART)
    ]
    for day in rows:
        assert file_manifest(s3_url, day) == in_database[day]
    # Read back as tickvault's notebook helper reads it: the database's rows, every column.
    for key in KEYS:
        archived = read_archived_ticks(s3_url, key, None, day_bounds(old)[1])
        assert sorted(tuple(row.values()) for row in archived.to_pylist()) == old_rows[key]
    # And by pyarrow's dataset reader alone, partition column included.
    dataset = ds.dataset(f"{s3_url}/ticks", format="parquet", partitioning="hive")
    table = dataset.to_table(filter=ds.field("date") == str(old))
    assert batches_manifest(old, table.select(list(TICK_COLUMNS)).to_batches()) == in_database[old]
    # And through the notebook's one history, which finds the bucket in the same settings.
    counted = notebook.sql(
        "SELECT instrument_key, count(*) AS n FROM ticks GROUP BY 1 ORDER BY 1", old, recent
    )
    assert counted.values.tolist() == [[key, len(old_rows[key])] for key in sorted(KEYS)]
    assert SECRET not in captured.out + captured.err + caplog.text


def _corrupt(url: str, day: date) -> None:
    location = archive_location(url)
    path = _object(url, day, PART)
    with location.filesystem.open_input_stream(path) as source:
        data = bytearray(source.read())
    data[4 : len(data) - 8] = b"\xa5" * (len(data) - 12)  # keeps the PAR1 magic at each end
    with location.filesystem.open_output_stream(path) as sink:
        sink.write(bytes(data))


def _truncate(url: str, day: date) -> None:
    """An upload cut short: the first half of the object."""
    location = archive_location(url)
    path = _object(url, day, PART)
    with location.filesystem.open_input_stream(path) as source:
        data = source.read()
    with location.filesystem.open_output_stream(path) as sink:
        sink.write(data[: len(data) // 2])


def _delete_object(url: str, day: date) -> None:
    archive_location(url).filesystem.delete_file(_object(url, day, PART))


def _delete_manifest(url: str, day: date) -> None:
    """What a crash between the data file and the manifest leaves: a day not archived."""
    archive_location(url).filesystem.delete_file(_object(url, day, MANIFEST))


DAMAGES = {
    "corrupt object": (_corrupt, "cannot be read"),
    "short object": (_truncate, "cannot be read"),
    "missing object": (_delete_object, "Parquet file is missing"),
    "missing manifest": (_delete_manifest, "manifest"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_day_whose_objects_are_damaged_is_kept_reported_then_rearchived_and_dropped(
    db_url: str, s3_url: str, damage: str
) -> None:
    do_damage, reason = DAMAGES[damage]
    day = days_ago(12)
    rows = insert_day(db_url, day, per_key=30)
    roll_up_bars(db_url, day_bounds(day)[0])
    with psycopg.connect(db_url, autocommit=True) as conn:
        archive_day(conn, s3_url, day)
    do_damage(s3_url, day)

    kept = _retain(db_url, s3_url)
    still_there = len(ticks_of_day(db_url, day))
    with psycopg.connect(db_url, autocommit=True) as conn:
        rearchived = archive_finished_days(conn, s3_url)
        in_database = database_manifest(conn, day)
    dropped = _retain(db_url, s3_url)

    assert (kept.tick_chunks_dropped, kept.held_back_by) == (0, day)
    assert reason in kept.kept[day]
    assert still_there == rows
    assert [(a.day, a.action) for a in rearchived] == [(day, "rewritten")]
    assert _objects(s3_url) == [f"{day_path(day)}/{MANIFEST}", f"{day_path(day)}/{PART}"]
    assert file_manifest(s3_url, day) == in_database
    assert (dropped.tick_chunks_dropped, dropped.kept) == (1, {})
    assert ticks_of_day(db_url, day) == []


def test_a_bucket_out_of_reach_keeps_every_day_and_no_message_names_the_secret(
    db_url: str, s3_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The archive URL pointed at a bucket these credentials do not reach (gone, misnamed):
    retention keeps the day, and the archive command fails with one line."""
    day = days_ago(12)
    insert_day(db_url, day, per_key=10)
    roll_up_bars(db_url, day_bounds(day)[0])
    with psycopg.connect(db_url, autocommit=True) as conn:
        archive_day(conn, s3_url, day)
    elsewhere = s3_url.replace("s3://ticks-", "s3://gone-")

    kept = _retain(db_url, elsewhere)
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", db_url)
    monkeypatch.setenv("TICKVAULT_ARCHIVE_URL", elsewhere)
    code = main(["archive", "--date", day.isoformat()])
    captured = capsys.readouterr()

    assert (kept.tick_chunks_dropped, kept.held_back_by) == (0, day)
    assert "is missing" in kept.kept[day]
    assert code == 1
    assert captured.err.startswith("tickvault: ")
    assert f"cannot be written to {elsewhere}/{day_path(day)}" in captured.err
    assert SECRET not in kept.kept[day] + captured.out + captured.err


def test_a_partly_dropped_day_is_never_rewritten_while_its_objects_are_out_of_reach(
    db_url: str, s3_url: str
) -> None:
    """Once retention has dropped the night's chunk, the objects are the day's only whole
    copy: a manifest that cannot be read (the bucket out of reach) must not look like a day
    never archived, to be written again from what is left of it."""
    day = days_ago(12)
    rows, night_only = archived_day_with_a_night_tick(db_url, s3_url, day)
    with psycopg.connect(db_url, autocommit=True) as conn:
        whole = file_manifest(s3_url, day)
        first = apply_retention(conn, server_edition(conn), night_only, 0, s3_url)
        unreachable = archive_day(conn, s3_url.replace("s3://ticks-", "s3://gone-"), day)
        back = archive_day(conn, s3_url, day)

    assert first.tick_chunks_dropped == 1
    assert (unreachable.action, unreachable.row_count) == ("damaged", rows + 1)
    assert (back.action, back.row_count) == ("unchanged", rows + 1)
    assert file_manifest(s3_url, day) == whole
