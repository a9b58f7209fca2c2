"""The market calendar on a real database: sessions, holidays, the fallback, segment statuses."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from core.ist import IST
from ingest.jobs.calendar import CalendarError, CalendarKeeper, parse_holidays
from ingest.simulator import FeedSimulator
from ingest.simulator.calendar_api import default_holidays
from store import calendar
from tests.conftest import DbServer
from tests.test_api import client, live_api, wait_for


def ist(day: date, hh: int, mm: int) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=IST)


MONDAY = date(2026, 11, 23)
SATURDAY = date(2026, 11, 28)


def test_unknown_days_fall_back_to_regular_weekday_hours(edition_db_url: str) -> None:
    with psycopg.connect(edition_db_url) as conn:
        assert calendar.trading_sessions(conn, MONDAY) == [
            (ist(MONDAY, 9, 15), ist(MONDAY, 15, 30))
        ]
        assert calendar.trading_sessions(conn, MONDAY, "BSE") == [
            (ist(MONDAY, 9, 15), ist(MONDAY, 15, 30))
        ]
        assert calendar.trading_sessions(conn, SATURDAY) == []
        with pytest.raises(ValueError, match="unknown exchange 'XYZ'"):
            calendar.trading_sessions(conn, MONDAY, "XYZ")


def test_a_known_day_overrides_the_fallback_per_exchange(edition_db_url: str) -> None:
    half_day = [(ist(MONDAY, 9, 15), ist(MONDAY, 13, 0))]
    with psycopg.connect(edition_db_url, autocommit=True) as conn:
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


def test_segment_status_is_logged_only_when_it_changes(edition_db_url: str) -> None:
    with psycopg.connect(edition_db_url, autocommit=True) as conn:
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


# --- parsing Upstox's answers ----------------------------------------------------------------


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


MUHURAT_DAY = date(2024, 11, 1)
MUHURAT = (ist(MUHURAT_DAY, 18, 0), ist(MUHURAT_DAY, 19, 0))


def test_a_holiday_with_a_muhurat_session_is_read_per_exchange() -> None:
    data = [
        {
            "date": "2024-11-01",
            "description": "Diwali Laxmi Pujan",
            "holiday_type": "TRADING_HOLIDAY",
            "closed_exchanges": ["NSE", "CDS"],
            "open_exchanges": [
                {
                    "exchange": "NSE",
                    "start_time": epoch_ms(MUHURAT[0]),
                    "end_time": epoch_ms(MUHURAT[1]),
                },
                {
                    "exchange": "MCX",
                    "start_time": epoch_ms(MUHURAT[0]),
                    "end_time": epoch_ms(MUHURAT[1]),
                },
            ],
        },
        {
            "date": "2024-12-25",
            "description": "Christmas",
            "holiday_type": "TRADING_HOLIDAY",
            "closed_exchanges": ["NSE"],
            "open_exchanges": [],
        },
    ]
    records = {(r.day, r.exchange): r for r in parse_holidays(data)}
    assert set(records) == {
        (MUHURAT_DAY, "NSE"),
        (MUHURAT_DAY, "CDS"),
        (MUHURAT_DAY, "MCX"),
        (date(2024, 12, 25), "NSE"),
    }
    # NSE is both closed and open: the special session counts.
    assert records[MUHURAT_DAY, "NSE"].sessions == [MUHURAT]
    assert records[MUHURAT_DAY, "CDS"].sessions == []
    assert records[MUHURAT_DAY, "MCX"].description == "Diwali Laxmi Pujan"
    assert records[date(2024, 12, 25), "NSE"].sessions == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"date": "2024-11-01"}, "a list of holidays"),
        ([{"date": "tomorrow"}], "YYYY-MM-DD"),
        ([{"date": "2024-11-01", "closed_exchanges": "NSE"}], "closed_exchanges"),
        (
            [{"date": "2024-11-01", "open_exchanges": [{"exchange": "NSE", "start_time": "6pm"}]}],
            "epoch milliseconds",
        ),
        (
            [
                {
                    "date": "2024-11-01",
                    "open_exchanges": [{"exchange": "NSE", "start_time": 2, "end_time": 1}],
                }
            ],
            "ends before it starts",
        ),
    ],
)
def test_unreadable_holidays_are_refused_with_the_reason(data: object, message: str) -> None:
    with pytest.raises(CalendarError, match=message):
        parse_holidays(data)


# --- the simulator's endpoints, fetched and stored by the ingest's keeper ---------------------


@contextmanager
def connect_to(url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def test_the_keeper_stores_the_simulators_timings_and_holidays(edition_db_url: str) -> None:
    today = datetime.now(IST).date()
    muhurat = next(h for h in default_holidays(today.year) if h.open_exchanges)
    if muhurat.day == today:
        pytest.skip("today is the simulator's Muhurat day, which it reports as a normal day")

    async def scenario() -> None:
        async with FeedSimulator(rate=100) as simulator:
            keeper = CalendarKeeper(simulator.url, "", lambda: connect_to(edition_db_url), {})
            assert await keeper.refresh(today) > 0
            await keeper.aclose()

    asyncio.run(scenario())
    with psycopg.connect(edition_db_url) as conn:
        # Today trades all day in the simulator, on every exchange.
        midnight = datetime.combine(today, datetime.min.time(), IST)
        whole_day = [(midnight, midnight + timedelta(days=1))]
        assert calendar.trading_sessions(conn, today) == whole_day
        assert calendar.trading_sessions(conn, today, "MCX") == whole_day
        # The holiday list reaches past the days fetched: the Muhurat evening, per exchange.
        start, end = muhurat.open_exchanges["NSE"]
        assert calendar.trading_sessions(conn, muhurat.day) == [
            (
                midnight_of(muhurat.day) + timedelta(minutes=start),
                midnight_of(muhurat.day) + timedelta(minutes=end),
            )
        ]
        assert calendar.trading_sessions(conn, muhurat.day, "CDS") == []
        days = {d.exchange: d for d in calendar.day_calendar(conn, muhurat.day)}
        assert days["NSE"].source == "holidays"
        assert days["NSE"].description == muhurat.description


def midnight_of(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), IST)


def test_a_failed_refresh_stores_nothing(db_url: str) -> None:
    async def scenario() -> None:
        async with FeedSimulator(rate=100) as simulator:
            # Not the market API: every calendar path answers 404 there.
            keeper = CalendarKeeper(simulator.url + "/nowhere", "", lambda: connect_to(db_url), {})
            with pytest.raises(httpx.HTTPStatusError):
                await keeper.refresh(MONDAY)
            await keeper.aclose()

    asyncio.run(scenario())
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM market_days").fetchone() == (0,)


def test_the_simulator_answers_like_upstox() -> None:
    async def scenario() -> None:
        async with (
            FeedSimulator(rate=100) as simulator,
            httpx.AsyncClient(base_url=simulator.url) as http,
        ):
            status = (await http.get("/v2/market/status/NSE")).json()
            assert status["data"]["status"] == "NORMAL_OPEN"
            bad_date = await http.get("/v2/market/timings/2024-13-01")
            assert bad_date.status_code == 400
            assert bad_date.json()["errors"][0]["errorCode"] == "UDAPI1088"
            bad_exchange = await http.get("/v2/market/status/NYSE")
            assert bad_exchange.json()["errors"][0]["errorCode"] == "UDAPI1089"
            weekend = (await http.get(f"/v2/market/timings/{SATURDAY}")).json()
            assert weekend == {"status": "success", "data": []}
            closed = await http.get("/_sim/market_status?NSE_EQ=NORMAL_CLOSE")
            assert closed.status_code == 200
            status = (await http.get("/v2/market/status/NSE")).json()
            assert status["data"]["status"] == "NORMAL_CLOSE"
            wrong = await http.get("/_sim/market_status?NSE_EQ=SHUT")
            assert wrong.status_code == 400

    asyncio.run(scenario())


# --- the API, with the ingest and its simulator running -------------------------------------


def test_the_calendar_endpoint_shows_the_days_sessions_and_segments_now(
    apache_server: DbServer, tmp_path: Path
) -> None:
    today = datetime.now(IST).date()
    muhurat = next(h for h in default_holidays(today.year) if h.open_exchanges)
    with live_api(apache_server, tmp_path) as base, client(base) as http:
        # The ingest fetched today's calendar at start and logged the feed's segment statuses.
        wait_for(lambda: http.get("/api/v1/market/calendar").json()["segments"], 30)
        body = http.get("/api/v1/market/calendar").json()
        assert body["date"] == today.isoformat()
        nse = next(day for day in body["exchanges"] if day["exchange"] == "NSE")
        assert nse["source"] == "timings"
        assert nse["open_now"] is True
        assert [datetime.fromisoformat(s["start"]) for s in nse["sessions"]] == [midnight_of(today)]
        segments = {s["segment"]: s["status"] for s in body["segments"]}
        assert segments == {
            "NSE_EQ": "NORMAL_OPEN",
            "NSE_FO": "NORMAL_OPEN",
            "NSE_INDEX": "NORMAL_OPEN",
        }

        if muhurat.day != today:
            day = http.get("/api/v1/market/calendar", params={"date": str(muhurat.day)}).json()
            by_exchange = {d["exchange"]: d for d in day["exchanges"]}
            assert by_exchange["NSE"]["source"] == "holidays"
            assert by_exchange["NSE"]["description"] == muhurat.description
            assert len(by_exchange["NSE"]["sessions"]) == 1
            assert by_exchange["CDS"]["sessions"] == []

        unknown = http.get("/api/v1/market/calendar", params={"date": "2031-01-06"}).json()
        nse = next(day for day in unknown["exchanges"] if day["exchange"] == "NSE")
        assert nse["source"] == "fallback"
        assert nse["sessions"] == [
            {"start": "2031-01-06T09:15:00+05:30", "end": "2031-01-06T15:30:00+05:30"}
        ]
        assert nse["open_now"] is False

        for bad in ("2031-02-30", "0", "2031-1-6"):
            answer = http.get("/api/v1/market/calendar", params={"date": bad})
            assert answer.status_code == 422, bad

        status = http.get("/api/v1/websocket/status").json()
        assert status["pipeline"]["market_status"]["NSE_EQ"] == "NORMAL_OPEN"
        assert status["feed"]["stalls"] == [0]
        assert status["feed"]["last_data_age_s"][0] < 5
        metrics = http.get("/metrics").text
        assert 'tickvault_feed_stalls_total{connection="0"} 0.0' in metrics
        assert 'tickvault_feed_last_data_age_seconds{connection="0"}' in metrics
