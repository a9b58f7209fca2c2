"""The `signals` hypertable and its `signal_progress` ledger: every query of them.

Signals are written with INSERT ... ON CONFLICT DO NOTHING on their origin key (sql/021): a
signal emitted again when the ingest replays journal frames after a crash is refused, so
each is stored once. One statement per batch (arrays unnested server-side), and RETURNING
names the rows that were new, so the caller logs exactly those.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import dict_row

from store.ticks import time_bounds


class SignalRow(NamedTuple):
    """One signal as the table takes it (`ts` an aware datetime, `fields` JSON text: checked
    and encoded once, where it was emitted)."""

    ts: datetime
    symbol: str
    instrument_key: str
    name: str
    value: float
    side: str | None
    fields: str
    handler: str
    journal_id: str
    seq: int
    n: int


_INSERT = (
    "INSERT INTO signals (ts, symbol, instrument_key, name, value, side, fields, handler,"
    " journal_id, seq, n)"
    " SELECT * FROM unnest(%s::timestamptz[], %s::text[], %s::text[], %s::text[],"
    " %s::float8[], %s::text[], %s::jsonb[], %s::text[], %s::text[], %s::int8[], %s::int4[])"
    " ON CONFLICT DO NOTHING RETURNING journal_id, seq, handler, n"
)


def insert_signals(cur: psycopg.Cursor, rows: list[SignalRow]) -> set[tuple[str, int, str, int]]:
    """Store `rows` in the cursor's transaction; the origin keys of those that were new
    (the others were stored before, by an emit that a replay repeated)."""
    if not rows:
        return set()
    columns = [list(column) for column in zip(*rows, strict=True)]
    cur.execute(_INSERT, columns)
    return {tuple(row) for row in cur.fetchall()}


def record_progress(cur: psycopg.Cursor, journal_id: str, last_seq: int) -> None:
    """Every signal of the journal's frames up to `last_seq` is stored (same transaction)."""
    cur.execute(
        "INSERT INTO signal_progress (journal_id, last_seq) VALUES (%s, %s)"
        " ON CONFLICT (journal_id) DO UPDATE SET last_seq = greatest("
        " signal_progress.last_seq, excluded.last_seq), updated_at = now()",
        [journal_id, last_seq],
    )


def signal_progress(conn: psycopg.Connection, journal_id: str) -> int | None:
    """The last journal seq whose signals are all stored; None before the first record."""
    row = conn.execute(
        "SELECT last_seq FROM signal_progress WHERE journal_id = %s", [journal_id]
    ).fetchone()
    return row[0] if row else None


SIGNAL_COLUMNS = ("ts", "symbol", "instrument_key", "name", "value", "side", "fields", "handler")


def signal_page(
    conn: psycopg.Connection,
    *,
    key: str | None,
    name: str | None,
    start: datetime | None,
    end: datetime | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Signals in [start, end) (a None bound is open), of the instrument `key` and of `name`
    when given, newest first, at most `limit`."""
    params: dict[str, Any] = {"key": key, "name": name, "start": start, "end": end}
    where = "true"
    if key is not None:
        where += " AND instrument_key = %(key)s"
    if name is not None:
        where += " AND name = %(name)s"
    where += time_bounds("ts", start=start is not None, end=end is not None)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"SELECT {', '.join(SIGNAL_COLUMNS)} FROM signals WHERE {where}"
            " ORDER BY ts DESC, emitted_at DESC, seq DESC, n DESC LIMIT %(limit)s",
            {**params, "limit": limit},
        ).fetchall()
