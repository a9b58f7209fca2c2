"""The market calendar on a real database: sessions, holidays, the fallback, segment statuses."""

from __future__ import annotations

from datetime import date, datetime

import psycopg
import pytest

from store import calendar
from store.calendar import IST


def ist(day: date, hh: int, mm: int) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=IST)


MONDAY = date(2026, 11, 23)
SATURDAY = date(2026, 11, 28)


def test_unknown_days_fall_back_to_regular_weekday_hours(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        assert calendar.trading_sessions(conn, MONDAY) == [
            (ist(MONDAY, 9, 15), ist(MONDAY, 15, 30))
        ]
        assert calendar.trading_sessions(conn, MONDAY, "BSE") == [
            (ist(MONDAY, 9, 15), ist(MONDAY, 15, 30))
        ]
        assert calendar.trading_sessions(conn, SATURDAY) == []
        with pytest.raises(ValueError, match="unknown exchange 'XYZ'"):
            calendar.trading_sessions(conn, MONDAY, "XYZ")


def test_a_known_day_overrides_the_fallback_per_exchange(db_url: str) -> None:
    half_day = [(ist(MONDAY, 9, 15), ist(MONDAY, 13, 0))]
    with psycopg.connect(db_url, autocommit=True) as conn:
        calendar.save_day(conn, MONDAY, "NSE", half_day, "timings")
        calendar.save_day(conn, MONDAY, "BSE", [], "holidays", "TRADING_HOLIDAY", "A holiday")
        assert calendar.trading_sessions(conn, MONDAY) == half_day
        assert calendar.trading_sessions(conn, MONDAY, "BSE") == []
        # Saving the day again replaces its sessions, it does not add to them.
        calendar.save_day(
            conn, MONDAY, "NSE", [(ist(MONDAY, 9, 15), ist(MONDAY, 15, 30))], "timings"
        )
        assert calendar.trading_sessions(conn, MONDAY) == [
            (ist(MONDAY, 9, 15), ist(MONDAY, 15, 30))
        ]
        by_exchange = {day.exchange: day for day in calendar.day_calendar(conn, MONDAY)}
    assert by_exchange["BSE"].source == "holidays"
    assert by_exchange["BSE"].description == "A holiday"
    assert by_exchange["NSE"].source == "timings"
    assert by_exchange["MCX"].source == "fallback"
    assert by_exchange["MCX"].sessions == [(ist(MONDAY, 9, 0), ist(MONDAY, 23, 30))]


def test_segment_status_is_logged_only_when_it_changes(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        t0 = ist(MONDAY, 9, 15)
        assert calendar.record_segment_status(conn, "NSE_EQ", "NORMAL_OPEN", t0)
        assert not calendar.record_segment_status(conn, "NSE_EQ", "NORMAL_OPEN", ist(MONDAY, 9, 16))
        assert calendar.record_segment_status(conn, "NSE_EQ", "NORMAL_CLOSE", ist(MONDAY, 15, 30))
        assert calendar.record_segment_status(conn, "NSE_FO", "NORMAL_OPEN", t0)
        with pytest.raises(ValueError, match="unknown segment status"):
            calendar.record_segment_status(conn, "NSE_EQ", "OPEN", t0)
        latest = calendar.segment_statuses(conn)
        count = conn.execute("SELECT count(*) FROM market_segment_status").fetchone()
    assert latest == {
        "NSE_EQ": ("NORMAL_CLOSE", ist(MONDAY, 15, 30)),
        "NSE_FO": ("NORMAL_OPEN", t0),
    }
    assert count == (3,)
