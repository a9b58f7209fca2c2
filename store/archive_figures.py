"""A day of ticks reduced to figures both sides compute the same way: the database's rows
(SQL) and the archive's Parquet files (Arrow), without ordering either.

For every column: the number of non-null values and the exact sum of one 64-bit integer per
value (a float's bit pattern, a time's microseconds, an integer itself, the first 8 bytes of a
string's MD5), summed as numeric in SQL and as Python integers from Arrow; the figures are
then hashed into the manifest's checksum. store/archive.py writes and reads back days with
them, retention compares them before it drops a day.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from core.ist import day_bounds
from store.tick_row import TICK_COLUMNS, TICK_PG_TYPES

BATCH_ROWS = 100_000  # rows an Arrow batch holds, reading the database or a file
DAY_WHERE = " FROM ticks WHERE ts >= %(start)s AND ts < %(end)s"

_ARROW_TYPES = {
    "text": pa.string(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "float8": pa.float64(),
    "int8": pa.int64(),
}
SCHEMA = pa.schema(
    [
        pa.field(name, _ARROW_TYPES[pg_type], nullable=name not in ("instrument_key", "ts"))
        for name, pg_type in zip(TICK_COLUMNS, TICK_PG_TYPES, strict=True)
    ]
)

# One 64-bit integer per value, in SQL; the Arrow side is _column_figures.
_SQL_INTEGER = {
    "text": "('x' || left(md5({c}), 16))::bit(64)::bigint",
    "timestamptz": "(extract(epoch FROM {c}) * 1000000)::bigint",
    "float8": "('x' || encode(float8send({c}), 'hex'))::bit(64)::bigint",
    "int8": "{c}",
}
_FIGURES_SQL = "SELECT count(*), " + ", ".join(
    f"count({name}), coalesce(sum({_SQL_INTEGER[pg_type].format(c=name)}), 0)"
    for name, pg_type in zip(TICK_COLUMNS, TICK_PG_TYPES, strict=True)
)


@dataclass(frozen=True)
class Manifest:
    """What a day holds: the same figures from the database and from the files."""

    day: date
    row_count: int
    checksum: str


def _checksum(row_count: int, figures: list[tuple[int, int]]) -> str:
    named = [
        [name, count, total] for name, (count, total) in zip(TICK_COLUMNS, figures, strict=True)
    ]
    return hashlib.sha256(json.dumps([row_count, named]).encode()).hexdigest()


def _day_range(day: date, since: datetime | None) -> tuple[datetime, datetime]:
    start, end = day_bounds(day)
    return (max(start, since) if since is not None else start), end


def database_manifest(
    conn: psycopg.Connection, day: date, since: datetime | None = None
) -> Manifest:
    """The day's figures as the database holds them now (its ticks from `since` on, if given:
    retention compares what is left of a day whose first part is already dropped)."""
    start, end = _day_range(day, since)
    row = conn.execute(_FIGURES_SQL + DAY_WHERE, {"start": start, "end": end}).fetchone()
    assert row is not None
    figures = [(int(row[i]), int(row[i + 1])) for i in range(1, len(row), 2)]
    return Manifest(day, int(row[0]), _checksum(int(row[0]), figures))


def _exact_sum(values: np.ndarray) -> int:
    """The sum of int64 values as a Python integer, without overflow (halves of 32 bits)."""
    high = int((values >> 32).sum(dtype=np.int64))
    low = int((values & 0xFFFFFFFF).sum(dtype=np.int64))
    return (high << 32) + low


def _column_figures(column: pa.Array) -> tuple[int, int]:
    """(non-null values, exact sum of their 64-bit integers) of one column of a batch."""
    count = len(column) - column.null_count
    if pa.types.is_string(column.type):
        counted = pc.value_counts(column.drop_null())
        total = sum(
            int.from_bytes(hashlib.md5(value.encode()).digest()[:8], "big", signed=True) * n  # noqa: S324
            for value, n in zip(
                counted.field("values").to_pylist(),
                counted.field("counts").to_pylist(),
                strict=True,
            )
        )
        return count, total
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    elif pa.types.is_floating(column.type):
        column = column.view(pa.int64())  # the bit pattern, exact where a sum is not
    values = column.fill_null(0).to_numpy(zero_copy_only=False)
    return count, _exact_sum(values.astype(np.int64, copy=False))


def batches_manifest(day: date, batches: Iterable[pa.RecordBatch]) -> Manifest:
    """The figures of ticks read as Arrow batches with the archive's columns (whoever read
    them: tickvault's read-back, or a test holding Spark's or DuckDB's answer to the database)."""
    row_count = 0
    figures = [(0, 0)] * len(TICK_COLUMNS)
    for batch in batches:
        row_count += batch.num_rows
        figures = [
            (count + more_count, total + more_total)
            for (count, total), (more_count, more_total) in zip(
                figures,
                (_column_figures(batch.column(name)) for name in TICK_COLUMNS),
                strict=True,
            )
        ]
    return Manifest(day, row_count, _checksum(row_count, figures))
