"""Query results as Arrow tables, and Arrow tables as the frame a notebook asked for.

The rows never become Python objects: ADBC's PostgreSQL driver (libpq underneath) reads the
server's binary COPY of the query straight into Arrow columns in C, and pandas and polars
take those columns as they are. Building frames row by row (fetchall, then
DataFrame.from_records) made one tuple and up to 14 Python objects per tick and ran at about
a fifth of the speed the server sends a binary COPY at; this path keeps pace with it (see
bench/read_path.py and BENCHMARKS.md). ConnectorX was measured too: it needs a TCP
connection with a password, so it cannot reach the embedded store over its Unix socket.

ADBC binds parameters positionally with its own type mapping; the store's queries are written
with psycopg's named `%(name)s` placeholders (the API runs the same ones), so psycopg renders
the parameters into the statement as quoted literals on the psycopg connection the caller
already holds, and ADBC runs that text.
"""

from __future__ import annotations

import contextlib
import threading
from datetime import date, datetime
from typing import Any, Literal

import adbc_driver_postgresql.dbapi as adbc
import pandas as pd
import psycopg
import pyarrow as pa

from core.ist import IST_ZONE

# Up to this many bytes of rows in one Arrow batch (the driver's default is 16 MB). One batch
# per result lets pandas take the columns without copying them (to_pandas with split_blocks
# and self_destruct): a million ticks then peak at under twice the frame's size, not 2.3
# times. Below the 2 GiB a string column's 32-bit offsets can address in one batch.
_BATCH_BYTES_OPTION = "adbc.postgresql.batch_size_hint_bytes"
_BATCH_BYTES = 2**30

FrameKind = Literal["pandas", "polars", "arrow"]
FRAME_KINDS: tuple[FrameKind, ...] = ("pandas", "polars", "arrow")
Moment = datetime | date | str  # what a notebook user types for a time


def ist_moment(value: Moment) -> datetime:
    """An aware time from what a notebook user types; a naive one is read as IST."""
    moment = pd.Timestamp(value)
    if moment.tzinfo is None:
        moment = moment.tz_localize(IST_ZONE)
    return moment.to_pydatetime()


class _ArrowConnection:
    """One ADBC connection, kept between reads, to the last database read.

    Opening one costs about 60 ms (the driver reads the server's type catalog), more than a
    day's bars take to read; so it is kept, in autocommit, where an idle kernel holds no
    transaction that would keep vacuum from reclaiming tick chunks. A kept connection that
    fails (the server restarted, the database was recreated) is replaced and the read tried
    once more on a fresh one: a read is safe to repeat.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # an ADBC connection serves one statement at a time
        self._url: str | None = None
        self._conn: adbc.Connection | None = None

    def read(self, url: str, statement: str) -> pa.Table:
        with self._lock:
            reused = self._url == url and self._conn is not None
            try:
                return self._read(url, statement)
            except adbc.Error:
                self._close()
                if not reused:
                    raise
            return self._read(url, statement)

    def _read(self, url: str, statement: str) -> pa.Table:
        if self._url != url or self._conn is None:
            self._close()
            self._conn, self._url = adbc.connect(url, autocommit=True), url
        with self._conn.cursor() as cur:
            cur.adbc_statement.set_options(**{_BATCH_BYTES_OPTION: str(_BATCH_BYTES)})
            cur.execute(statement)
            return cur.fetch_arrow_table()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(adbc.Error):
                self._conn.close()
        self._conn = self._url = None


_ARROW = _ArrowConnection()


def read_arrow(url: str, conn: psycopg.Connection, sql: str, params: Any = None) -> pa.Table:
    """The rows of `sql` (psycopg placeholders, bound from `params` on `conn`) as an Arrow
    table read from `url` by ADBC, every time column in IST."""
    statement = psycopg.ClientCursor(conn).mogrify(sql, params)
    return in_ist(_ARROW.read(url, statement))


def in_ist(table: pa.Table) -> pa.Table:
    """`table` with every time-zone-aware column shown in IST (the same instants: Arrow keeps
    UTC and the zone is a label, so nothing is copied)."""
    schema = pa.schema(
        field.with_type(pa.timestamp(field.type.unit, tz=IST_ZONE))
        if pa.types.is_timestamp(field.type) and field.type.tz is not None
        else field
        for field in table.schema
    )
    return table.cast(schema)


def checked_frame(kind: FrameKind) -> FrameKind:
    """`kind` if it is a frame kind this module makes; checked before anything is read."""
    if kind not in FRAME_KINDS:
        raise ValueError(f"frame must be one of {', '.join(FRAME_KINDS)}, got {kind!r}")
    return kind


def framed(table: pa.Table, kind: FrameKind, index: list[str]) -> Any:
    """`table` as the frame kind asked for; a pandas frame is indexed by the `index` columns
    (Arrow and polars have no index, so they keep them as the first columns)."""
    if kind == "arrow":
        return table
    if kind == "polars":
        import polars as pl  # only a polars user pays for importing it

        return pl.from_arrow(table)
    checked_frame(kind)
    # self_destruct frees each Arrow column once pandas has its copy: the peak is then about
    # one frame, not the table and the frame side by side.
    frame = table.to_pandas(self_destruct=True, split_blocks=True)
    return frame.set_index(index[0] if len(index) == 1 else index)


def wide(frame: pd.DataFrame, column: str = "close") -> pd.DataFrame:
    """One column per symbol of a many-symbol frame from read_bars, indexed by time:
    `wide(bars, "close").pct_change()` is the returns matrix. A time a symbol has no row at
    is NaN, not a value carried over. (Ticks repeat times: resample them to bars first.)"""
    if not isinstance(frame.index, pd.MultiIndex) or frame.index.names[0] != "symbol":
        raise ValueError(
            "wide() takes a frame of several symbols (indexed by symbol and time), as"
            " read_bars([...]) returns it"
        )
    if column not in frame.columns:
        raise KeyError(f"no column {column!r}; the frame has {', '.join(frame.columns)}")
    table = frame[column].unstack(level="symbol")
    table.columns.name = "symbol"
    return table


def day_bounds(day: date | str) -> tuple[datetime, datetime]:
    """The IST calendar day as [start, end): the whole day, not only the 09:15-15:30 session,
    so pre-open updates and data recorded outside market hours are not silently dropped."""
    start = pd.Timestamp(day).normalize().tz_localize(IST_ZONE)
    return start.to_pydatetime(), (start + pd.Timedelta(days=1)).to_pydatetime()


def with_attrs(result: Any, attrs: dict[str, Any]) -> Any:
    """A pandas frame carries what it was read for in `attrs`; Arrow and polars have none."""
    if isinstance(result, pd.DataFrame):
        result.attrs.update(attrs)
    return result
