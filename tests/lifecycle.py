"""Ticks of past IST days for the archive and retention tests, and the figures to check."""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta

import psycopg

from core.ist import day_bounds, ist_today
from store.bars import refresh_bars

KEYS = ("NSE_EQ|INE009A01021", "NSE_FO|49081", "NSE_INDEX|Nifty 50")


def days_ago(days: int) -> date:
    return ist_today() - timedelta(days=days)


def insert_day(url: str, day: date, per_key: int = 400) -> int:
    """`per_key` ticks of each instrument through the day's session (09:15 IST on, one a
    second), with NULLs where an index has no depth, two ticks at the same instant and a
    negative zero; the rows written."""
    start, _ = day_bounds(day)
    session = start + timedelta(hours=9, minutes=15)
    with psycopg.connect(url, autocommit=True) as conn:
        for position, key in enumerate(KEYS):
            index = key.startswith("NSE_INDEX")
            conn.execute(
                "INSERT INTO ticks (instrument_key, ts, ltp, ltq, vtt, volume_delta, cp, atp,"
                " oi, bid_price, bid_qty, ask_price, ask_qty, delta, feed_ts, received_at)"
                " SELECT %(key)s, %(session)s + least(n, %(n)s - 2) * interval '1 second',"
                "  1000 + %(p)s * 7.25 + sin(n) * 3.1 + n / 3.0, n %% 50, 100 * n, n %% 50,"
                "  999.95, 1000.5 + n / 7.0, CASE WHEN n %% 3 = 0 THEN NULL ELSE n * 1.5 END,"
                "  CASE WHEN %(index)s THEN NULL ELSE 999.9 + n / 11.0 END,"
                "  CASE WHEN %(index)s THEN NULL ELSE n END,"
                "  CASE WHEN %(index)s THEN NULL ELSE 1000.1 + n / 13.0 END,"
                "  CASE WHEN %(index)s THEN NULL ELSE n + 1 END,"
                "  CASE WHEN n = 5 THEN -0.0::float8 ELSE n / 1000.0 END,"
                "  %(session)s + n * interval '1 second' + interval '3 milliseconds',"
                "  %(session)s + n * interval '1 second' + interval '20 milliseconds'"
                " FROM generate_series(0, %(n)s - 1) AS n",
                {"key": key, "session": session, "n": per_key, "p": position, "index": index},
            )
    return per_key * len(KEYS)


def ticks_of_day(url: str, day: date) -> list[tuple]:
    start, end = day_bounds(day)
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT instrument_key, ts, ltp, ltq, vtt, oi, delta, received_at FROM ticks"
            " WHERE ts >= %s AND ts < %s ORDER BY instrument_key, ts, received_at",
            [start, end],
        ).fetchall()


def bars_of_day(url: str, day: date) -> list[tuple]:
    start, end = day_bounds(day)
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT 1, * FROM ohlc_1m WHERE bucket >= %(s)s AND bucket < %(e)s"
            " UNION ALL SELECT 5, * FROM ohlc_5m WHERE bucket >= %(s)s AND bucket < %(e)s"
            " ORDER BY 1, 2, 3",
            {"s": start, "e": end},
        ).fetchall()


def roll_up_bars(url: str, start: datetime) -> None:
    """Materialize the bars of ticks from `start` on, as the rollup or the refresh policy had
    while they came."""
    with psycopg.connect(url, autocommit=True) as conn:
        for attempt in range(50):  # Community: the refresh policy may be running just now
            try:
                refresh_bars(conn, start, None)
                return
            except psycopg.errors.LockNotAvailable:
                if attempt == 49:
                    raise
                time.sleep(0.2)
