"""One history across the store and the Parquet archive: DuckDB SQL over both, in one call.

Retention moves old tick days from TimescaleDB to the Parquet archive (store/archive.py), so a
year of ticks lives in two places with a moving line between them (retention's cutoff,
`ticks_dropped_before`). `sql()` hides that line: in its query, `ticks` is the archived days
before the cutoff UNION ALL the store's rows from it on, every row once, and `ohlc_1m` and
`ohlc_5m` are the store's bars (bars stay when their ticks go). `quotes_at_trades()` and
`aligned()` are the two ASOF joins analysts ask for, over the same relations.

How the store is reached, and why. DuckDB's `postgres` extension would scan PostgreSQL lazily
with filters pushed down, but DuckDB downloads it from its own extension server at the first
`LOAD`, which a machine reaching only the package registries cannot. PyPI's extension
packages (`duckdb-extension-postgres`, `duckdb-ext-postgres`) stop at DuckDB 1.5.5, and an
extension loads only into the exact DuckDB release that built it: taking them would pin DuckDB
to an old release and break at every upgrade. So the store's part is pulled as Arrow through
ADBC's PostgreSQL driver (a wheel with libpq inside: binary COPY decoded to Arrow in C, no
Python object per row), and only the part asked for: the time range and the instruments are
in the SQL PostgreSQL runs, where (instrument_key, ts DESC) and the BRIN index on ts serve
them. The Arrow stream goes batch by batch into a DuckDB temporary table, kept in DuckDB's own
compressed columns and spilled to a temporary directory past its memory limit: no whole
table, and no whole range, is ever held in Python. The archive is not loaded at all: a view
over a pyarrow dataset of exactly the days' files the range needs (on disk or S3), read lazily by
each query.

A query's own WHERE cannot reach that pull (DuckDB pushes nothing into Python), hence the range
is said once, explicitly: `start`, `end` and, optionally, `symbols`.

Never silently fewer rows: the days retention dropped are known (`tick_archive_days`, verified
when retention dropped them). Each the range needs must be in the archive, its manifest saying
the recorded figures and its Parquet footers holding that many rows (footers only, so a year
is checked in milliseconds; retention read every row back before it dropped any). A missing,
unreadable or different day, or ticks dropped while archiving was off, raise HistoryError
naming it; so does a file DuckDB then fails to read.

The ASOF joins run in DuckDB (ASOF JOIN), not pandas' merge_asof: both sides are already
DuckDB relations spanning the archive and the store, the join streams over them sorted within
DuckDB's memory limit, and only its answer becomes a frame, where merge_asof would need both
sides sorted in pandas first.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from adbc_driver_postgresql import dbapi as adbc
from psycopg import sql as pgsql

from core.ist import IST_ZONE, ist_day
from store.archive import (
    SCHEMA,
    ArchiveRoot,
    day_path,
    parquet_files,
    read_manifest,
    ticks_dropped_before,
)
from store.archive_location import ArchiveLocation, archive_location
from store.instruments import keys_of, resolve_symbols, trading_symbols
from store.local.url import database_url
from store.tick_row import TICK_COLUMNS
from tickvault.arrow_frames import FrameKind, Moment, checked_frame, ist_moment
from tickvault.checkout import checkout_settings

# What a query may name: each of the store's relations and its time column.
RELATIONS = {"ticks": "ts", "ohlc_1m": "bucket", "ohlc_5m": "bucket"}
_NAMED = re.compile(r"\b(" + "|".join(RELATIONS) + r")\b", re.IGNORECASE)
_COLUMNS = ", ".join(TICK_COLUMNS)
_QUOTE = ("bid_price", "bid_qty", "ask_price", "ask_qty")
# A query's own mistakes, found before any file is read.
_QUERY_MISTAKES = (
    duckdb.ParserException,
    duckdb.SyntaxException,
    duckdb.BinderException,
    duckdb.CatalogException,
)


class HistoryError(RuntimeError):
    """The archive cannot stand for ticks retention dropped: an answer would lack rows."""


def _text(value: str) -> str:
    """A DuckDB string literal: a view takes no parameters."""
    return "'" + value.replace("'", "''") + "'"


def _time(value: datetime) -> str:
    return f"TIMESTAMPTZ {_text(value.isoformat())}"


def _archived_files(
    conn: psycopg.Connection, location: ArchiveLocation, start: datetime, end: datetime
) -> list[str]:
    """The Parquet files of every day in [start, end) retention dropped ticks of, each day
    checked against the figures recorded when it was archived."""
    unarchived = conn.execute(
        "SELECT max(cutoff) FROM tick_retention_runs"
        " WHERE NOT require_archived AND chunks_dropped > 0"
    ).fetchone()
    if unarchived is not None and unarchived[0] is not None and start < unarchived[0]:
        raise HistoryError(
            f"ticks before {unarchived[0]} were dropped with archiving off"
            " (TICKVAULT_ARCHIVE_TICKS): nothing holds them; start the range there or later"
        )
    days = conn.execute(
        "SELECT day, row_count, checksum FROM tick_archive_days"
        " WHERE verified_at IS NOT NULL AND day BETWEEN %s AND %s ORDER BY day",
        [ist_day(start), ist_day(end - timedelta(microseconds=1))],
    ).fetchall()
    files: list[str] = []
    for day, row_count, checksum in days:
        directory = location.path(day_path(day))
        parts = _day_files(location, directory, row_count, checksum)
        if isinstance(parts, str):
            raise HistoryError(
                f"the archive of {day}, whose ticks retention dropped from the database, cannot"
                f" be read whole: {parts}. Restore {location.name(directory)} from a backup: the"
                " database no longer holds these ticks"
            )
        files.extend(parts)
    return files


def _day_files(
    location: ArchiveLocation, directory: str, row_count: int, checksum: str
) -> list[str] | str:
    """The day's Parquet files, or why they do not hold its recorded rows (from its manifest
    and the files' footers)."""
    manifest = read_manifest(location, directory)
    if manifest is None:
        return f"its manifest in {location.name(directory)} is missing or unreadable"
    if (manifest.row_count, manifest.checksum) != (row_count, checksum):
        return f"its manifest does not say the {row_count} rows recorded when it was archived"
    parts = parquet_files(location, directory)
    if not parts:
        return f"no Parquet file in {location.name(directory)}"
    held = 0
    for part in parts:
        try:
            with location.filesystem.open_input_file(part) as source:
                held += pq.ParquetFile(source).metadata.num_rows
        except (OSError, pa.ArrowException) as error:
            return f"{location.name(part)} cannot be read ({error})"
    if held != row_count:
        return f"its Parquet files hold {held} rows, not the {row_count} recorded"
    return parts


def _pull(
    conn: psycopg.Connection,
    url: str,
    duck: duckdb.DuckDBPyConnection,
    relation: str,
    bounds: tuple[datetime, datetime],
    keys: list[str] | None,
) -> None:
    """The store's rows of `relation` in [start, end) (of `keys` only, if given), streamed
    into the DuckDB temporary table `store_<relation>`."""
    column = pgsql.Identifier(RELATIONS[relation])
    query = pgsql.SQL("SELECT * FROM {} WHERE {} >= {} AND {} < {}").format(
        pgsql.Identifier(relation),
        column,
        pgsql.Literal(bounds[0]),
        column,
        pgsql.Literal(bounds[1]),
    )
    if keys is not None:
        query += pgsql.SQL(" AND instrument_key = ANY({})").format(pgsql.Literal(keys))
    with adbc.connect(url) as pg, pg.cursor() as cursor:
        cursor.execute(query.as_string(conn))
        batches = cursor.fetch_record_batch()  # noqa: F841 (DuckDB reads it by name)
        duck.execute(f"CREATE TEMP TABLE store_{relation} AS SELECT * FROM batches")


def _ticks(
    conn: psycopg.Connection,
    url: str,
    duck: duckdb.DuckDBPyConnection,
    location: ArchiveLocation,
    bounds: tuple[datetime, datetime],
    keys: list[str] | None,
) -> list[str]:
    """The view `ticks`: the archived days before retention's cutoff, the store's from it on;
    the Parquet files it reads."""
    start, end = bounds
    cutoff = ticks_dropped_before(conn)
    live_from = start if cutoff is None else max(start, cutoff)
    _pull(conn, url, duck, "ticks", (live_from, max(live_from, end)), keys)
    store = f"SELECT {_COLUMNS} FROM store_ticks"
    files: list[str] = []
    if cutoff is not None and cutoff > start:
        end = min(end, cutoff)
        files = _archived_files(conn, location, start, end)
    if not files:
        duck.execute(f"CREATE TEMP VIEW ticks AS {store}")
        return files
    # A pyarrow dataset over the location's filesystem, not DuckDB's read_parquet: the same
    # lazy scan with the filters pushed down, on disk or S3 alike (DuckDB's httpfs extension
    # would be downloaded from its server at the first use).
    archived = ds.dataset(files, schema=SCHEMA, filesystem=location.filesystem, format="parquet")
    duck.register("archived_ticks", archived)
    wanted = f" AND instrument_key IN ({', '.join(map(_text, keys))})" if keys is not None else ""
    duck.execute(
        f"CREATE TEMP VIEW ticks AS SELECT {_COLUMNS} FROM archived_ticks"
        f" WHERE ts >= {_time(start)} AND ts < {_time(end)}{wanted}"
        f" UNION ALL {store}"
    )
    return files


@dataclass(frozen=True)
class History:
    """An open history: `duck`, the DuckDB connection (TimeZone IST) holding its relations,
    and `archived`, the Parquet files its `ticks` reads in `location`."""

    duck: duckdb.DuckDBPyConnection
    location: ArchiveLocation
    archived: tuple[str, ...]

    def query(
        self,
        query: str,
        params: Sequence[Any] | dict[str, Any] | None = None,
        frame: FrameKind = "pandas",
    ) -> Any:
        """The query's rows as `frame` asks: a pandas frame (times tz-aware IST), an Arrow
        table, or a polars frame (with polars installed)."""
        checked_frame(frame)
        try:
            relation = self.duck.sql(query, params=params)
            if frame == "arrow":
                return relation.to_arrow_table()
            return relation.pl() if frame == "polars" else relation.df()
        except _QUERY_MISTAKES:
            raise
        except duckdb.Error as error:
            damaged = self._damaged(error) if self.archived else None
            if damaged is None:
                raise
            raise damaged from error

    def _damaged(self, error: duckdb.Error) -> HistoryError | None:
        """The archived day DuckDB failed on, if a damaged file made it fail: its error names
        no file (a corrupt page says "Variable-length int over 10 bytes"), so each file is
        read through once more, now that the answer is lost anyway."""
        for path in self.archived:
            try:
                with self.location.filesystem.open_input_file(path) as source:
                    for _ in pq.ParquetFile(source).iter_batches():
                        pass
            except (OSError, pa.ArrowException) as broken:
                day = path.rsplit("/", 2)[-2].removeprefix("date=")
                return HistoryError(
                    f"the archive of {day} cannot be read: {self.location.name(path)} is damaged"
                    f" ({broken}; DuckDB: {error}). Restore it from a backup: the database no"
                    " longer holds these ticks"
                )
        return None


@contextmanager
def history(
    start: Moment,
    end: Moment,
    symbols: str | Sequence[str] | None = None,
    relations: Sequence[str] = tuple(RELATIONS),
    *,
    url: str | None = None,
    archive: ArchiveRoot | None = None,
) -> Iterator[History]:
    """The history in [start, end) of `symbols` (trading symbols, index names or instrument
    keys; None: every instrument) as DuckDB `relations`, for several queries over one pull
    (`History.query`, or its `duck` connection itself). Naive times are IST.

    `url` and `archive` default to the checkout's store and archive, as the notebook finds them.
    """
    bounds = (ist_moment(start), ist_moment(end))
    if bounds[0] >= bounds[1]:
        raise ValueError(f"start ({bounds[0]}) must be before end ({bounds[1]})")
    if isinstance(symbols, str):
        symbols = [symbols]
    if symbols is not None and not symbols:
        raise ValueError("symbols is empty: give None for every instrument")
    unknown = sorted(set(relations) - set(RELATIONS))
    if unknown:
        raise ValueError(f"no relation {unknown[0]!r}: the history has {', '.join(RELATIONS)}")
    if url is None or archive is None:
        settings = checkout_settings()
        url = url or database_url(settings)
        archive = archive or settings.archive_root
    spill = tempfile.mkdtemp(prefix="tickvault-history-")
    duck = duckdb.connect(config={"temp_directory": spill})
    try:
        duck.execute(f"SET TimeZone = {_text(IST_ZONE)}")
        location = archive_location(archive)
        archived: list[str] = []
        with psycopg.connect(url, autocommit=True) as conn:
            keys = None
            if symbols is not None:
                keys = keys_of(list(symbols), resolve_symbols(conn, list(symbols)))
            for relation in relations:
                if relation == "ticks":
                    archived = _ticks(conn, url, duck, location, bounds, keys)
                else:
                    _pull(conn, url, duck, relation, bounds, keys)
                    duck.execute(f"CREATE TEMP VIEW {relation} AS SELECT * FROM store_{relation}")
        yield History(duck, location, tuple(archived))
    finally:
        duck.close()
        shutil.rmtree(spill, ignore_errors=True)


def sql(
    query: str,
    start: Moment,
    end: Moment,
    symbols: str | Sequence[str] | None = None,
    params: Sequence[Any] | dict[str, Any] | None = None,
    frame: FrameKind = "pandas",
) -> Any:
    """Run DuckDB SQL over the history in [start, end) of `symbols` (None: every instrument):
    `ticks` (the archive and the store as one), `ohlc_1m` and `ohlc_5m`. Only the relations
    the query names are read. Times come back in IST (a pandas frame's are tz-aware
    Asia/Kolkata); `frame` "arrow" or "polars" (with polars installed) give those instead.

        sql("SELECT date_trunc('day', ts) AS day, count(*) FROM ticks GROUP BY 1 ORDER BY 1",
            "2026-01-01", "2027-01-01", symbols=["INFY"])
    """
    named = [name for name in RELATIONS if name in {m.lower() for m in _NAMED.findall(query)}]
    with history(start, end, symbols, named) as opened:
        return opened.query(query, params, frame)


def _asof(symbols: Sequence[str], start: Moment, end: Moment, query: str, frame: FrameKind) -> Any:
    """One ASOF join over the ticks of `symbols`, whose instrument keys fill the query's
    `{left}` and `{right}` (the first and the last)."""
    settings = checkout_settings()
    url = database_url(settings)
    with psycopg.connect(url) as conn:
        keys = keys_of(list(symbols), resolve_symbols(conn, list(symbols)))
        names = trading_symbols(conn, keys)
    filled = query.format(left=_text(keys[0]), right=_text(keys[-1]))
    with history(start, end, keys, ["ticks"], url=url, archive=settings.archive_root) as opened:
        answer = opened.query(filled, frame=frame)
    if frame == "pandas":
        answer = answer.set_index("ts")
        answer.attrs["instrument_keys"] = keys
        answer.attrs["trading_symbols"] = [names.get(key, key) for key in keys]
    return answer


def quotes_at_trades(symbol: str, start: Moment, end: Moment, frame: FrameKind = "pandas") -> Any:
    """Each trade of `symbol` in [start, end) (a tick whose volume_delta is positive) with the
    quote in force when it traded: the best bid and ask of the instrument's last tick strictly
    before it (`quote_ts`; the trade's own tick already shows the book after it). NULL where
    no tick of the range precedes the trade. Indexed by the trade's time (IST)."""
    quote = ", ".join(f"q.{column}" for column in _QUOTE)
    return _asof(
        [symbol],
        start,
        end,
        f"SELECT t.ts, t.ltp, t.ltq, t.volume_delta, q.ts AS quote_ts, {quote}"
        " FROM (SELECT * FROM ticks WHERE volume_delta > 0) t"
        " ASOF LEFT JOIN ticks q ON t.ts > q.ts"
        " ORDER BY t.ts, t.received_at",
        frame,
    )


def aligned(
    left: str,
    right: str,
    start: Moment,
    end: Moment,
    columns: Sequence[str] = ("ltp",),
    frame: FrameKind = "pandas",
) -> Any:
    """Every tick of `left` in [start, end) with `right`'s last tick at or before it: the two
    instruments on one clock (a future against its index, two stocks). Columns `left_<c>` and
    `right_<c>` for each of `columns`, and `right_ts`; indexed by `left`'s tick time (IST)."""
    unknown = [column for column in columns if column not in TICK_COLUMNS]
    if unknown:
        raise ValueError(f"no tick column {unknown[0]!r}: choose from {', '.join(TICK_COLUMNS)}")
    picked = ", ".join(
        f"{side[0]}.{column} AS {side}_{column}" for side in ("left", "right") for column in columns
    )
    return _asof(
        [left, right],
        start,
        end,
        f"SELECT l.ts, {picked}, r.ts AS right_ts"
        " FROM (SELECT * FROM ticks WHERE instrument_key = {left}) l"
        " ASOF LEFT JOIN (SELECT * FROM ticks WHERE instrument_key = {right}) r ON l.ts >= r.ts"
        " ORDER BY l.ts, l.received_at",
        frame,
    )
