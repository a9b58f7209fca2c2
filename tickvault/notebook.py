"""What the analysis notebooks import: the store as pandas frames, with times in IST.

Notebooks get no connection code of their own, so a notebook runs unchanged against the
embedded store, docker compose's database or a test database: whichever
TICKVAULT_DATABASE_URL (or, unset, the local cluster) names. Every call opens its own short
autocommit connection: a kernel left idle for hours then holds no open transaction that would
keep vacuum from reclaiming tick chunks, and a restarted server costs nothing but a rerun.

It belongs to `tickvault`, the layer that wires the others together: it turns the settings
into a database URL, runs the store's queries (store.ticks, store.bars, store.instruments)
and hands back frames. Nothing here is HTTP.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pandas as pd
import psycopg

from core.ist import IST_ZONE
from store.archive import read_archived_ticks, ticks_dropped_before
from store.audit import latest_results
from store.bars import BAR_INTERVALS, BarInterval, busiest_instrument, interval_bars_sql
from store.instruments import resolve_symbol, trading_symbols
from store.local.url import database_url
from store.ticks import newest_tick_time, recent_ticks_sql
from tickvault.checkout import checkout_settings
from tickvault.history import HistoryError as HistoryError
from tickvault.history import aligned as aligned
from tickvault.history import history as history
from tickvault.history import quotes_at_trades as quotes_at_trades
from tickvault.history import sql as sql

_NUMERIC_TYPES = frozenset(
    psycopg.postgres.types[name].oid
    for name in ("int2", "int4", "int8", "float4", "float8", "numeric")
)
_TIMESTAMPTZ = psycopg.postgres.types["timestamptz"].oid


def connect() -> psycopg.Connection:
    """A connection to the store in IST, so timestamps come back as the exchange's clock."""
    conn = psycopg.connect(database_url(checkout_settings()), autocommit=True)
    conn.execute(f"SET TIME ZONE '{IST_ZONE}'")
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
            frame[column.name] = pd.to_datetime(frame[column.name], utc=True).dt.tz_convert(
                IST_ZONE
            )
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
        moment = moment.tz_localize(IST_ZONE)
    return moment.to_pydatetime()


def day_bounds(day: date | str) -> tuple[datetime, datetime]:
    """The IST calendar day as [start, end): the whole day, not only the 09:15-15:30 session,
    so pre-open updates and data recorded outside market hours are not silently dropped."""
    start = pd.Timestamp(day).normalize().tz_localize(IST_ZONE)
    return start.to_pydatetime(), (start + pd.Timedelta(days=1)).to_pydatetime()


def _labelled(frame: pd.DataFrame, conn: psycopg.Connection, key: str) -> pd.DataFrame:
    frame.attrs["instrument_key"] = key
    frame.attrs["trading_symbol"] = trading_symbols(conn, [key]).get(key, key)
    return frame


def read_bars(
    symbol: str,
    interval: BarInterval = "1m",
    start: datetime | date | str | None = None,
    end: datetime | date | str | None = None,
) -> pd.DataFrame:
    """OHLC bars of one instrument, indexed by bucket start (IST), oldest first.

    `symbol` is a trading symbol, index name or instrument key; `start` is inclusive and
    `end` exclusive, naive times being IST. `attrs` names the instrument the symbol resolved
    to. A minute without a tick has no bar: gaps are gaps, not zero-volume bars.
    """
    if interval not in BAR_INTERVALS:
        raise ValueError(f"interval must be one of {', '.join(BAR_INTERVALS)}, got {interval!r}")
    bounds = {"start": _moment(start), "end": _moment(end)}
    with connect() as conn:
        key = resolve_symbol(conn, symbol)
        params = {"symbol": key, "interval": interval, **bounds}
        frame = _fetch(conn, interval_bars_sql(), params)
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
    oldest first. The limit keeps a busy future's full day from filling the kernel's memory.

    Days retention has dropped from the database are read from the Parquet archive
    (store/archive.py), so a range reaching back past the database's oldest chunk is whole.
    """
    bounds = {"start": _moment(start), "end": _moment(end)}
    sql = recent_ticks_sql(start=start is not None, end=end is not None)
    with connect() as conn:
        key = resolve_symbol(conn, symbol)
        frame = _fetch(conn, sql, {"key": key, "limit": limit, **bounds})
        dropped_before = ticks_dropped_before(conn)
        archived = _archived_ticks(key, bounds["start"], bounds["end"], dropped_before)
        if not archived.empty:
            frame = pd.concat([archived, frame], ignore_index=True).tail(limit)
        return _labelled(frame.set_index("ts"), conn, key)


def _archived_ticks(
    key: str, start: datetime | None, end: datetime | None, dropped_before: datetime | None
) -> pd.DataFrame:
    """The instrument's archived ticks in [start, end) from before retention's cutoff, as
    _fetch would have framed them (none while retention has dropped nothing)."""
    if dropped_before is None or (start is not None and start >= dropped_before):
        return pd.DataFrame()
    end = dropped_before if end is None else min(end, dropped_before)
    table = read_archived_ticks(checkout_settings().archive_root, key, start, end)
    frame = table.drop_columns(["instrument_key"]).to_pandas()
    for column in ("ts", "feed_ts", "received_at"):
        frame[column] = frame[column].dt.tz_convert(IST_ZONE)
    return frame


def latest_session_day() -> date:
    """The IST date of the newest tick: the day a notebook shows when it is not told one.

    Found per subscribed instrument, one probe of (instrument_key, ts DESC) each: `ticks`
    has no b-tree on ts alone (sql/007), so a bare max(ts) would read the newest chunk.
    """
    with connect() as conn:
        newest = newest_tick_time(conn)
    if newest is None:
        raise LookupError(
            "the store holds no ticks yet: run `tickvault run` (the simulator needs no token)"
        )
    return pd.Timestamp(newest).tz_convert(IST_ZONE).date()


def busiest_symbol(day: date | str | None = None) -> str:
    """The instrument key that traded most often on `day` (default: the latest day).

    Traded instruments come before indices, which carry no volume: a notebook's VWAP then
    has volume to weigh. Counted from the 1-minute bars, not the ticks, to stay cheap.
    """
    start, end = day_bounds(latest_session_day() if day is None else day)
    with connect() as conn:
        key = busiest_instrument(conn, start, end)
    if key is None:
        raise LookupError(f"no bars on {start.date()}")
    return key


# What read_audit shows of each instrument, in order.
_AUDIT_COLUMNS = [
    "instrument_key", "trading_symbol", "bars_verdict", "volume_verdict", "buckets_equal",
    "buckets_differing", "missing_ours", "missing_theirs", "bars_volume", "ticks_volume",
    "candles_volume",
    "last_vtt", "largest_price_ticks",
]  # fmt: skip


def read_audit(day: date | str) -> pd.DataFrame:
    """Each instrument's latest parity audit of `day` (store.audit), one row per instrument
    with its trading symbol, verdicts, bucket counts, volume sums and the largest price
    difference in ticks; empty when no audit of the day is stored (`tickvault audit`)."""
    with connect() as conn:
        results = latest_results(conn, pd.Timestamp(day).date())
        symbols = trading_symbols(conn, [result.instrument_key for result in results])
    rows = []
    for result in results:
        volume = result.details["volume"]
        ticks = [abs(d["size"]) for d in result.details["differences"] if d["unit"] == "ticks"]
        rows.append(
            {
                "instrument_key": result.instrument_key,
                "trading_symbol": symbols.get(result.instrument_key, result.instrument_key),
                "bars_verdict": result.bars_verdict,
                "volume_verdict": result.volume_verdict,
                "buckets_equal": result.buckets_equal,
                "buckets_differing": result.buckets_differing,
                "missing_ours": result.missing_ours,
                "missing_theirs": result.missing_theirs,
                # Older stored audits have no bars_volume: the ticks' sum was what they compared.
                "bars_volume": volume.get("bars_volume", volume["volume_delta_sum"]),
                "ticks_volume": volume["volume_delta_sum"],
                "candles_volume": volume["candles_volume"],
                "last_vtt": volume["last_vtt"],
                "largest_price_ticks": max(ticks, default=0.0),
            }
        )
    return pd.DataFrame(rows, columns=_AUDIT_COLUMNS)
