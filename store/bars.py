"""1- and 5-minute OHLC bars that stay current, behind one interface on both editions.

On Community the bars are continuous aggregates and TimescaleDB keeps them current;
`refresh_bars` only forces a refresh. On the Apache edition we do that work ourselves, in the
shape TimescaleDB uses: the views of sql/006_bars.apache.sql read materialized buckets below
a watermark and aggregate ticks live above it, and `refresh_bars` moves the watermark forward
and re-aggregates the buckets that late ticks landed in below it.

Readers (the API, the notebooks) take the relation names, the columns and the queries of bars
from here too, so each is written once. Bars of any interval (3m ... 1d, aligned to the 09:15
IST session open) are the SQL function `bars()` of sql/009_bars_any_interval.sql, which the
API calls too: the rule that builds them is written there only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

import psycopg
from psycopg.rows import dict_row

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

# Only one rollup at a time, whoever runs it (the ingest scheduler or `tickvault db refresh-bars`).
_ROLLUP_LOCK = 0x7469636B
# How long a Community refresh waits for a concurrent one on the same aggregate.
_REFRESH_WAIT_S = 30.0


@dataclass(frozen=True)
class _Layer:
    """One Apache-edition bar relation and the source it is aggregated from."""

    view: str
    width: str
    source: str  # FROM clause; the alias `src` is used below
    time: str  # time column of the source
    aggregates: str
    columns: tuple[str, ...] = BAR_COLUMNS  # of its `_store` table, the bucket first

    @property
    def reads_ticks(self) -> bool:
        """Whether it is aggregated from the ticks themselves (late ticks dirty it)."""
        return self.time == "src.ts"


_LAYERS = (
    _Layer(
        view=BAR_VIEWS["1m"],
        width="1 minute",
        source="ticks src",
        time="src.ts",
        aggregates="first(src.ltp, src.ts), max(src.ltp), min(src.ltp), last(src.ltp, src.ts),"
        " sum(src.volume_delta)::bigint, count(*)",
    ),
    _Layer(
        view=BAR_VIEWS["5m"],
        width="5 minutes",
        source=f"{BAR_VIEWS['1m']}_store src",
        time="src.bucket",
        aggregates="first(src.open, src.bucket), max(src.high), min(src.low),"
        " last(src.close, src.bucket), sum(src.volume)::bigint, sum(src.tick_count)::bigint",
    ),
    # Not a bar: each option contract's last state in each minute (sql/022), rolled up the
    # same way. Option ticks are those with greeks.
    _Layer(
        view=OPTION_CHAIN_VIEW,
        width="1 minute",
        source="(SELECT * FROM ticks WHERE delta IS NOT NULL) src",
        time="src.ts",
        aggregates=", ".join(
            f"last(src.{name}, src.ts)"
            for name in (
                *("ltp", "bid_price", "ask_price", "vtt", "oi", "iv"),
                *("delta", "theta", "gamma", "vega", "rho"),
            )
        )
        + ", max(src.ts), count(*)",
        columns=OPTION_CHAIN_COLUMNS,
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
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_ROLLUP_LOCK])
        # No JIT: the planner costs the late-tick joins for thousands of dirty buckets, so
        # each pass compiled (and inlined) their expressions for about 0.25 s of server CPU
        # apiece, usually to aggregate nothing.
        conn.execute("SET LOCAL jit = off")
        # Hash aggregates: a pass's groups are its instruments' buckets, a few thousand, while
        # the planner, whose statistics of a chunk being written end at its last ANALYZE,
        # expects a closed minute to hold a few thousand rows instead of millions and sorted
        # them (spilling to disk) in twice the time of a hash table (BENCHMARKS.md).
        conn.execute("SET LOCAL enable_sort = off")
        conn.execute("SET LOCAL work_mem = '64MB'")
        conn.execute(
            "CREATE TEMP TABLE _bars_dirty (instrument_key text, bucket timestamptz)"
            " ON COMMIT DROP;"
            "CREATE TEMP TABLE _bars_touched (instrument_key text, bucket timestamptz)"
            " ON COMMIT DROP"
        )
        _summarize_new_tick_ranges(conn)
        written = {layer.view: _rollup(conn, layer, start, end) for layer in _LAYERS}
    return RefreshResult(edition, written)


def _summarize_new_tick_ranges(conn: psycopg.Connection) -> None:
    """Summarize the block ranges added since the last pass to the BRIN index of the ticks
    chunks that hold the last day (over `ts` and `inserted_at`), so that the rollup's scans
    read only the ranges that can hold what they look for.

    A range no vacuum has summarized yet matches every BRIN scan, so without this the scans
    of a chunk being written read all of it, every pass. Older chunks are left to vacuum:
    their unsummarized ranges are only what was appended to them lately, which a scan must
    read anyway. Only the indexes this role may summarize (its own, or its role's): an app
    role that does not own the tables (docs/deployment.md) rolls up as before, by reading the
    unsummarized ranges, rather than failing every pass.
    """
    conn.execute(
        "SELECT brin_summarize_new_values(i.indexrelid)"
        " FROM timescaledb_information.chunks c"
        " JOIN pg_class r ON r.relname = c.chunk_name"
        " JOIN pg_namespace n ON n.oid = r.relnamespace AND n.nspname = c.chunk_schema"
        " JOIN pg_index i ON i.indrelid = r.oid"
        " JOIN pg_class ir ON ir.oid = i.indexrelid"
        " WHERE c.hypertable_name = 'ticks' AND c.range_end > now() - INTERVAL '1 day'"
        " AND ir.relam = (SELECT oid FROM pg_am WHERE amname = 'brin')"
        " AND pg_has_role(ir.relowner, 'USAGE')"
    )


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


def _rollup(
    conn: psycopg.Connection, layer: _Layer, start: datetime | None, end: datetime | None
) -> int:
    """Advance one layer; returns how many buckets it (re)wrote."""
    state = conn.execute(
        f"""
        SELECT watermark,
               changed_since,
               -- least() and greatest() pass over NULLs: no end means up to the open bucket.
               -- A bucket that `end` cuts stays live (as Community's refresh window does):
               -- rounding up would let the 5-minute layer pass 1-minute buckets not yet stored.
               greatest(watermark, least(
                   time_bucket(INTERVAL '{layer.width}', now()),
                   time_bucket(INTERVAL '{layer.width}', %(end)s::timestamptz))),
               time_bucket(INTERVAL '{layer.width}', %(start)s::timestamptz),
               -- A transaction still running may yet commit late ticks: the next pass looks
               -- at everything inserted since the oldest writing one started. One that has
               -- not written yet stamps its rows later (inserted_at is clock_timestamp());
               -- the margin covers the instant between that stamp and its first write.
               least(now(), (SELECT min(xact_start) FROM pg_stat_activity
                             WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()))
                   - INTERVAL '10 seconds',
               -- What this pass can see: the next pass takes for late only what it could not.
               snapshot, pg_current_snapshot()
        FROM bar_rollup_state WHERE relation = %(view)s FOR UPDATE""",
        {"view": layer.view, "start": start, "end": end},
    ).fetchone()
    if state is None:
        raise RuntimeError(
            f"bar_rollup_state has no row for {layer.view}: run tickvault db migrate"
        )
    watermark, changed_since, new_watermark, window_start, next_changed_since = state[:5]
    seen, next_seen = state[5:]

    written = _rebuild_range(conn, layer, watermark, new_watermark)
    if start is not None or end is not None:
        window_end = new_watermark if end is None else min(new_watermark, _ceil(conn, layer, end))
        written += _rebuild_range(conn, layer, window_start, window_end)
    if watermark is not None:
        written += _rebuild_late(conn, layer, watermark, changed_since, seen)
    conn.execute(
        "UPDATE bar_rollup_state SET watermark = %s, changed_since = %s, snapshot = %s,"
        " refreshed_at = now() WHERE relation = %s",
        [new_watermark, next_changed_since, next_seen, layer.view],
    )
    return written


def _ceil(conn: psycopg.Connection, layer: _Layer, moment: datetime) -> datetime:
    (value,) = conn.execute(
        f"SELECT time_bucket(INTERVAL '{layer.width}', %s - INTERVAL '1 microsecond')"
        f" + INTERVAL '{layer.width}'",
        [moment],
    ).fetchone()
    return value


def _rebuild_range(
    conn: psycopg.Connection, layer: _Layer, low: datetime | None, high: datetime
) -> int:
    """Replace every bucket in [low, high), including ones whose source rows are gone.

    A `low` of None means from the beginning of time.
    """
    if low is not None and low >= high:
        return 0
    bounds = {"low": low, "high": high}
    above_low = "(%(low)s::timestamptz IS NULL OR {time} >= %(low)s)"
    _record_touched(
        conn,
        layer,
        f"DELETE FROM {layer.view}_store WHERE"
        f" {above_low.format(time='bucket')} AND bucket < %(high)s",
        bounds,
    )
    with _index_scans(conn, layer):
        return _insert_aggregate(
            conn,
            layer,
            f"{layer.source} WHERE {above_low.format(time=layer.time)} AND {layer.time} < %(high)s",
            bounds,
        )


@contextmanager
def _index_scans(conn: psycopg.Connection, layer: _Layer) -> Iterator[None]:
    """Within it, a layer that reads the ticks reads them through their indexes.

    The planner's row estimates for a chunk being written are those of its last ANALYZE, so
    it took a sequential scan of the whole chunk for a minute's ticks, and for the few late
    ones (1.7 µs of server CPU per tick written at 90k ticks/s, BENCHMARKS.md); the BRIN
    ranges (summarized by `_summarize_new_tick_ranges`) and the (instrument_key, ts) b-tree
    find them without it.
    """
    if not layer.reads_ticks:
        yield
        return
    (before,) = conn.execute(
        "SELECT current_setting('enable_seqscan'), set_config('enable_seqscan', 'off', true)"
    ).fetchone()[:1]
    try:
        yield
    finally:
        conn.execute("SELECT set_config('enable_seqscan', %s, true)", [before])


def _rebuild_late(
    conn: psycopg.Connection,
    layer: _Layer,
    watermark: datetime,
    changed_since: datetime | None,
    seen: str | None,
) -> int:
    """Re-aggregate buckets below the old watermark whose source changed since the last pass.

    A tick is late unless the last pass surely saw it: its xid (as an xid8, the current one
    less its age) is below the xmin of that pass's snapshot `seen`, where every transaction
    had ended. Not `pg_visible_in_snapshot`: a snapshot lists only top-level xids as running,
    so it takes the row of a savepoint (a subtransaction's xid, above its parent's) in a
    transaction still open then for seen, and that tick was never rolled up
    (tests/test_bars.py). The `inserted_at` bound, with its margin, is what lets the BRIN
    index skip the older ranges; alone it also took the ticks the last pass did see for
    late, and re-aggregated the minute just rolled up, every instrument of it, in each pass
    within the margin.
    """
    conn.execute("TRUNCATE _bars_dirty")
    if layer.reads_ticks:
        with _index_scans(conn, layer):
            conn.execute(
                "INSERT INTO _bars_dirty SELECT DISTINCT instrument_key,"
                " time_bucket(INTERVAL '1 minute', ts) FROM ticks"
                " WHERE inserted_at >= %(since)s AND ts < %(watermark)s"
                " AND (%(seen)s::pg_snapshot IS NULL"
                " OR pg_current_xact_id()::text::bigint - age(xmin)"
                " >= pg_snapshot_xmin(%(seen)s::pg_snapshot)::text::bigint)",
                {"since": changed_since or watermark, "watermark": watermark, "seen": seen},
            )
    else:
        conn.execute(
            "INSERT INTO _bars_dirty SELECT DISTINCT instrument_key, bucket FROM _bars_touched"
            " WHERE bucket < %s",
            [watermark],
        )
    store = f"{layer.view}_store"
    _record_touched(
        conn,
        layer,
        f"DELETE FROM {store} USING _bars_dirty d"
        f" WHERE {store}.instrument_key = d.instrument_key"
        f" AND {store}.bucket = d.bucket",
        {},
    )
    return _insert_aggregate(
        conn,
        layer,
        f"_bars_dirty d JOIN {layer.source} ON src.instrument_key = d.instrument_key"
        f" AND {layer.time} >= d.bucket AND {layer.time} < d.bucket + INTERVAL '{layer.width}'",
        {},
    )


def _insert_aggregate(
    conn: psycopg.Connection, layer: _Layer, from_where: str, params: dict[str, object]
) -> int:
    (count,) = _record_touched(
        conn,
        layer,
        f"INSERT INTO {layer.view}_store (instrument_key, {', '.join(layer.columns)})"
        f" SELECT src.instrument_key, time_bucket(INTERVAL '{layer.width}', {layer.time}),"
        f" {layer.aggregates} FROM {from_where} GROUP BY 1, 2",
        params,
    )
    return count


def _record_touched(
    conn: psycopg.Connection, layer: _Layer, statement: str, params: dict[str, object]
) -> tuple[int]:
    """Run a DELETE/INSERT on a store; 1-minute buckets it touches mark their 5-minute bucket."""
    row = conn.execute(
        f"WITH changed AS ({statement} RETURNING {layer.view}_store.instrument_key,"
        f" {layer.view}_store.bucket),"
        " marked AS (INSERT INTO _bars_touched SELECT instrument_key,"
        " time_bucket(INTERVAL '5 minutes', bucket) FROM changed"
        f" WHERE {'true' if layer.view == BAR_VIEWS['1m'] else 'false'})"
        " SELECT count(*) FROM changed",
        params,
    ).fetchone()
    return (row[0] if row else 0,)


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
