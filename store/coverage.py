"""When the store was receiving, and the gaps that leaves.

The ingest records spans in `coverage_spans` (sql/011_coverage.sql): per feed connection, from
the first to the last frame it delivered while connected. A gap is a session minute that no
span covers whole, for an instrument that was subscribed then (`subscriptions`: from its
`subscribed_at`, until it was unsubscribed, when `updated_at` records the change). A minute
with no trade inside a span is not a gap: illiquid instruments have empty minutes.

A minute a span covers only in part (the ingest stopped or started inside it) is a gap too:
its live bar, if any, holds only the ticks of the covered part, so backfill replaces it with
the exchange's candle (sql/018_bars_repair_partial_minutes.sql).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg

from store.calendar import trading_sessions


@dataclass(frozen=True)
class Gap:
    """Consecutive gap minutes of one instrument: [start, end)."""

    instrument_key: str
    symbol: str  # the trading symbol, or the key when the instrument master lacks it
    start: datetime
    end: datetime
    minutes: int
    backfilled: int  # of those minutes, how many ohlc_1m now shows from backfill
    heard: int  # of those minutes, how many have ticks (heard in part: the candle replaces them)

    @property
    def fillable(self) -> int:
        """Minutes backfill may still fill: those not backfilled yet, heard in part or not."""
        return self.minutes - self.backfilled


def open_span(conn: psycopg.Connection, connection: int, first: datetime, last: datetime) -> int:
    """Record a new span of feed connection `connection`; its id, to extend it by."""
    row = conn.execute(
        "INSERT INTO coverage_spans (connection, started_at, ended_at) VALUES (%s, %s, %s)"
        " RETURNING id",
        [connection, first, last],
    ).fetchone()
    assert row is not None
    return row[0]


def extend_span(conn: psycopg.Connection, span_id: int, last: datetime) -> None:
    """Move the end of a span to its latest frame."""
    conn.execute(
        "UPDATE coverage_spans SET ended_at = greatest(ended_at, %s) WHERE id = %s",
        [last, span_id],
    )


# Every read below is bounded by the sessions asked for, never by the tables' length: the spans
# touching them come from their range index (sql/019); ticks and backfilled minutes are read
# per gap, through each instrument's (instrument_key, ts) index, inside the sessions' chunks
# (the constant bounds let the planner exclude every other chunk); the instrument master is
# probed per gap. Reading ticks by time alone once scanned the whole index of every chunk.
GAPS_SQL = """
WITH minutes AS (
    SELECT m
    FROM unnest(%(opens)s::timestamptz[], %(closes)s::timestamptz[]) AS s(opens, closes),
         generate_series(s.opens, s.closes - INTERVAL '1 minute', INTERVAL '1 minute') AS m
    WHERE m + INTERVAL '1 minute' <= coalesce(%(until)s::timestamptz, now())
),
spans AS MATERIALIZED (
    SELECT started_at, ended_at FROM coverage_spans
    WHERE tstzrange(started_at, ended_at, '[]') && tstzrange(%(first)s, %(last)s, '[]')
),
uncovered AS (
    SELECT m FROM minutes
    WHERE NOT EXISTS (
        SELECT FROM spans AS c WHERE c.ended_at >= m + INTERVAL '1 minute' AND c.started_at <= m
    )
),
missing AS (
    SELECT s.instrument_key, u.m,
           u.m - INTERVAL '1 minute'
               * row_number() OVER (PARTITION BY s.instrument_key ORDER BY u.m) AS run
    FROM uncovered AS u
    JOIN subscriptions AS s
      ON s.subscribed_at < u.m + INTERVAL '1 minute'
     AND (s.status <> 'unsubscribed' OR s.updated_at > u.m)
    WHERE %(keys)s::text[] IS NULL OR s.instrument_key = ANY(%(keys)s::text[])
),
-- A run of consecutive gap minutes of one instrument, [start, end_): every minute in it is a
-- gap, so whatever lies in that range lies in gap minutes.
runs AS (
    SELECT instrument_key, min(m) AS start, max(m) + INTERVAL '1 minute' AS end_,
           count(*) AS minutes
    FROM missing GROUP BY instrument_key, run
)
SELECT g.instrument_key,
       coalesce((SELECT i.trading_symbol FROM instruments AS i
                 WHERE i.instrument_key = g.instrument_key), g.instrument_key),
       g.start, g.end_, g.minutes,
       -- A gap minute's candle shows, ticks or not (sql/018_bars_repair_partial_minutes.sql).
       (SELECT count(*) FROM ohlc_1m_backfill AS b
        WHERE b.instrument_key = g.instrument_key AND b.bucket >= g.start AND b.bucket < g.end_),
       (SELECT count(DISTINCT time_bucket(INTERVAL '1 minute', t.ts)) FROM ticks AS t
        WHERE t.instrument_key = g.instrument_key AND t.ts >= g.start AND t.ts < g.end_
          AND t.ts >= %(first)s AND t.ts < %(last)s)
FROM runs AS g
ORDER BY g.instrument_key, g.start
"""


def gaps(
    conn: psycopg.Connection,
    sessions: Sequence[tuple[datetime, datetime]],
    keys: Sequence[str] | None = None,
    until: datetime | None = None,
) -> list[Gap]:
    """The gaps in `sessions` ([open, close) pairs) of `keys` (default: every subscription),
    among the minutes that ended by `until` (default: now), by instrument then time."""
    rows = conn.execute(GAPS_SQL, gaps_params(sessions, keys, until)).fetchall()
    return [Gap(*row) for row in rows]


def gaps_params(
    sessions: Sequence[tuple[datetime, datetime]],
    keys: Sequence[str] | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """The parameters of the gaps query, for `gaps` and for reading its plan."""
    return {
        "opens": [opens for opens, _ in sessions],
        "closes": [closes for _, closes in sessions],
        "first": min((opens for opens, _ in sessions), default=None),
        "last": max((closes for _, closes in sessions), default=None),
        "keys": None if keys is None else list(keys),
        "until": until,
    }


def gaps_of_day(
    conn: psycopg.Connection,
    day: date,
    keys: Sequence[str] | None = None,
    until: datetime | None = None,
) -> list[Gap]:
    """The gaps of the trading day `day` (its NSE sessions), up to `until` (default: now)."""
    return gaps(conn, trading_sessions(conn, day), keys, until)
