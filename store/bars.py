"""1- and 5-minute OHLC bars that stay current, behind one interface on both editions.

On Community the bars are continuous aggregates and TimescaleDB keeps them current;
`refresh_bars` only forces a refresh. On the Apache edition we do that work ourselves, in the
shape TimescaleDB uses: the views of sql/006_bars.apache.sql read materialized buckets below
a watermark and aggregate ticks live above it, and `refresh_bars` moves the watermark forward
and re-aggregates the buckets that late ticks landed in below it (store/bar_rollup.py, over the
layers named here).

Readers (the API, the notebooks) take the relation names, the columns and the queries of bars
from here too, so each is written once. Bars of any interval (3m ... 1d, aligned to the 09:15
IST session open) are the SQL function `bars()` of sql/009_bars_any_interval.sql, which the
API calls too: the rule that builds them is written there only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

import psycopg
from psycopg.rows import dict_row

from store.bar_rollup import Layer, roll_up
from store.editions import Edition, server_edition

Interval = Literal["1m", "5m"]
# The relation each interval is read from, the same name on both editions; 1-minute first.
BAR_VIEWS: dict[Interval, str] = {"1m": "ohlc_1m", "5m": "ohlc_5m"}
# What each relation shows of the ticks alone (sql/012_bars_source.sql): on Community the
# continuous aggregates refresh_bars refreshes; the views above add the backfilled minutes.
LIVE_VIEWS: dict[Interval, str] = {"1m": "ohlc_1m_live", "5m": "ohlc_5m_live"}
# Every interval bars can be read in: 1m and 5m are the relations above, the others are built
# on read from ohlc_1m by the SQL function bars(), aligned to the NSE session (origin 09:15
# IST; 1d by IST trading date). sql/009's bar_intervals() lists the same names.
BarInterval = Literal["1m", "3m", "5m", "10m", "15m", "30m", "1h", "1d"]
BAR_INTERVALS: tuple[BarInterval, ...] = get_args(BarInterval)
# What a bar is, in the order every reader shows it: the bucket start, then its values.
BAR_COLUMNS = ("bucket", "open", "high", "low", "close", "volume", "tick_count")

# Each option contract's state per minute (sql/022), the same name on both editions; refreshed
# with the bars.
OPTION_CHAIN_VIEW = "option_chain_1m"
OPTION_CHAIN_COLUMNS = (
    "bucket",
    "ltp",
    "bid_price",
    "ask_price",
    "volume",
    "oi",
    "iv",
    "delta",
    "theta",
    "gamma",
    "vega",
    "rho",
    "last_ts",
    "tick_count",
)

# How long a Community refresh waits for a concurrent one on the same aggregate.
_REFRESH_WAIT_S = 30.0

_OPTION_FIELDS = (
    *("ltp", "bid_price", "ask_price", "vtt", "oi", "iv"),
    *("delta", "theta", "gamma", "vega", "rho"),
)
# The Apache edition's layers, each after the one it is aggregated from, and those of one
# source and width side by side: one read of the closed minutes rebuilds them together.
_LAYERS = (
    Layer(
        view=BAR_VIEWS["1m"],
        width="1 minute",
        source="ticks src",
        time="src.ts",
        aggregates=(
            *("first(src.ltp, src.ts)", "max(src.ltp)", "min(src.ltp)", "last(src.ltp, src.ts)"),
            *("sum(src.volume_delta)::bigint", "count(*)"),
        ),
        columns=BAR_COLUMNS,
        feeds="5 minutes",
    ),
    # Not a bar: each option contract's last state in each minute (sql/022), rolled up the
    # same way from the same ticks, those with greeks.
    Layer(
        view=OPTION_CHAIN_VIEW,
        width="1 minute",
        source="ticks src",
        time="src.ts",
        aggregates=(
            *(f"last(src.{name}, src.ts)" for name in _OPTION_FIELDS),
            *("max(src.ts)", "count(*)"),
        ),
        columns=OPTION_CHAIN_COLUMNS,
        rows="src.delta IS NOT NULL",
    ),
    Layer(
        view=BAR_VIEWS["5m"],
        width="5 minutes",
        source=f"{BAR_VIEWS['1m']}_store src",
        time="src.bucket",
        aggregates=(
            *("first(src.open, src.bucket)", "max(src.high)", "min(src.low)"),
            *("last(src.close, src.bucket)", "sum(src.volume)::bigint"),
            "sum(src.tick_count)::bigint",
        ),
        columns=BAR_COLUMNS,
    ),
)


@dataclass(frozen=True)
class RefreshResult:
    edition: Edition
    buckets_written: dict[str, int]


def refresh_bars(
    conn: psycopg.Connection, start: datetime | None = None, end: datetime | None = None
) -> RefreshResult:
    """Bring the materialized bars up to date; with start/end, rebuild that window as well.

    `conn` must be in autocommit mode: Community's refresh cannot run in a transaction block.
    """
    edition = server_edition(conn)
    if edition is Edition.COMMUNITY:
        for view in (*LIVE_VIEWS.values(), OPTION_CHAIN_VIEW):  # 1-minute before 5-minute
            _refresh_aggregate(conn, view, start, end)
        return RefreshResult(edition, {})
    return RefreshResult(edition, roll_up(conn, _LAYERS, start, end))


def _refresh_aggregate(
    conn: psycopg.Connection, view: str, start: datetime | None, end: datetime | None
) -> None:
    """Refresh one continuous aggregate, after any refresh already running on it.

    TimescaleDB 2.2x refuses a refresh while another one (a policy job: they start as soon as
    a database is created) holds an overlapping window, instead of waiting for it; ours must
    still run after it, so it is tried again until that one is done.
    """
    deadline = time.monotonic() + _REFRESH_WAIT_S
    while True:
        try:
            conn.execute(
                "CALL refresh_continuous_aggregate(%s::regclass, %s::timestamptz, %s::timestamptz)",
                [view, start, end],
            )
            return
        except psycopg.errors.LockNotAvailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def busiest_instrument(conn: psycopg.Connection, start: datetime, end: datetime) -> str | None:
    """The key that traded most often in [start, end); None when no bar is there.

    Instruments with volume come before those without (indices carry none), so a reader
    weighing by volume gets something to weigh. Counted from the 1-minute bars, not the
    ticks, to stay cheap.
    """
    row = conn.execute(
        f"SELECT instrument_key FROM {BAR_VIEWS['1m']} WHERE bucket >= %s AND bucket < %s"
        " GROUP BY instrument_key"
        " ORDER BY coalesce(sum(volume), 0) > 0 DESC, sum(tick_count) DESC, instrument_key"
        " LIMIT 1",
        [start, end],
    ).fetchone()
    return row[0] if row else None


def interval_bars_sql() -> str:
    """The bars of %(symbol)s (a trading symbol, index name or instrument key) in
    %(interval)s (one of BAR_INTERVALS) whose bucket starts in [%(start)s, %(end)s), oldest
    first, BAR_COLUMNS each; a NULL bound reads to that end of the data.

    Through the SQL function bars(), so the API, the notebooks and a user's psql build bars of
    every interval by the one rule written there. An unknown interval raises
    InvalidParameterValue, an unknown symbol NoDataFound.
    """
    return (
        f"SELECT {', '.join(BAR_COLUMNS)}"
        " FROM bars(%(symbol)s, %(interval)s, %(start)s, %(end)s) ORDER BY bucket"
    )


def interval_bar_rows(
    conn: psycopg.Connection, interval: BarInterval, key: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """The bars of instrument `key` in `interval` whose bucket starts in [start, end), each
    bar whole, oldest first, as rows named by BAR_COLUMNS (see interval_bars_sql)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            interval_bars_sql(),
            {"symbol": key, "interval": interval, "start": start, "end": end},
        ).fetchall()


def many_bars_sql() -> str:
    """The bars of each instrument key of %(keys)s, labelled by the same place of %(labels)s
    as `symbol`, in %(interval)s whose bucket starts in [%(start)s, %(end)s): `symbol`
    then BAR_COLUMNS, by symbol then bucket.

    One statement for any number of instruments (a universe's month is one round trip), each
    instrument's bars from bars() as interval_bars_sql reads them.
    """
    return (
        f"SELECT k.symbol, {', '.join(f'b.{name}' for name in BAR_COLUMNS)}"
        " FROM unnest(%(keys)s::text[], %(labels)s::text[]) AS k(instrument_key, symbol)"
        " CROSS JOIN LATERAL bars(k.instrument_key, %(interval)s, %(start)s, %(end)s) AS b"
        " ORDER BY k.symbol, b.bucket"
    )


def many_bar_rows(
    conn: psycopg.Connection,
    interval: BarInterval,
    keys: dict[str, str],
    start: datetime,
    end: datetime,
) -> list[dict[str, Any]]:
    """The bars of each label -> instrument key of `keys` (see many_bars_sql) as rows named
    `symbol` (the label) and BAR_COLUMNS, by symbol then bucket."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            many_bars_sql(),
            {
                "keys": list(keys.values()),
                "labels": list(keys),
                "interval": interval,
                "start": start,
                "end": end,
            },
        ).fetchall()
