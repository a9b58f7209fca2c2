"""The market calendar: which spans of an IST day each exchange trades, and live segment status.

The ingest fills `market_days` / `market_sessions` from Upstox's timings and holidays
(sql/010_market_calendar.sql) and records the feed's `market_info` segment statuses as they
change. Coverage, backfill and the audit ask `trading_sessions()` which minutes of a day were
supposed to trade, so a holiday is never reported as a gap and a Muhurat session is.

When the calendar holds no row for a day and exchange (never fetched: the ingest was not
running, or the day is too far ahead), `trading_sessions()` falls back to the exchange's regular
hours on Monday to Friday and nothing on weekends. The fallback knows no holidays: a weekday
holiday that was never fetched looks like a normal day.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Literal

import psycopg

from core.ist import IST

# India has no daylight saving: a fixed offset is IST on every date.

# The regular session of each exchange Upstox names, IST; used only where the calendar is
# silent. MCX closes at 23:30 (23:55 while the US is on standard time; the fallback cannot
# know which, so it takes the shorter one).
REGULAR_HOURS: dict[str, tuple[time, time]] = {
    "NSE": (time(9, 15), time(15, 30)),
    "NFO": (time(9, 15), time(15, 30)),
    "BSE": (time(9, 15), time(15, 30)),
    "BFO": (time(9, 15), time(15, 30)),
    "CDS": (time(9, 0), time(17, 0)),
    "BCD": (time(9, 0), time(17, 0)),
    "MCX": (time(9, 0), time(23, 30)),
}

Source = Literal["timings", "holidays"]
# Where a day's sessions come from: Upstox's timings or holidays (fetched), or the fallback
# (never fetched: the regular weekday hours, no holidays known).
DaySource = Literal["timings", "holidays", "fallback"]
SEGMENT_STATUSES = (
    "PRE_OPEN_START",
    "PRE_OPEN_END",
    "NORMAL_OPEN",
    "NORMAL_CLOSE",
    "CLOSING_START",
    "CLOSING_END",
)

Session = tuple[datetime, datetime]


@dataclass(frozen=True)
class ExchangeDay:
    """One exchange's day: its sessions and where we learnt them.

    `source` is `timings` or `holidays` when the calendar holds the day, `fallback` when the
    sessions are the regular weekday hours because it does not.
    """

    exchange: str
    source: DaySource
    sessions: list[Session]
    holiday_type: str | None = None
    description: str | None = None


def regular_sessions(day: date, exchange: str = "NSE") -> list[Session]:
    """The exchange's regular hours on a weekday, nothing on Saturday or Sunday."""
    try:
        opens, closes = REGULAR_HOURS[exchange]
    except KeyError:
        raise ValueError(
            f"unknown exchange {exchange!r}; one of {', '.join(REGULAR_HOURS)}"
        ) from None
    if day.weekday() >= 5:
        return []
    return [(datetime.combine(day, opens, IST), datetime.combine(day, closes, IST))]


def trading_sessions(
    conn: psycopg.Connection, day: date, exchange: str = "NSE"
) -> list[tuple[datetime, datetime]]:
    """The sessions of IST `day` on `exchange`, in order: (start inclusive, end exclusive).

    [] on a holiday without a special session. With no calendar row for that day and exchange,
    the regular weekday hours (see the module docstring).
    """
    known = conn.execute(
        "SELECT 1 FROM market_days WHERE trading_date = %s AND exchange = %s", [day, exchange]
    ).fetchone()
    if known is None:
        return regular_sessions(day, exchange)
    rows = conn.execute(
        "SELECT start_at, end_at FROM market_sessions"
        " WHERE trading_date = %s AND exchange = %s ORDER BY start_at",
        [day, exchange],
    ).fetchall()
    return [(start.astimezone(IST), end.astimezone(IST)) for start, end in rows]


def save_day(
    conn: psycopg.Connection,
    day: date,
    exchange: str,
    sessions: Sequence[Session],
    source: Source,
    holiday_type: str | None = None,
    description: str | None = None,
) -> None:
    """Replace what the calendar holds for `day` on `exchange` (its sessions included)."""
    for start, end in sessions:
        if start.tzinfo is None or end <= start:
            raise ValueError(f"a session must be tz-aware and end after it starts: {start}-{end}")
    with conn.transaction():
        conn.execute(
            "INSERT INTO market_days (trading_date, exchange, source, holiday_type, description)"
            " VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (trading_date, exchange) DO UPDATE SET source = EXCLUDED.source,"
            " holiday_type = EXCLUDED.holiday_type, description = EXCLUDED.description,"
            " fetched_at = now()",
            [day, exchange, source, holiday_type, description],
        )
        conn.execute(
            "DELETE FROM market_sessions WHERE trading_date = %s AND exchange = %s",
            [day, exchange],
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO market_sessions (trading_date, exchange, start_at, end_at)"
                " VALUES (%s, %s, %s, %s)",
                [(day, exchange, start, end) for start, end in sessions],
            )


def day_calendar(conn: psycopg.Connection, day: date) -> list[ExchangeDay]:
    """Every exchange's day, by exchange: those the calendar holds, the rest from the fallback."""
    rows = conn.execute(
        "SELECT d.exchange, d.source, d.holiday_type, d.description,"
        " coalesce(array_agg(s.start_at ORDER BY s.start_at)"
        "  FILTER (WHERE s.start_at IS NOT NULL), '{}'),"
        " coalesce(array_agg(s.end_at ORDER BY s.start_at)"
        "  FILTER (WHERE s.start_at IS NOT NULL), '{}')"
        " FROM market_days d LEFT JOIN market_sessions s USING (trading_date, exchange)"
        " WHERE d.trading_date = %s GROUP BY d.exchange, d.source, d.holiday_type, d.description",
        [day],
    ).fetchall()
    known = {
        exchange: ExchangeDay(
            exchange,
            source,
            [(s.astimezone(IST), e.astimezone(IST)) for s, e in zip(starts, ends, strict=True)],
            holiday_type,
            description,
        )
        for exchange, source, holiday_type, description, starts, ends in rows
    }
    for exchange in REGULAR_HOURS:
        known.setdefault(
            exchange, ExchangeDay(exchange, "fallback", regular_sessions(day, exchange))
        )
    return [known[exchange] for exchange in sorted(known)]


def record_segment_status(
    conn: psycopg.Connection, segment: str, status: str, at: datetime
) -> bool:
    """Log `segment` in `status` at `at` unless that is already its latest status.

    True when a row was added. A repeated market_info frame (one comes with every connect)
    therefore adds nothing.
    """
    if status not in SEGMENT_STATUSES:
        raise ValueError(f"unknown segment status {status!r}")
    row = conn.execute(
        "INSERT INTO market_segment_status (segment, status, at)"
        " SELECT %(segment)s, %(status)s, %(at)s WHERE %(status)s IS DISTINCT FROM ("
        "  SELECT status FROM market_segment_status WHERE segment = %(segment)s"
        "  ORDER BY at DESC LIMIT 1)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        {"segment": segment, "status": status, "at": at},
    ).fetchone()
    return row is not None


def segment_statuses(conn: psycopg.Connection) -> dict[str, tuple[str, datetime]]:
    """The latest recorded status of every segment, with the time it changed to it."""
    rows = conn.execute(
        "SELECT DISTINCT ON (segment) segment, status, at FROM market_segment_status"
        " ORDER BY segment, at DESC"
    ).fetchall()
    return {segment: (status, at) for segment, status, at in rows}
