"""The compiled COPY encoder held to the reference: the same rows stored from the same ticks.

Random tick rows (NULLs wherever the table allows them, the ends of int8, NaN, infinities and
-0.0, keys in any script, times across timestamptz's whole range) are written into a real
TimescaleDB by each path in turn and read back in binary, so a float compares by its exact
bits and a time as the integer it is stored as. Rows neither path can store must fail in both
and leave nothing behind.
"""

from __future__ import annotations

import shutil
import struct
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.pq import Format

from store import ticks as ticks_module
from store.tick_row import TICK_COLUMNS, TICK_PG_TYPES
from store.ticks import (
    COPY_IMPLEMENTATION,
    copy_path,
    copy_ticks_by_row,
    copy_ticks_encoded,
    write_batch,
)
from tests.conftest import DbServer

STORE = Path(ticks_module.__file__).parent
Writer = Callable[[psycopg.Cursor, list[tuple]], None]
PATHS: dict[str, Writer] = {"reference": copy_ticks_by_row, "compiled": copy_ticks_encoded}

needs_compiled = pytest.mark.skipif(
    COPY_IMPLEMENTATION != "compiled", reason="the compiled COPY encoder is not built here"
)

_READ_BACK = f"SELECT {', '.join(TICK_COLUMNS)} FROM ticks"


class _StoredTickTime(Loader):
    """A binary timestamptz as the 8-byte integer it is stored as: a tick time, exactly."""

    format = Format.BINARY

    def load(self, data: Buffer) -> int:
        return int.from_bytes(data, "big", signed=True)


# timestamptz's finite range in tick times: 4714-11-24 BC up to (not including) 294277 AD.
TIME_MIN, TIME_END = -211_813_488_000_000_000, 9_223_371_331_200_000_000
# `ts` partitions the hypertable into days: a few days, or each example creates chunks.
TS_2026 = 820_454_400_000_000  # 2026-01-01T00:00Z
NOT_NULL = {"instrument_key", "ts", "ltp", "received_at"}

keys = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)
int8s = st.integers(-(2**63), 2**63 - 1)
float8s = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**53), 2**53)
times = st.integers(TIME_MIN, TIME_END - 1)


def _column(name: str, pg_type: str) -> st.SearchStrategy:
    values = {"text": keys, "int8": int8s, "float8": float8s, "timestamptz": times}[pg_type]
    if name == "ts":
        values = st.integers(TS_2026, TS_2026 + 3 * 86_400_000_000)
    return values if name in NOT_NULL else st.none() | values


rows = st.tuples(*(_column(n, t) for n, t in zip(TICK_COLUMNS, TICK_PG_TYPES, strict=True)))


def _comparable(value: object) -> tuple:
    """A float by its bits (NaN == NaN, -0.0 != 0.0), anything else as it is."""
    if isinstance(value, float):
        return ("float", struct.pack(">d", value))
    return (type(value).__name__, value)


def _canonical(table: list[tuple]) -> list[tuple]:
    """Rows as sortable, exactly comparable tuples, sorted: the table has no row order."""
    return sorted(tuple(_comparable(value) for value in row) for row in table)


def _stored_as(expected: list[tuple]) -> list[tuple]:
    """What reading a row back gives: an integer written to a float8 column is a float."""
    return [
        tuple(
            float(value) if pg_type == "float8" and isinstance(value, int) else value
            for value, pg_type in zip(row, TICK_PG_TYPES, strict=True)
        )
        for row in expected
    ]


@pytest.fixture(scope="module")
def ticks_db(apache_server: DbServer) -> Iterator[str]:
    url = apache_server.create_database()
    yield url
    apache_server.drop_database(url)


def _read_back(conn: psycopg.Connection) -> list[tuple]:
    """Every row of `ticks` in binary: floats by their bits, times as tick times."""
    with conn.cursor(binary=True) as cur:
        cur.adapters.register_loader("timestamptz", _StoredTickTime)
        return cur.execute(_READ_BACK).fetchall()


def _write_and_read(url: str, write: Writer, batch: list[tuple]) -> list[tuple]:
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE ticks")
        with conn.cursor() as cur:
            write(cur, batch)
        conn.commit()
        return _read_back(conn)


def test_the_compiled_encoder_is_built_where_a_compiler_is() -> None:
    """`pip install -e .` builds it wherever gcc and the Python headers are (make setup)."""
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not (shutil.which("gcc") or shutil.which("cc")) or not headers.exists():
        pytest.skip("no C compiler or Python headers here: the reference COPY is the one")
    assert COPY_IMPLEMENTATION == "compiled", "rebuild it: .venv/bin/pip install -e ."
    source = STORE / "_copyrows.pyx"
    built = [path for path in STORE.glob("_copyrows*.so") if path.is_file()]
    if built:  # an in-place (editable) build: it must not be older than its source
        assert max(p.stat().st_mtime for p in built) >= source.stat().st_mtime, (
            "store/_copyrows.pyx changed since it was built: pip install -e ."
        )


@needs_compiled
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(rows, max_size=12))
def test_both_paths_store_the_same_rows(ticks_db: str, batch: list[tuple]) -> None:
    stored = {name: _write_and_read(ticks_db, write, batch) for name, write in PATHS.items()}
    assert _canonical(stored["compiled"]) == _canonical(stored["reference"])
    assert _canonical(stored["compiled"]) == _canonical(_stored_as(batch))


def test_blocks_of_rows_make_one_copy(ticks_db: str) -> None:
    """More rows than one encoded block: every block lands, in one COPY, in order of writing."""
    batch = [
        ("NSE_EQ|" + "é" * (i % 7), TS_2026 + i, float(i), i, *([None] * 18), TS_2026 + i)
        for i in range(3 * ticks_module.ENCODED_BLOCK_ROWS + 5)
    ]
    for write in PATHS.values():
        if write is copy_ticks_encoded and COPY_IMPLEMENTATION != "compiled":
            continue
        assert _canonical(_write_and_read(ticks_db, write, batch)) == _canonical(batch)


BAD_ROWS = {
    "a key that is not text": (7, TS_2026, 1.0, *([None] * 19), TS_2026),
    "a float where int8 is": ("K", TS_2026, 1.0, 1.5, *([None] * 18), TS_2026),
    "text where float8 is": ("K", TS_2026, "1.0", *([None] * 19), TS_2026),
    "an int8 out of range": ("K", TS_2026, 1.0, 2**63, *([None] * 18), TS_2026),
    "a column short": ("K", TS_2026, 1.0, *([None] * 18), TS_2026),
    "NULL where NOT NULL": ("K", TS_2026, None, *([None] * 19), TS_2026),
    "a NUL in the key": ("K\x00", TS_2026, 1.0, *([None] * 19), TS_2026),
    "a time out of range": ("K", TS_2026, 1.0, *([None] * 18), TIME_END, TS_2026),
}


@needs_compiled
@pytest.mark.parametrize("bad", BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_a_row_neither_path_can_store_fails_the_batch_in_both(ticks_db: str, bad: tuple) -> None:
    good = ("NSE_EQ|A", TS_2026, 100.0, *([None] * 19), TS_2026)
    for write in PATHS.values():
        with psycopg.connect(ticks_db) as conn:
            conn.execute("TRUNCATE ticks")
            conn.commit()
            with (
                pytest.raises((psycopg.Error, TypeError, ValueError, OverflowError)),
                conn.cursor() as cur,
            ):
                write(cur, [good] * 600 + [bad])
            conn.rollback()
            assert conn.execute("SELECT count(*) FROM ticks").fetchone() == (0,)


@needs_compiled
def test_the_ingest_writes_its_batches_through_the_compiled_encoder(ticks_db: str) -> None:
    """The writer's connections (UTF-8, as `tickvault db` creates them) take the compiled path,
    and a batch written as the writer writes it is stored whole."""
    batch = [
        ("NSE_FO|43885", TS_2026 + i, 99.5, 1, 10 + i, 1, *([None] * 16), TS_2026) for i in range(3)
    ]
    with psycopg.connect(ticks_db) as conn:
        conn.execute("TRUNCATE ticks")
        with conn.cursor() as cur:
            assert copy_path(cur) is copy_ticks_encoded
            write_batch(cur, "journal-e2e", 1, 1, 3, batch)
        conn.commit()
        assert _canonical(_read_back(conn)) == _canonical(batch)


def test_a_connection_not_in_utf8_takes_the_reference(ticks_db: str) -> None:
    """The encoder writes text as UTF-8: on another client encoding psycopg's own path runs,
    which converts the key as that encoding says."""
    batch = [("NSE_EQ|Société", TS_2026, 1.0, *([None] * 19), TS_2026)]
    with psycopg.connect(ticks_db) as conn:
        conn.execute("SET client_encoding TO 'LATIN1'")
        conn.execute("TRUNCATE ticks")
        with conn.cursor() as cur:
            assert copy_path(cur) is copy_ticks_by_row
            write_batch(cur, "journal-latin1", 1, 1, 1, batch)
        conn.commit()
        conn.execute("SET client_encoding TO 'UTF8'")
        assert _canonical(_read_back(conn)) == _canonical(batch)
