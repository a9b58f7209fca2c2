"""What the analysis notebooks import: the store as pandas (or polars, or Arrow) frames, with
times in IST.

Notebooks get no connection code of their own, so a notebook runs unchanged against the
embedded store, docker compose's database or a test database: whichever
TICKVAULT_DATABASE_URL (or, unset, the local cluster) names. Every call opens its own short
autocommit connection, and the bars and ticks themselves come over one kept ADBC connection
in autocommit (tickvault/arrow_frames.py): a kernel left idle for hours then holds no open
transaction that would keep vacuum from reclaiming tick chunks, and a restarted server costs
nothing but a rerun.

It belongs to `tickvault`, the layer that wires the others together: it turns the settings
into a database URL, runs the store's queries (store.ticks, store.bars, store.instruments)
and hands back frames. Nothing here is HTTP.
"""

from __future__ import annotations

import enum
import uuid
import warnings
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import pandas as pd
import psycopg
import pyarrow as pa

from core.ist import IST_ZONE
from ingest.signals import Signal, check_signal
from store.archive import read_archived_ticks, ticks_dropped_before
from store.audit import latest_results
from store.bars import (
    BAR_INTERVALS,
    BarInterval,
    busiest_instrument,
    interval_bars_sql,
    many_bars_sql,
)
from store.instruments import (
    fno_universe,
    keys_of,
    resolve_symbol,
    resolve_symbols,
    trading_symbols,
)
from store.local.url import database_url
from store.signals import SIGNAL_COLUMNS, SignalRow, insert_signals, signal_page
from store.ticks import count_ticks, many_recent_ticks_sql, newest_tick_time, recent_ticks_sql
from tickvault.arrow_frames import (
    FrameKind,
    checked_frame,
    framed,
    in_ist,
    ist_moment,
    read_arrow,
    with_attrs,
)
from tickvault.arrow_frames import day_bounds as day_bounds
from tickvault.arrow_frames import wide as wide  # what notebooks import, beside the readers
from tickvault.chain_frames import chain_history as chain_history
from tickvault.chain_frames import option_chain as option_chain
from tickvault.chain_frames import option_expiries as option_expiries
from tickvault.checkout import checkout_settings
from tickvault.checkout import connect as connect
from tickvault.history_sql import HistoryError as HistoryError
from tickvault.history_sql import aligned as aligned
from tickvault.history_sql import history as history
from tickvault.history_sql import quotes_at_trades as quotes_at_trades
from tickvault.history_sql import sql as sql
from tickvault.stream import stream as stream

_NUMERIC_TYPES = frozenset(
    psycopg.postgres.types[name].oid
    for name in ("int2", "int4", "int8", "float4", "float8", "numeric")
)
_TIMESTAMPTZ = psycopg.postgres.types["timestamptz"].oid


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


class _Universe(enum.Enum):
    UNIVERSE = "the F&O stocks and the indices the ingest subscribes"


# `read_bars(UNIVERSE, "5m", ...)`: every F&O stock of the instrument master and the
# configured indices (TICKVAULT_INDEX_KEYS), as `tickvault run` subscribes them. A constant,
# not a string, so that no symbol a user types is ever mistaken for it.
UNIVERSE = _Universe.UNIVERSE
Symbols = str | Sequence[str] | _Universe


class RowLimitWarning(UserWarning):
    """read_ticks returned fewer ticks than the window holds: its `limit` cut the oldest."""


def _window(start: datetime | date | str | None, end: datetime | date | str | None) -> dict:
    """The `start`/`end` parameters of a read; a window that ends before it starts is refused
    rather than read as empty."""
    first, last = (None if t is None else ist_moment(t) for t in (start, end))
    if first is not None and last is not None and first >= last:
        raise ValueError(
            f"start ({first.isoformat()}) must be before end ({last.isoformat()}):"
            " the window [start, end) is empty"
        )
    return {"start": first, "end": last}


def _instruments(conn: psycopg.Connection, symbols: Symbols) -> dict[str, str]:
    """label -> instrument key of each instrument a many-symbol read covers, in order.

    A list's labels are the symbols as typed (two spellings of one instrument read it once,
    under the first); the universe's are trading symbols. UnknownSymbol names every symbol of
    a list the master lacks, so nothing is read without a word about the rest.
    """
    if symbols is UNIVERSE:
        index_keys = list(checkout_settings().index_keys)
        known_indices = resolve_symbols(conn, index_keys)
        keys = list(dict.fromkeys([*fno_universe(conn), *known_indices.values()]))
        if not keys:
            raise LookupError(
                "the instrument master holds no F&O stock and none of the indices"
                f" {', '.join(index_keys)}: `tickvault instruments load` fills it"
            )
        names = trading_symbols(conn, keys)
        labels = [names.get(key, key) for key in keys]
        # A trading symbol listed twice (two segments) is labelled by its keys instead.
        clashing = {label for label in labels if labels.count(label) > 1}
        return {
            (key if label in clashing else label): key
            for label, key in zip(labels, keys, strict=True)
        }
    if isinstance(symbols, str) or not all(isinstance(symbol, str) for symbol in symbols):
        raise TypeError(f"symbols must be a str, a list of str or UNIVERSE, got {symbols!r}")
    wanted = [symbol.strip() for symbol in symbols]
    if not wanted:
        raise ValueError("symbols is an empty list: name at least one symbol, or UNIVERSE")
    labels: dict[str, str] = {}
    for symbol, key in zip(wanted, keys_of(wanted, resolve_symbols(conn, wanted)), strict=True):
        labels.setdefault(key, symbol)
    return {label: key for key, label in labels.items()}


def read_bars(
    symbols: Symbols,
    interval: BarInterval = "1m",
    start: datetime | date | str | None = None,
    end: datetime | date | str | None = None,
    frame: FrameKind = "pandas",
) -> Any:
    """OHLC bars, oldest first, in any interval of BAR_INTERVALS.

    One symbol (a trading symbol, index name or instrument key): a frame indexed by bucket
    start (IST) whose `attrs` name the instrument. A list of symbols or UNIVERSE: one long
    frame indexed by (symbol, bucket), read in one query; `wide(frame, "close")` turns it
    into a column per symbol. `start` is inclusive and `end` exclusive, naive times being
    IST. `frame="polars"` or `"arrow"` returns that kind instead (the index as columns). A
    minute without a tick has no bar: gaps are gaps, not zero-volume bars. Prices are float64
    and counts int64, but an index has no volume: NaN, so a frame holding one has a float64
    volume.
    """
    if interval not in BAR_INTERVALS:
        raise ValueError(f"interval must be one of {', '.join(BAR_INTERVALS)}, got {interval!r}")
    kind = checked_frame(frame)
    bounds = _window(start, end)
    url = database_url(checkout_settings())
    with connect() as conn:
        if isinstance(symbols, str):
            key = resolve_symbol(conn, symbols)
            params = {"symbol": key, "interval": interval, **bounds}
            table = read_arrow(url, conn, interval_bars_sql(), params)
            index, attrs = ["bucket"], _one_instrument(conn, key)
        else:
            keys = _instruments(conn, symbols)
            params = {"keys": list(keys.values()), "labels": list(keys), **bounds}
            table = read_arrow(url, conn, many_bars_sql(), {"interval": interval, **params})
            index, attrs = ["symbol", "bucket"], {"instrument_keys": keys}
    return with_attrs(framed(table, kind, index), {**attrs, "interval": interval})


def _one_instrument(conn: psycopg.Connection, key: str) -> dict[str, str]:
    return {"instrument_key": key, "trading_symbol": trading_symbols(conn, [key]).get(key, key)}


def read_ticks(
    symbols: Symbols,
    start: datetime | date | str | None = None,
    end: datetime | date | str | None = None,
    limit: int = 200_000,
    frame: FrameKind = "pandas",
) -> Any:
    """The newest `limit` ticks in [start, end), oldest first.

    One symbol: a frame indexed by `ts` (IST) whose `attrs` name the instrument. A list of
    symbols or UNIVERSE: one long frame indexed by (symbol, ts), read in one query, the
    newest `limit` ticks of them all. The limit keeps a busy day from filling the kernel's
    memory; when it cuts, a RowLimitWarning says how many ticks were left out and the limit
    that reads them all (and `attrs["ticks_cut_off"]` counts them). `frame` as read_bars.

    Days retention has dropped from the database are read from the Parquet archive
    (store/archive.py), so a range reaching back past the database's oldest chunk is whole.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive number of ticks, got {limit!r}")
    kind = checked_frame(frame)
    bounds = _window(start, end)
    bounded = {"start": start is not None, "end": end is not None}
    url = database_url(checkout_settings())
    with connect() as conn:
        if isinstance(symbols, str):
            key = resolve_symbol(conn, symbols)
            keys, attrs = {None: key}, _one_instrument(conn, key)
            params = {"key": key, "limit": limit, **bounds}
            table = read_arrow(url, conn, recent_ticks_sql(**bounded), params)
            table = table.slice(max(table.num_rows - limit, 0))  # ties at the cut
        else:
            keys = _instruments(conn, symbols)
            attrs = {"instrument_keys": keys}
            params = {"keys": list(keys.values()), "labels": list(keys), "limit": limit}
            table = read_arrow(url, conn, many_recent_ticks_sql(**bounded), {**params, **bounds})
        in_database = table.num_rows
        if in_database >= limit:
            in_database = count_ticks(conn, list(keys.values()), bounds["start"], bounds["end"])
        archived = _archived_ticks(keys, bounds, ticks_dropped_before(conn), table.schema)
    if archived.num_rows:
        table = _newest(pa.concat_tables([archived, table]), limit)
    cut = max(in_database + archived.num_rows - limit, 0)
    if cut:
        warnings.warn(
            f"read_ticks kept the newest {limit:,} of the {limit + cut:,} ticks in the window:"
            f" {cut:,} older ones were cut off. Pass limit={limit + cut} (or a narrower"
            " start/end) to read them all",
            RowLimitWarning,
            stacklevel=2,
        )
    index = ["ts"] if isinstance(symbols, str) else ["symbol", "ts"]
    return with_attrs(framed(table, kind, index), {**attrs, "ticks_cut_off": cut})


def read_signals(
    symbol: str | None = None,
    name: str | None = None,
    start: datetime | date | str | None = None,
    end: datetime | date | str | None = None,
    limit: int = 100_000,
) -> pd.DataFrame:
    """Signals (of `symbol`, of `name`, when given) whose causing tick is in [start, end),
    oldest first: a frame indexed by `ts` (IST) with symbol, instrument_key, name, value,
    side, fields (a dict) and handler; the newest `limit` of them."""
    bounds = _window(start, end)
    with connect() as conn:
        key = resolve_symbol(conn, symbol) if symbol is not None else None
        rows = signal_page(conn, key=key, name=name, limit=limit, **bounds)
    frame = pd.DataFrame.from_records(rows[::-1], columns=list(SIGNAL_COLUMNS))
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).dt.tz_convert(IST_ZONE)
    return frame.set_index("ts")


def emit_signal(
    symbol: str,
    name: str,
    value: float,
    *,
    ts: datetime | str | None = None,
    side: str | None = None,
    **fields: Any,
) -> Signal:
    """Store a signal of your own from a notebook, at `ts` (default now), at once.

    The same record and checks as a handler's `ingest.service.emit_signal` (a bad one raises
    ValueError naming what is wrong; an unknown symbol UnknownSymbol); it is in the table,
    the API and the live page, not in signals.log (that file is the ingest's). Each call
    stores one more signal: run a cell twice, get two.
    """
    fields_json = check_signal(name, value, side, fields)
    moment = ist_moment(ts) if ts is not None else pd.Timestamp.now(tz=IST_ZONE).to_pydatetime()
    with connect() as conn:
        key = resolve_symbol(conn, symbol)
        origin = f"notebook:{uuid.uuid4().hex}"  # a key of its own: never a duplicate
        row = SignalRow(
            moment, symbol, key, name, float(value), side, fields_json, "notebook", origin, 0, 0
        )
        with conn.cursor() as cur:
            insert_signals(cur, [row])
    return Signal(moment, symbol, name, float(value), side, fields)


def _newest(table: pa.Table, limit: int) -> pa.Table:
    """The newest `limit` rows of `table` (the archive's and the database's), by symbol then
    time, as the database read orders them."""
    if table.num_rows > limit:
        table = table.sort_by([("ts", "descending")]).slice(0, limit)
    order = [("symbol", "ascending")] if "symbol" in table.column_names else []
    return table.sort_by([*order, ("ts", "ascending")])


def _archived_ticks(
    keys: dict[str | None, str],
    bounds: dict[str, datetime | None],
    dropped_before: datetime | None,
    schema: pa.Schema,
) -> pa.Table:
    """The instruments' archived ticks in the window from before retention's cutoff, in the
    database read's `schema` (a label of None: the one-instrument read, without `symbol`);
    none while retention has dropped nothing."""
    start = bounds["start"]
    if dropped_before is None or (start is not None and start >= dropped_before):
        return schema.empty_table()
    end = dropped_before if bounds["end"] is None else min(bounds["end"], dropped_before)
    archive_root = checkout_settings().archive_root
    tables = []
    for label, key in keys.items():
        table = read_archived_ticks(archive_root, key, start, end).drop_columns(["instrument_key"])
        if label is not None:
            table = table.add_column(0, "symbol", pa.array([label] * table.num_rows, pa.string()))
        tables.append(in_ist(table).select(schema.names).cast(schema))
    return pa.concat_tables(tables)


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
