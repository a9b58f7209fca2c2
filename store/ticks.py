"""The `ticks` hypertable and the `ingest_batches` ledger beside it: every query of them.

Writing is binary COPY, two ways that put the same bytes on the wire. The reference,
`copy_ticks_by_row`: `set_types` picks psycopg's C dumper for every column and `write_row`
sends one row at a time. The compiled one, `copy_ticks_encoded` (`_copyrows.pyx`, built by
`pip install` where a C compiler is): blocks of rows encoded in one C call each, which skips
psycopg's three Python calls per row (a fifth of the ingest's busy time at 20,000 ticks/s).
`copy_ticks` takes the compiled one where it is built, and the connection is UTF-8 (the
encoder writes text as UTF-8); `COPY_IMPLEMENTATION` says which is built, and
tests/test_copy_rows.py holds the two to the same stored rows.

Both send the time columns as int8: a tick time is already the integer a binary timestamptz
is on the wire (microseconds since 2000-01-01 UTC; see store.tick_row), and binary COPY carries
no type tags, so the server reads those 8 bytes as the timestamptz its column is.

Each COPY batch is recorded in `ingest_batches` in the same transaction, under the journal
sequence numbers of its frames, so a restart knows where the journal's replay starts.

Reading one instrument goes through the (instrument_key, ts DESC) index; `ticks` has no b-tree
on `ts` alone (sql/007), so "the newest tick" is asked per instrument, never as max(ts).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from store.tick_row import PG_EPOCH_UNIX_US, TICK_COLUMNS, TICK_PG_TYPES, TIME_COLUMNS, Tick

try:
    from store._copyrows import COPY_HEADER, COPY_TRAILER, encode_rows
except ImportError:  # not built: no C compiler at install time
    encode_rows = None
    COPY_IMPLEMENTATION = "python"
else:
    COPY_IMPLEMENTATION = "compiled"

COPY_TICKS = f"COPY ticks ({', '.join(TICK_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_WIRE_TYPES = ["int8" if pg_type == "timestamptz" else pg_type for pg_type in TICK_PG_TYPES]

_TICK_COLUMNS = ", ".join(f"t.{name}" for name in TICK_COLUMNS)


def _as_tick_time(column: str) -> str:
    """SQL of a timestamptz `column` as a tick time (microseconds since 2000, store.tick_row)."""
    return f"(extract(epoch FROM {column}) * 1000000)::bigint - {PG_EPOCH_UNIX_US}"


# The same columns with the times as tick times (integers; see store.tick_row), for the decoder.
_TICK_TIMES_COLUMNS = ", ".join(
    _as_tick_time(f"t.{name}") if index in TIME_COLUMNS else f"t.{name}"
    for index, name in enumerate(TICK_COLUMNS)
)

Row = dict[str, Any]


# Rows per `copy.write` of the compiled path: about 100 kB, under psycopg's 128 kB, so it
# sends each block as it is; and each encoder call holds the GIL for a fraction of a ms.
ENCODED_BLOCK_ROWS = 512


def copy_ticks(cursor: psycopg.Cursor, rows: list[tuple]) -> None:
    """Write `rows` (tick tuples) into `ticks` in the cursor's transaction."""
    copy_path(cursor)(cursor, rows)


def copy_path(cursor: psycopg.Cursor) -> Callable[[psycopg.Cursor, list[tuple]], None]:
    """The compiled path where it is built and the connection's encoding is UTF-8 (what the
    encoder writes text in, and what `tickvault db` creates); else the reference."""
    if encode_rows is not None and cursor.connection.info.encoding == "utf-8":
        return copy_ticks_encoded
    return copy_ticks_by_row


def copy_ticks_by_row(cursor: psycopg.Cursor, rows: list[tuple]) -> None:
    """The reference: psycopg's own binary COPY, one `write_row` per row."""
    with cursor.copy(COPY_TICKS) as copy:
        copy.set_types(_WIRE_TYPES)
        write_row = copy.write_row
        for row in rows:
            write_row(row)


def copy_ticks_encoded(cursor: psycopg.Cursor, rows: list[tuple]) -> None:
    """The compiled encoder's binary COPY: the signature, blocks of encoded rows, the end.

    A row it cannot encode raises before its block is sent, and the COPY is then aborted,
    so nothing of the batch is stored. The connection must be UTF-8 (see `copy_ticks`).
    """
    if encode_rows is None:
        raise RuntimeError("the compiled COPY encoder is not built: pip install -e .")
    with cursor.copy(COPY_TICKS) as copy:
        copy.write(COPY_HEADER)
        for start in range(0, len(rows), ENCODED_BLOCK_ROWS):
            copy.write(encode_rows(rows, start, start + ENCODED_BLOCK_ROWS))
        copy.write(COPY_TRAILER)


# --- the batch ledger -----------------------------------------------------------------------


def write_batch(
    cur: psycopg.Cursor,
    journal_id: str,
    batch_id: int,
    first_seq: int,
    last_seq: int,
    rows: list[tuple],
) -> None:
    """COPY `rows` and record them as batch `batch_id` of journal frames first_seq..last_seq.

    Both in the cursor's transaction, which the caller commits: the rows and their record
    become visible together or not at all. A batch without rows is recorded too, so the
    journal frames that carried no tick count as committed.
    """
    if rows:
        copy_ticks(cur, rows)
    cur.execute(
        "INSERT INTO ingest_batches (journal_id, batch_id, first_seq, last_seq, row_count)"
        " VALUES (%s, %s, %s, %s, %s)",
        [journal_id, batch_id, first_seq, last_seq, len(rows)],
    )


def batch_committed(cur: psycopg.Cursor, journal_id: str, batch_id: int) -> bool:
    """Whether batch `batch_id` of the journal is recorded: after a commit whose answer was
    lost, a retry must not write its rows a second time."""
    return (
        cur.execute(
            "SELECT 1 FROM ingest_batches WHERE journal_id = %s AND batch_id = %s",
            [journal_id, batch_id],
        ).fetchone()
        is not None
    )


def committed_position(conn: psycopg.Connection, journal_id: str) -> tuple[int, int]:
    """(last committed journal seq, last batch id) of the journal; (0, 0) before its first."""
    row = conn.execute(
        "SELECT coalesce(max(last_seq), 0), coalesce(max(batch_id), 0)"
        " FROM ingest_batches WHERE journal_id = %s",
        [journal_id],
    ).fetchone()
    return row or (0, 0)


# --- reading --------------------------------------------------------------------------------


def tick_page(
    conn: psycopg.Connection,
    key: str,
    start: datetime,
    end: datetime,
    limit: int,
    after: tuple[datetime, datetime] | None = None,
) -> list[Row]:
    """Ticks of `key` in [start, end), newest first, strictly older than `after` if given.

    `after` is the (ts, received_at) of the last tick of the previous page; the extra
    `ts <= ` bound lets the (instrument_key, ts DESC) index start at that position.
    """
    params: dict[str, Any] = {"key": key, "start": start, "end": end, "limit": limit}
    position = ""
    if after is not None:
        params["ts"], params["received_at"] = after
        position = " AND t.ts <= %(ts)s AND (t.ts, t.received_at) < (%(ts)s, %(received_at)s)"
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"SELECT {_TICK_COLUMNS} FROM ticks t"
            " WHERE t.instrument_key = %(key)s AND t.ts >= %(start)s AND t.ts < %(end)s"
            f"{position} ORDER BY t.ts DESC, t.received_at DESC LIMIT %(limit)s",
            params,
        ).fetchall()


def time_bounds(column: str, *, start: bool, end: bool) -> str:
    """` AND column >= %(start)s AND column < %(end)s`, each bound only when asked for.

    A bound left out is left out of the SQL, not passed as NULL, so the planner sees exactly
    the range the index is read over.
    """
    return (f" AND {column} >= %(start)s" if start else "") + (
        f" AND {column} < %(end)s" if end else ""
    )


def recent_ticks_sql(*, start: bool, end: bool) -> str:
    """The newest %(limit)s ticks of %(key)s in the window, oldest first, with `ts` and every
    column after it (not the key): a frame of one instrument, indexed by time.

    The newest `limit` are found as those from the time of the limit-th newest on, so both
    the probe and the read walk the (instrument_key, ts DESC) index and nothing is sorted: a
    re-sort of a million rows cost the server more than sending them. Ties at that time can
    bring a few more than `limit`; the reader keeps the last `limit`.
    """
    window = f"instrument_key = %(key)s{time_bounds('ts', start=start, end=end)}"
    return (
        f"SELECT {', '.join(TICK_COLUMNS[1:])} FROM ticks WHERE {window}"
        " AND ts >= coalesce((SELECT ts FROM ticks"
        f" WHERE {window} ORDER BY ts DESC OFFSET %(limit)s - 1 LIMIT 1), '-infinity')"
        " ORDER BY ts"
    )


def many_recent_ticks_sql(*, start: bool, end: bool) -> str:
    """The newest %(limit)s ticks of the instrument keys %(keys)s together in the window,
    each labelled by the same place of %(labels)s as `symbol`: `symbol`, `ts` and every
    column after it, by symbol then time. One statement for any number of instruments."""
    return (
        f"SELECT k.symbol, {', '.join(f't.{name}' for name in TICK_COLUMNS[1:])} FROM ("
        " SELECT * FROM ticks WHERE instrument_key = ANY(%(keys)s::text[])"
        f"{time_bounds('ts', start=start, end=end)}"
        " ORDER BY ts DESC LIMIT %(limit)s) AS t"
        " JOIN unnest(%(keys)s::text[], %(labels)s::text[]) AS k(instrument_key, symbol)"
        " USING (instrument_key) ORDER BY k.symbol, t.ts"
    )


def count_ticks(
    conn: psycopg.Connection, keys: list[str], start: datetime | None, end: datetime | None
) -> int:
    """How many ticks the instrument keys have in [start, end) (a None bound is open): what
    a reader's row limit is weighed against when it bites."""
    bounds = {"keys": keys, "start": start, "end": end}
    row = conn.execute(
        "SELECT count(*) FROM ticks WHERE instrument_key = ANY(%(keys)s::text[])"
        f"{time_bounds('ts', start=start is not None, end=end is not None)}",
        bounds,
    ).fetchone()
    return row[0] if row else 0


def _newest(columns: str, keys_from: str) -> str:
    """The newest tick of each `instrument_key` of `keys_from` (aliased `k`), as `t`.

    One probe of the (instrument_key, ts DESC) index per key, newest chunk first; of two
    ticks at the same `ts`, the one received last.
    """
    return (
        f"SELECT {columns} FROM {keys_from} CROSS JOIN LATERAL ("
        " SELECT * FROM ticks WHERE ticks.instrument_key = k.instrument_key"
        " ORDER BY ts DESC, received_at DESC LIMIT 1) t"
    )


def newest_tick_rows(conn: psycopg.Connection) -> list[Tick]:
    """The newest stored tick of every instrument in `subscriptions`, whatever its status, as
    ticks with integer times: what seeds the decoder after a restart."""
    return [tuple(row) for row in conn.execute(_newest(_TICK_TIMES_COLUMNS, "subscriptions k"))]


def forming_bar_rows(conn: psycopg.Connection) -> list[tuple]:
    """The stored ticks of each instrument's newest minute and the minute before, as bars
    (instrument_key, bucket, open, open_ts, high, low, close, close_ts, volume, tick_count;
    times as tick times): what seeds the forming bars after a restart, so a minute the
    ingest was stopped in still counts the ticks before the stop. The arithmetic is
    ohlc_1m's (sql/006_bars.*.sql); one index range per instrument (the LATERAL)."""
    newest = _newest("k.instrument_key, t.ts", "subscriptions k")
    bucket = _as_tick_time("time_bucket('1 minute', t.ts)")
    return [
        tuple(row)
        for row in conn.execute(
            f"SELECT n.instrument_key, b.* FROM ({newest}) n CROSS JOIN LATERAL ("
            f" SELECT {bucket} AS bucket,"
            f" first(t.ltp, t.ts), {_as_tick_time('min(t.ts)')}, max(t.ltp), min(t.ltp),"
            f" last(t.ltp, t.ts), {_as_tick_time('max(t.ts)')},"
            " sum(t.volume_delta)::bigint, count(*)"
            " FROM ticks t WHERE t.instrument_key = n.instrument_key"
            "  AND t.ts >= time_bucket('1 minute', n.ts) - interval '1 minute'"
            " GROUP BY 1) b ORDER BY 1, 2"
        )
    ]


def newest_tick_time(conn: psycopg.Connection) -> datetime | None:
    """The time of the newest tick of any instrument in `subscriptions`; None without one."""
    row = conn.execute(_newest("max(t.ts)", "subscriptions k")).fetchone()
    return row[0] if row else None
