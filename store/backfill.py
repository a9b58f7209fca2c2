"""Backfilled 1-minute bars: Upstox's candles for the minutes the store did not hear whole.

They go into `ohlc_1m_backfill` (sql/012_bars_source.sql) and show in `ohlc_1m` with
`source = 'backfill'`, and in the `ohlc_5m` bucket that holds them, by the rule of
sql/018_bars_repair_partial_minutes.sql: in a minute no coverage span covers whole the candle
replaces the part the ticks heard; in a covered minute the ticks win and the candle shows only
while the minute has none.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple

import psycopg


class MinuteBar(NamedTuple):
    """One candle as backfill stores it: the minute it starts and its values."""

    bucket: datetime
    open: float
    high: float
    low: float
    close: float
    volume: int | None
    oi: float | None


_STORE = """
INSERT INTO ohlc_1m_backfill AS b (instrument_key, bucket, open, high, low, close, volume, oi)
SELECT %(key)s, c.bucket, c.open, c.high, c.low, c.close, c.volume, c.oi
FROM unnest(%(buckets)s::timestamptz[], %(opens)s::float8[], %(highs)s::float8[],
            %(lows)s::float8[], %(closes)s::float8[], %(volumes)s::bigint[], %(ois)s::float8[])
     AS c(bucket, open, high, low, close, volume, oi)
WHERE NOT minute_covered(c.bucket) OR NOT minute_has_ticks(%(key)s, c.bucket)
ON CONFLICT (instrument_key, bucket) DO UPDATE SET
    open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
    volume = EXCLUDED.volume, oi = EXCLUDED.oi, fetched_at = now()
WHERE (b.open, b.high, b.low, b.close, b.volume, b.oi)
      IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close,
                        EXCLUDED.volume, EXCLUDED.oi)
"""


def store_minute_bars(
    conn: psycopg.Connection, instrument_key: str, bars: Iterable[MinuteBar]
) -> int:
    """Store the candles that count (those of minutes no span covers whole, and of minutes
    in which `instrument_key` has no tick); how many were new or changed.

    A candle for a covered minute with ticks is left out (the live bucket is what counts);
    one stored already is replaced only when Upstox now says otherwise, so a backfill can run
    any number of times.
    """
    bars = list(bars)
    if not bars:
        return 0
    names = ("buckets", "opens", "highs", "lows", "closes", "volumes", "ois")
    columns = {
        name: list(column) for name, column in zip(names, zip(*bars, strict=True), strict=True)
    }
    cursor = conn.execute(_STORE, {"key": instrument_key, **columns})
    return cursor.rowcount


def backfilled_minutes(
    conn: psycopg.Connection, instrument_key: str, buckets: Sequence[datetime]
) -> set[datetime]:
    """Those of `buckets` that ohlc_1m shows from backfill now."""
    rows = conn.execute(
        "SELECT bucket FROM ohlc_1m_filled WHERE instrument_key = %s AND bucket = ANY(%s)",
        [instrument_key, list(buckets)],
    )
    return {row[0] for row in rows}
