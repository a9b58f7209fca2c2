"""Each finished IST trading day of ticks as Parquet, proven to hold the database's rows.

Layout, readable by DuckDB, Spark or pandas without tickvault (hive partitioning, plain
types: `instrument_key` a string, times `timestamp[us, tz=UTC]`, prices float64, quantities
int64):

    <root>/ticks/date=YYYY-MM-DD/part-0.parquet   zstd, sorted by instrument_key then ts
    <root>/ticks/date=YYYY-MM-DD/_manifest.json   {"day", "row_count", "checksum", ...}

(readers skip files starting with `_`). `<root>` is a directory, or S3-compatible object
storage (`s3://bucket/prefix`, TICKVAULT_ARCHIVE_URL): both are a pyarrow filesystem
(store/archive_location.py), written and read back by the same code. On disk a day is written
into a temporary directory beside its final place, read back, compared with the database (row
count and checksum), and only then renamed into place and recorded in `tick_archive_days`: a
crash leaves either nothing or a whole, verified day. Object storage has no rename, so there
the manifest is what makes a day archived: an old manifest is deleted first, then the data
file is written in place, read back and compared, and the manifest is written last; a day
without a manifest is not archived (retention keeps it, the next archive run writes it), and
files that did not verify are deleted. Archiving a day again is a no-op while the files hold
the database's rows (read back each time, not taken from the manifest), and replaces the day
when they do not: rows changed in the database, or files damaged, deleted or edited. Retention
(store/retention.py) reads a day back the same way before it drops the day's ticks, and marks
a day it finds unfit (`tick_archive_days.problem`) for the next archive run to write again.

The row count and checksum compared are store/archive_figures.py's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from core.ist import IST_ZONE, day_bounds, ist_today
from store.archive_figures import (
    BATCH_ROWS,
    DAY_WHERE,
    SCHEMA,
    Manifest,
    batches_manifest,
    database_manifest,
)
from store.archive_location import ArchiveLocation, archive_location
from store.tick_row import TICK_COLUMNS, TICK_PG_TYPES

MANIFEST = "_manifest.json"
PART = "part-0.parquet"

# Times leave the database as Unix microseconds: Arrow takes integers without a datetime each.
_SELECT_COLUMNS = ", ".join(
    f"(extract(epoch FROM {name}) * 1000000)::bigint" if pg_type == "timestamptz" else name
    for name, pg_type in zip(TICK_COLUMNS, TICK_PG_TYPES, strict=True)
)
# What reading a damaged or missing Parquet file raises (object storage's errors are OSErrors).
_READ_ERRORS = (OSError, pa.ArrowException)
# An archive's root: a directory, an `s3://bucket/prefix` URL, or either already opened.
ArchiveRoot = ArchiveLocation | Path | str


class ArchiveError(RuntimeError):
    """The archive cannot be written or does not match the database: nothing was recorded."""


@dataclass(frozen=True)
class ArchivedDay:
    """The outcome of `archive_day`: `action` is "written", "rewritten" (the database's rows
    had changed, or the files no longer held them), "unchanged" (already archived with these
    rows), "empty" (no ticks) or "damaged" (files broken after retention began to drop the
    day: nothing left to rebuild them from)."""

    day: date
    action: str
    row_count: int
    checksum: str | None
    directory: str | None  # where the day is: a local path or an s3:// URL


def day_path(day: date) -> str:
    """The day's directory under the archive's root: hive-style, `date` its partition column."""
    return f"ticks/date={day.isoformat()}"


def day_directory(root: Path, day: date) -> Path:
    """The day's directory in an archive on the local disk."""
    return root / day_path(day)


def parquet_files(location: ArchiveLocation, directory: str) -> list[str]:
    """The Parquet files directly in `directory`, by name (none if it does not exist)."""
    selector = pafs.FileSelector(directory, allow_not_found=True)
    return sorted(
        info.path
        for info in location.filesystem.get_file_info(selector)
        if info.is_file and info.base_name.endswith(".parquet")
    )


def _files_batches(
    location: ArchiveLocation, directory: str, since: datetime | None
) -> Iterator[pa.RecordBatch]:
    """The Parquet files in `directory`, batch by batch (its ticks from `since` on, if
    given). Raises what pyarrow raises for a file it cannot read."""
    start = pa.scalar(since, type=SCHEMA.field("ts").type) if since is not None else None
    for path in parquet_files(location, directory):
        with location.filesystem.open_input_file(path) as source:
            for batch in pq.ParquetFile(source).iter_batches(batch_size=BATCH_ROWS):
                if start is not None:
                    batch = batch.filter(pc.greater_equal(batch.column("ts"), start))
                yield batch


def _files_manifest(
    location: ArchiveLocation, directory: str, day: date, since: datetime | None = None
) -> Manifest:
    return batches_manifest(day, _files_batches(location, directory, since))


def file_manifest(root: ArchiveRoot, day: date, since: datetime | None = None) -> Manifest:
    """The day's figures as its archived Parquet files hold them (its ticks from `since` on,
    if given): what a user checks the archive against the database with."""
    location = archive_location(root)
    return _files_manifest(location, location.path(day_path(day)), day, since)


def _day_batches(conn: psycopg.Connection, day: date) -> Iterator[pa.RecordBatch]:
    """The day's ticks sorted by instrument and time, as Arrow batches, from a server-side
    cursor so that a day of tens of millions of rows never sits in memory."""
    start, end = day_bounds(day)
    sql = f"SELECT {_SELECT_COLUMNS}{DAY_WHERE} ORDER BY instrument_key, ts, received_at"
    with conn.transaction(), conn.cursor(name=f"archive_{uuid.uuid4().hex}") as cur:
        cur.execute(sql, {"start": start, "end": end})
        while rows := cur.fetchmany(BATCH_ROWS):
            columns = zip(*rows, strict=True)
            arrays = [
                pa.array(values, type=pa.int64()).cast(field.type)
                if pa.types.is_timestamp(field.type)
                else pa.array(values, type=field.type)
                for values, field in zip(columns, SCHEMA, strict=True)
            ]
            yield pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def _write_day(
    conn: psycopg.Connection, day: date, location: ArchiveLocation, directory: str
) -> None:
    location.filesystem.create_dir(directory)
    with (
        location.filesystem.open_output_stream(f"{directory}/{PART}") as sink,
        pq.ParquetWriter(sink, SCHEMA, compression="zstd") as writer,
    ):
        for batch in _day_batches(conn, day):
            writer.write_batch(batch)


def _write_manifest(location: ArchiveLocation, directory: str, manifest: Manifest) -> None:
    text = json.dumps(
        {
            "day": manifest.day.isoformat(),
            "row_count": manifest.row_count,
            "checksum": manifest.checksum,
            "columns": SCHEMA.names,
        },
        indent=1,
    )
    with location.filesystem.open_output_stream(f"{directory}/{MANIFEST}") as sink:
        sink.write(text.encode())


def _remove_day(location: ArchiveLocation, directory: str) -> None:
    """Delete a day's files, its manifest first: no reader sees it archived meanwhile."""
    filesystem = location.filesystem
    if filesystem.get_file_info(f"{directory}/{MANIFEST}").is_file:
        filesystem.delete_file(f"{directory}/{MANIFEST}")
    if filesystem.get_file_info(directory).type is not pafs.FileType.NotFound:
        filesystem.delete_dir(directory)


def _fsync_tree(directory: Path) -> None:
    for path in [*directory.iterdir(), directory]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _record(conn: psycopg.Connection, manifest: Manifest, partly_dropped: bool = False) -> None:
    """Record the day as archived and sound. `partly_dropped` keeps it marked as a day
    retention has begun to drop (verified_at), so it is never written again from the rest
    the database holds."""
    conn.execute(
        "INSERT INTO tick_archive_days (day, row_count, checksum, directory, verified_at)"
        " VALUES (%(day)s, %(rows)s, %(checksum)s, %(directory)s,"
        "  CASE WHEN %(partly)s THEN now() END)"
        " ON CONFLICT (day) DO UPDATE SET"
        " row_count = EXCLUDED.row_count, checksum = EXCLUDED.checksum,"
        " directory = EXCLUDED.directory, archived_at = now(), problem = NULL,"
        " verified_at = CASE WHEN %(partly)s"
        "  THEN coalesce(tick_archive_days.verified_at, now()) END",
        {
            "day": manifest.day,
            "rows": manifest.row_count,
            "checksum": manifest.checksum,
            "directory": day_path(manifest.day),
            "partly": partly_dropped,
        },
    )


def _problem(conn: psycopg.Connection, day: date) -> str | None:
    row = conn.execute("SELECT problem FROM tick_archive_days WHERE day = %s", [day]).fetchone()
    return row[0] if row else None


def recorded_manifest(conn: psycopg.Connection, day: date) -> Manifest | None:
    row = conn.execute(
        "SELECT row_count, checksum FROM tick_archive_days WHERE day = %s", [day]
    ).fetchone()
    return Manifest(day, row[0], row[1]) if row else None


def read_manifest(location: ArchiveLocation, directory: str) -> Manifest | None:
    """The manifest of the day in `directory`; None if it is missing or unreadable."""
    try:
        with location.filesystem.open_input_stream(f"{directory}/{MANIFEST}") as source:
            data = json.loads(source.read())
        return Manifest(date.fromisoformat(data["day"]), data["row_count"], data["checksum"])
    except (OSError, pa.ArrowException, ValueError, KeyError, TypeError):
        return None


def archive_problem(root: ArchiveRoot, day: date, expected: Manifest) -> str | None:
    """Why the archive of `day` under `root` does not hold exactly `expected`'s rows, read
    back from its files (None: its manifest and its files both match `expected`)."""
    location = archive_location(root)
    directory = location.path(day_path(day))
    try:
        return _files_problem(location, directory, day, expected)
    except _READ_ERRORS as error:  # object storage unreachable, access denied
        return f"its archive {location.name(directory)} cannot be read ({error})"


def _files_problem(
    location: ArchiveLocation, directory: str, day: date, expected: Manifest
) -> str | None:
    if location.filesystem.get_file_info(directory).type is pafs.FileType.NotFound:
        return f"its directory {location.name(directory)} is missing"
    manifest = read_manifest(location, directory)
    if manifest is None:
        return f"its manifest {location.name(directory)}/{MANIFEST} is missing or unreadable"
    if manifest != expected:
        return (
            f"its manifest says {manifest.row_count} rows (checksum {manifest.checksum[:12]}),"
            f" not {expected.row_count} (checksum {expected.checksum[:12]})"
        )
    if not parquet_files(location, directory):
        return f"its Parquet file is missing from {location.name(directory)}"
    try:
        files = _files_manifest(location, directory, day)
    except _READ_ERRORS as error:
        return f"its Parquet file cannot be read ({error})"
    if files != expected:
        return (
            f"its Parquet file holds {files.row_count} rows, not the {expected.row_count} of its"
            " manifest (or another checksum)"
        )
    return None


def archived_part(root: ArchiveRoot, day: date, since: datetime) -> Manifest | str:
    """The figures of the day's archived ticks from `since` on, or why they cannot be read."""
    try:
        return file_manifest(root, day, since)
    except _READ_ERRORS as error:
        return f"its Parquet file cannot be read ({error})"


def mark_unfit(conn: psycopg.Connection, day: date, problem: str) -> None:
    """Record why `day`'s archive cannot stand for the database: the next archive run writes
    the day again (unarchived_days lists it)."""
    conn.execute("UPDATE tick_archive_days SET problem = %s WHERE day = %s", [problem, day])


def _partly_dropped(conn: psycopg.Connection, day: date) -> bool:
    """Retention may have dropped ticks of `day`: the database no longer holds all of it.

    Retention sets verified_at when it drops a chunk holding ticks of a day; a day with no
    record was dropped by age alone (archiving off) if the cutoff is past its start.
    """
    dropped_before = ticks_dropped_before(conn)
    if dropped_before is None or dropped_before <= day_bounds(day)[0]:
        return False
    row = conn.execute("SELECT verified_at FROM tick_archive_days WHERE day = %s", [day]).fetchone()
    return row is None or row[0] is not None


def ticks_dropped_before(conn: psycopg.Connection) -> datetime | None:
    """Retention's newest cutoff: ticks before it are gone from the database (None: none)."""
    row = conn.execute("SELECT max(cutoff) FROM tick_retention_runs").fetchone()
    return row[0] if row else None


def archive_day(conn: psycopg.Connection, root: ArchiveRoot, day: date) -> ArchivedDay:
    """Write `day`'s ticks under `root` (see the module's docstring) and record them.

    `conn` is an autocommit connection. Refuses a day that is not over in IST (its ticks are
    still arriving). A day retention has already begun to drop is left as archived (the
    database no longer holds all of it to compare with), or "damaged" when its files no
    longer match their manifest or cannot be read: nothing can rebuild it, so it is reported,
    not recorded, and its files are left as they are.
    """
    if day >= ist_today():
        raise ArchiveError(f"{day} is not over yet in IST: only finished days are archived")
    location = archive_location(root)
    final = location.path(day_path(day))
    shown = location.name(final)
    existing = read_manifest(location, final)
    # Archived, then partly dropped: the archive is the day's only whole copy, whatever reads
    # as missing (object storage out of reach too) is damaged, never rewritten from the rest.
    known = existing or recorded_manifest(conn, day)
    if known is not None and _partly_dropped(conn, day):
        if existing is None or archive_problem(location, day, existing) is not None:
            return ArchivedDay(day, "damaged", known.row_count, known.checksum, shown)
        if recorded_manifest(conn, day) != existing or _problem(conn, day) is not None:
            _record(conn, existing, partly_dropped=True)
        return ArchivedDay(day, "unchanged", existing.row_count, existing.checksum, shown)
    wanted = database_manifest(conn, day)
    if existing == wanted and archive_problem(location, day, wanted) is None:
        if recorded_manifest(conn, day) != wanted or _problem(conn, day) is not None:
            _record(conn, wanted)  # put into place, then a crash before this
        return ArchivedDay(day, "unchanged", wanted.row_count, wanted.checksum, shown)
    if wanted.row_count == 0:
        return ArchivedDay(day, "empty", 0, None, None)
    try:
        found = location.filesystem.get_file_info(final).type is not pafs.FileType.NotFound
        _write_verified(conn, location, final, wanted)
    except OSError as error:  # object storage out of reach, the bucket missing, a full disk
        raise ArchiveError(f"the archive of {day} cannot be written to {shown}: {error}") from None
    _record(conn, wanted)
    action = "rewritten" if found else "written"
    return ArchivedDay(day, action, wanted.row_count, wanted.checksum, shown)


def _write_verified(
    conn: psycopg.Connection, location: ArchiveLocation, final: str, wanted: Manifest
) -> None:
    """Write the day to `final`, read it back, compare it with `wanted`, then make it visible.

    On disk a staging directory beside the day is renamed into place once verified; object
    storage cannot rename, so the day is written in place, its old manifest deleted first and
    the new one written last."""
    day = wanted.day
    if location.local:
        parent, name = final.rsplit("/", 1)
        target = f"{parent}/.staging-{name}-{uuid.uuid4().hex[:8]}"
    else:
        target = final
        _remove_day(location, final)
    try:
        _write_day(conn, day, location, target)
        written = _files_manifest(location, target, day)
        if written != wanted:
            raise ArchiveError(
                f"the archive of {day} does not match the database: {written.row_count} rows "
                f"written, {wanted.row_count} in the database (or their checksums differ); "
                "nothing was recorded"
            )
        _write_manifest(location, target, wanted)  # on object storage: now it is archived
        if location.local:
            _fsync_tree(Path(target))
            _replace(Path(target), Path(final))
    except BaseException:
        with contextlib.suppress(*_READ_ERRORS):  # the error that got here is the one to see
            _remove_day(location, target)
        raise


def _replace(staging: Path, final: Path) -> None:
    """Put `staging` where `final` is, each step a rename: readers see one day or the other."""
    if final.exists():
        retired = final.parent / f".retired-{final.name}-{uuid.uuid4().hex[:8]}"
        final.rename(retired)
        staging.rename(final)
        shutil.rmtree(retired)
    else:
        staging.rename(final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unarchived_days(conn: psycopg.Connection, before: date) -> list[date]:
    """IST days before `before` the database holds ticks of and the archive does not (or
    retention found unfit), oldest first, found one chunk at a time (no scan of the whole
    table)."""
    rows = conn.execute(
        "SELECT DISTINCT d::date FROM timescaledb_information.chunks c,"
        " generate_series((c.range_start AT TIME ZONE %(zone)s)::date,"
        "  ((c.range_end - INTERVAL '1 microsecond') AT TIME ZONE %(zone)s)::date,"
        "  INTERVAL '1 day') AS d"
        " WHERE c.hypertable_schema = current_schema() AND c.hypertable_name = 'ticks'"
        "  AND d::date < %(before)s"
        "  AND NOT EXISTS (SELECT 1 FROM tick_archive_days a"
        "   WHERE a.day = d::date AND a.problem IS NULL)"
        " ORDER BY 1",
        {"before": before, "zone": IST_ZONE},
    ).fetchall()
    days = []
    for (day,) in rows:
        start, end = day_bounds(day)
        if conn.execute(
            "SELECT EXISTS (SELECT 1 FROM ticks WHERE ts >= %s AND ts < %s)", [start, end]
        ).fetchone() == (True,):
            days.append(day)
    return days


def read_archived_ticks(
    root: ArchiveRoot, instrument_key: str, start: datetime | None, end: datetime | None
) -> pa.Table:
    """One instrument's archived ticks in [start, end), sorted by time, every column."""
    location = archive_location(root)
    directory = location.path("ticks")
    if location.filesystem.get_file_info(directory).type is pafs.FileType.NotFound:
        return SCHEMA.empty_table()
    dataset = ds.dataset(
        directory,
        filesystem=location.filesystem,
        format="parquet",
        partitioning="hive",
        schema=SCHEMA,
    )
    wanted = pc.field("instrument_key") == instrument_key
    if start is not None:
        wanted &= pc.field("ts") >= pa.scalar(start, type=SCHEMA.field("ts").type)
    if end is not None:
        wanted &= pc.field("ts") < pa.scalar(end, type=SCHEMA.field("ts").type)
    return dataset.to_table(filter=wanted).sort_by("ts")


def archive_finished_days(
    conn: psycopg.Connection, root: ArchiveRoot, today: date | None = None
) -> list[ArchivedDay]:
    """Archive every finished day the database holds and the archive lacks (or retention found
    unfit), oldest first:
    what the daily schedule runs after the close, and `tickvault archive` without --date."""
    location = archive_location(root)
    days = unarchived_days(conn, today or ist_today())
    return [archive_day(conn, location, day) for day in days]
