"""The SQL behind the read endpoints; each query is bounded by a LIMIT, a window or a key list."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from store.tick import TICK_COLUMNS

BAR_VIEWS = {"1m": "ohlc_1m", "5m": "ohlc_5m"}
_TICK_COLUMNS = ", ".join(f"t.{name}" for name in TICK_COLUMNS)
_INSTRUMENT_COLUMNS = (
    "instrument_key, trading_symbol, name, segment, exchange, instrument_type, expiry,"
    " strike_price, lot_size, tick_size, underlying_symbol"
)

Row = dict[str, Any]


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


def latest_ticks(conn: psycopg.Connection, keys: list[str] | None) -> list[Row]:
    """The newest stored tick of each key (of every subscription when `keys` is None).

    One probe of the (instrument_key, ts DESC) index per key.
    """
    source = (
        "unnest(%(keys)s::text[]) AS k(instrument_key)"
        if keys is not None
        else "(SELECT instrument_key FROM subscriptions WHERE status <> 'unsubscribed') AS k"
    )
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"SELECT {_TICK_COLUMNS} FROM {source} CROSS JOIN LATERAL ("
            " SELECT * FROM ticks WHERE ticks.instrument_key = k.instrument_key"
            " ORDER BY ts DESC, received_at DESC LIMIT 1) t",
            {"keys": keys},
        ).fetchall()


def bars(
    conn: psycopg.Connection, interval: str, key: str, start: datetime, end: datetime
) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT bucket, open, high, low, close, volume, tick_count"
            f" FROM {BAR_VIEWS[interval]}"
            " WHERE instrument_key = %s AND bucket >= %s AND bucket < %s ORDER BY bucket",
            [key, start, end],
        ).fetchall()


def _like_pattern(text: str) -> str:
    """A LIKE pattern for `text` anywhere in a string, its own % _ and \\ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def instrument_search(
    text: str | None, segment: str | None, limit: int
) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters of search_instruments, apart so its plan can be checked.

    Only the filters asked for are in the SQL, so the planner sees which indexes apply. The
    text is matched with LIKE on upper() of both sides, which sql/008's trigram indexes
    serve; `upper(pattern)` leaves the escapes alone, since no character's upper case is
    one of % _ or \\.
    """
    where, order = [], ["trading_symbol", "instrument_key"]
    params: dict[str, Any] = {"limit": limit}
    if text is not None:
        where.append(
            "(upper(trading_symbol) LIKE upper(%(pattern)s) OR upper(name) LIKE upper(%(pattern)s))"
        )
        order[:0] = [
            "upper(trading_symbol) = upper(%(text)s) IS NOT TRUE",
            "NOT starts_with(upper(trading_symbol), upper(%(text)s))",
        ]
        params |= {"text": text, "pattern": _like_pattern(text)}
    if segment is not None:
        where.append("segment = upper(%(segment)s)")
        params["segment"] = segment
    sql = (
        f"SELECT {_INSTRUMENT_COLUMNS} FROM instruments"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY {', '.join(order)} LIMIT %(limit)s"
    )
    return sql, params


def search_instruments(
    conn: psycopg.Connection, text: str | None, segment: str | None, limit: int
) -> list[Row]:
    """Instruments whose trading symbol or name contains `text` (any case, `%` and `_`
    included as they are), of `segment` if given: an exact symbol first, then symbols
    starting with the text, then the rest."""
    sql, params = instrument_search(text, segment, limit)
    with conn.cursor(row_factory=dict_row) as cur:
        # Never prepared: a plan made for any text would use the trigram indexes for every
        # text, and a text of one or two letters, or one in most symbols, reads faster
        # without them. Planned with its text, each search gets the plan that suits it.
        return cur.execute(sql, params, prepare=False).fetchall()
