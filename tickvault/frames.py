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


def read_arrow(url: str, conn: psycopg.Connection, sql: str, params: Any = None) -> pa.Table:
    """The rows of `sql` (psycopg placeholders, bound from `params` on `conn`) as an Arrow
    table read over its own connection to `url`, every time column in IST."""
    statement = psycopg.ClientCursor(conn).mogrify(sql, params)
    with adbc.connect(url) as arrow_conn, arrow_conn.cursor() as cur:
        cur.adbc_statement.set_options(**{_BATCH_BYTES_OPTION: str(_BATCH_BYTES)})
        cur.execute(statement)
        return in_ist(cur.fetch_arrow_table())


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


def framed(table: pa.Table, kind: FrameKind, index: list[str]) -> Any:
    """`table` as the frame kind asked for; a pandas frame is indexed by the `index` columns
    (Arrow and polars have no index, so they keep them as the first columns)."""
    if kind == "arrow":
        return table
    if kind == "polars":
        import polars as pl  # only a polars user pays for importing it

        return pl.from_arrow(table)
    if kind != "pandas":
        raise ValueError(f"frame must be one of {', '.join(FRAME_KINDS)}, got {kind!r}")
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
