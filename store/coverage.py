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


_GAPS = """
WITH minutes AS (
    SELECT m
    FROM unnest(%(opens)s::timestamptz[], %(closes)s::timestamptz[]) AS s(opens, closes),
         generate_series(s.opens, s.closes - INTERVAL '1 minute', INTERVAL '1 minute') AS m
    WHERE m + INTERVAL '1 minute' <= %(until)s
),
uncovered AS (
    SELECT m FROM minutes
    WHERE NOT EXISTS (
        SELECT FROM coverage_spans AS c
        WHERE c.ended_at >= m + INTERVAL '1 minute' AND c.started_at <= m
    )
),
-- Runs of uncovered minutes, the same for every instrument: the ticks and backfilled minutes
-- inside them are read by time range, never probed minute by minute.
stretches AS (
    SELECT min(m) AS opens, max(m) + INTERVAL '1 minute' AS closes
    FROM (SELECT m, m - INTERVAL '1 minute' * row_number() OVER (ORDER BY m) AS run
          FROM uncovered) AS u
    GROUP BY run
),
heard AS (
    SELECT DISTINCT t.instrument_key, time_bucket(INTERVAL '1 minute', t.ts) AS m
    FROM stretches AS r JOIN ticks AS t ON t.ts >= r.opens AND t.ts < r.closes
),
backfilled AS (
    SELECT b.instrument_key, b.bucket AS m
    FROM stretches AS r JOIN ohlc_1m_backfill AS b ON b.bucket >= r.opens AND b.bucket < r.closes
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
)
SELECT g.instrument_key, coalesce(i.trading_symbol, g.instrument_key), g.start, g.end_,
       g.minutes, g.backfilled, g.heard
FROM (
    SELECT x.instrument_key, min(x.m) AS start, max(x.m) + INTERVAL '1 minute' AS end_,
           count(*) AS minutes,
           -- A gap minute's candle shows, ticks or not (sql/018_bars_repair_partial_minutes.sql).
           count(b.m) AS backfilled,
           count(h.m) AS heard
    FROM missing AS x
    LEFT JOIN heard AS h ON h.instrument_key = x.instrument_key AND h.m = x.m
    LEFT JOIN backfilled AS b ON b.instrument_key = x.instrument_key AND b.m = x.m
    GROUP BY x.instrument_key, x.run
) AS g
LEFT JOIN instruments AS i ON i.instrument_key = g.instrument_key
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
    rows = conn.execute(
        _GAPS,
        {
            "opens": [opens for opens, _ in sessions],
            "closes": [closes for _, closes in sessions],
            "keys": None if keys is None else list(keys),
            "until": until or _now(conn),
        },
    ).fetchall()
    return [Gap(*row) for row in rows]


def gaps_of_day(
    conn: psycopg.Connection,
    day: date,
    keys: Sequence[str] | None = None,
    until: datetime | None = None,
) -> list[Gap]:
    """The gaps of the trading day `day` (its NSE sessions), up to `until` (default: now)."""
    return gaps(conn, trading_sessions(conn, day), keys, until)


def _now(conn: psycopg.Connection) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]
