"""What the analysis notebooks import: the store as pandas frames, with times in IST.

Notebooks get no connection code of their own, so a notebook runs unchanged against the
embedded store, docker compose's database or a test database: whichever
TICKVAULT_DATABASE_URL (or, unset, the local cluster) names. Every call opens its own short
autocommit connection: a kernel left idle for hours then holds no open transaction that would
keep vacuum from reclaiming tick chunks, and a restarted server costs nothing but a rerun.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pandas as pd
import psycopg

from ingest.config import Settings
from store.bars import BAR_VIEWS
from store.instruments import resolve_symbol
from store.local.url import database_url
from store.tick import TICK_COLUMNS

IST = "Asia/Kolkata"
BAR_COLUMNS = ("open", "high", "low", "close", "volume", "tick_count")
# Every tick column but the key (a frame holds one instrument) and `ts` (its index).
TICK_FIELDS = TICK_COLUMNS[2:]

_NUMERIC_TYPES = frozenset(
    psycopg.postgres.types[name].oid
    for name in ("int2", "int4", "int8", "float4", "float8", "numeric")
)
_TIMESTAMPTZ = psycopg.postgres.types["timestamptz"].oid


def connect() -> psycopg.Connection:
    """A connection to the store in IST, so timestamps come back as the exchange's clock."""
    conn = psycopg.connect(database_url(Settings.from_env()), autocommit=True)
    conn.execute(f"SET TIME ZONE '{IST}'")
    return conn


def _fetch(conn: psycopg.Connection, sql: str, params: Any = None) -> pd.DataFrame:
    # A cursor and DataFrame.from_records, not pandas.read_sql: read_sql warns on every call
    # for a connection that is not SQLAlchemy's, and adds nothing here.
    with conn.cursor() as cur:
        cur.execute(sql, params)
        description = cur.description or []
        frame = pd.DataFrame.from_records(
            cur.fetchall(), columns=[column.name for column in description]
        )
    # A column of Decimals (SQL numeric, e.g. `extract`) or of only NULLs (an index's bid
    # price, an empty result) comes out as `object`; give it the dtype its SQL type means,
    # so arithmetic and plotting work on it.
    for column in description:
        if frame[column.name].dtype != object:
            continue
        if column.type_code in _NUMERIC_TYPES:
            frame[column.name] = pd.to_numeric(frame[column.name]).astype("float64")
        elif column.type_code == _TIMESTAMPTZ:
            frame[column.name] = pd.to_datetime(frame[column.name], utc=True).dt.tz_convert(IST)
    return frame


def query(sql: str, params: Any = None) -> pd.DataFrame:
    """Any SQL against the store as a frame: the hypertables and bar views are there to ask."""
    with connect() as conn:
        return _fetch(conn, sql, params)


def _moment(value: datetime | date | str | None) -> datetime | None:
    """An aware time from what a notebook user types; a naive one is read as IST."""
    if value is None:
        return None
    moment = pd.Timestamp(value)
    if moment.tzinfo is None:
        moment = moment.tz_localize(IST)
    return moment.to_pydatetime()


def day_bounds(day: date | str) -> tuple[datetime, datetime]:
    """The IST calendar day as [start, end): the whole day, not only the 09:15-15:30 session,
    so pre-open updates and data recorded outside market hours are not silently dropped."""
    start = pd.Timestamp(day).normalize().tz_localize(IST)
    return start.to_pydatetime(), (start + pd.Timedelta(days=1)).to_pydatetime()


def _time_range(column: str, start: datetime | None, end: datetime | None) -> tuple[str, dict]:
    clauses, params = [], {}
    if start is not None:
        clauses.append(f"{column} >= %(start)s")
        params["start"] = start
    if end is not None:
        clauses.append(f"{column} < %(end)s")
        params["end"] = end
    return "".join(f" AND {clause}" for clause in clauses), params


def _labelled(frame: pd.DataFrame, conn: psycopg.Connection, key: str) -> pd.DataFrame:
    row = conn.execute(
        "SELECT trading_symbol FROM instruments WHERE instrument_key = %s", [key]
    ).fetchone()
    frame.attrs["instrument_key"] = key
    frame.attrs["trading_symbol"] = row[0] if row else key
    return frame


def read_bars(
    symbol: str,
    interval: str = "1m",
    start: datetime | date | str | None = None,
    end: datetime | date | str | None = None,
) -> pd.DataFrame:
    """OHLC bars of one instrument, indexed by bucket start (IST), oldest first.

    `symbol` is a trading symbol, index name or instrument key; `start` is inclusive and
    `end` exclusive, naive times being IST. `attrs` names the instrument the symbol resolved
    to. A minute without a tick has no bar: gaps are gaps, not zero-volume bars.
    """
    view = BAR_VIEWS.get(interval)
    if view is None:
        raise ValueError(f"interval must be one of {', '.join(BAR_VIEWS)}, got {interval!r}")
    where, params = _time_range("bucket", _moment(start), _moment(end))
    with connect() as conn:
        key = resolve_symbol(conn, symbol)
        frame = _fetch(
            conn,
            f"SELECT bucket, {', '.join(BAR_COLUMNS)} FROM {view}"
            f" WHERE instrument_key = %(key)s{where} ORDER BY bucket",
            {"key": key, **params},
        )
        frame = _labelled(frame.set_index("bucket"), conn, key)
    frame.attrs["interval"] = interval
    return frame


def read_ticks(
    symbol: str,
    start: datetime | date | str | None = None,
    end: datetime | date | str | None = None,
    limit: int = 200_000,
) -> pd.DataFrame:
    """The latest `limit` ticks of one instrument in [start, end), indexed by `ts` (IST),
    oldest first. The limit keeps a busy future's full day from filling the kernel's memory."""
    where, params = _time_range("ts", _moment(start), _moment(end))
    with connect() as conn:
        key = resolve_symbol(conn, symbol)
        frame = _fetch(
            conn,
            f"SELECT ts, {', '.join(TICK_FIELDS)} FROM ("
            f" SELECT * FROM ticks WHERE instrument_key = %(key)s{where}"
            " ORDER BY ts DESC LIMIT %(limit)s) AS latest ORDER BY ts",
            {"key": key, "limit": limit, **params},
        )
        return _labelled(frame.set_index("ts"), conn, key)


def latest_session_day() -> date:
    """The IST date of the newest tick: the day a notebook shows when it is not told one.

    Found per subscribed instrument, one probe of (instrument_key, ts DESC) each: `ticks`
    has no b-tree on ts alone (sql/007), so a bare max(ts) would read the newest chunk.
    """
    with connect() as conn:
        row = conn.execute(
            f"SELECT (max(t.ts) AT TIME ZONE '{IST}')::date FROM subscriptions s"
            " CROSS JOIN LATERAL (SELECT ts FROM ticks WHERE ticks.instrument_key ="
            " s.instrument_key ORDER BY ts DESC LIMIT 1) t"
        ).fetchone()
    if row is None or row[0] is None:
        raise LookupError(
            "the store holds no ticks yet: run `tickvault run` (the simulator needs no token)"
        )
    return row[0]


def busiest_symbol(day: date | str | None = None) -> str:
    """The instrument key that traded most often on `day` (default: the latest day).

    Traded instruments come before indices, which carry no volume: a notebook's VWAP then
    has volume to weigh. Counted from the 1-minute bars, not the ticks, to stay cheap.
    """
    start, end = day_bounds(latest_session_day() if day is None else day)
    with connect() as conn:
        row = conn.execute(
            "SELECT instrument_key FROM ohlc_1m WHERE bucket >= %s AND bucket < %s"
            " GROUP BY instrument_key"
            " ORDER BY coalesce(sum(volume), 0) > 0 DESC, sum(tick_count) DESC, instrument_key"
            " LIMIT 1",
            [start, end],
        ).fetchone()
    if row is None:
        raise LookupError(f"no bars on {start.date()}")
    return row[0]
