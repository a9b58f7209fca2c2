"""Coverage spans and the gaps they leave, against a real database (Apache edition: the rules
are plain SQL, the same file on both editions)."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from pathlib import Path

import psycopg

from api.app import create_app
from core.config import Settings
from core.ist import IST
from store.backfill import MinuteBar, store_minute_bars
from store.coverage import GAPS_SQL, extend_span, gaps, gaps_params, open_span
from store.instruments import default_sample_path, load_instruments
from tests.test_api import client, serve

MINUTE = timedelta(minutes=1)
DAY_SPAN = timedelta(days=1)
DAY = datetime(2026, 11, 23).date()  # a Monday
SESSIONS = [(datetime.combine(DAY, time(9, 15), IST), datetime.combine(DAY, time(15, 30), IST))]
INFY = "NSE_EQ|INE009A01021"
TCS = "NSE_EQ|INE467B01029"


def at(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime.combine(DAY, time(hour, minute, second), IST)


def subscribe(conn: psycopg.Connection, key: str, since: datetime, until: datetime | None) -> None:
    conn.execute(
        "INSERT INTO subscriptions (instrument_key, status, subscribed_at, updated_at)"
        " VALUES (%s, %s, %s, %s)",
        [key, "subscribed" if until is None else "unsubscribed", since, until or since],
    )


def runs(found: list) -> list[tuple[str, datetime, datetime, int]]:
    return [(gap.instrument_key, gap.start, gap.end, gap.minutes) for gap in found]


def test_gaps_are_session_minutes_outside_every_span_of_subscribed_instruments(
    db_url: str,
) -> None:
    with psycopg.connect(db_url) as conn:
        subscribe(conn, INFY, at(8, 0), None)
        subscribe(conn, TCS, at(8, 0), at(12, 0, 30))  # unsubscribed at 12:00:30
        # Connection 0 from the open to 10:02:40, again from 10:05:10 to the close; connection
        # 1 heard nothing in between: a minute outside every span is a gap.
        first = open_span(conn, 0, at(9, 14, 58), at(9, 30))
        extend_span(conn, first, at(10, 2, 40))
        extend_span(conn, first, at(10, 1))  # an older end never moves it back
        open_span(conn, 0, at(10, 5, 10), at(15, 30, 1))
        open_span(conn, 1, at(11, 0), at(11, 30))
        # INFY's 10:03 and 10:05 backfilled; then ticks of 10:02 (before the stop) and 10:05
        # (after the start): 10:05 was heard in part, so its candle still shows.
        candle = (100.0, 101.0, 99.5, 100.5, 700, None)
        store_minute_bars(
            conn, INFY, [MinuteBar(at(10, 3), *candle), MinuteBar(at(10, 5), *candle)]
        )
        conn.execute(
            "INSERT INTO ticks (instrument_key, ts, ltp) VALUES (%s, %s, 1), (%s, %s, 2)",
            [INFY, at(10, 2, 39), INFY, at(10, 5, 20)],
        )
        found = gaps(conn, SESSIONS, until=at(16, 0))
        partial = gaps(conn, SESSIONS, [INFY], until=at(10, 4, 30))

    # 10:02 and 10:05 were heard in part: gap minutes. No ticks were stored at all, and yet
    # every other minute is covered: a minute without trades inside a span is no gap.
    assert runs(found) == [
        (INFY, at(10, 2), at(10, 6), 4),
        (TCS, at(10, 2), at(10, 6), 4),
    ]
    assert found[0].symbol == INFY  # no instrument master loaded: the key
    # Left to fill: 10:02 (heard in part, no candle yet) and 10:04.
    assert (found[0].backfilled, found[0].heard, found[0].fillable) == (2, 2, 2)
    assert (found[1].backfilled, found[1].heard, found[1].fillable) == (0, 0, 4)
    # Only minutes that have ended count, and only the instruments asked for.
    assert runs(partial) == [(INFY, at(10, 2), at(10, 4), 2)]


def test_no_span_at_all_is_one_gap_from_the_subscription_on(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        subscribe(conn, INFY, at(11, 59, 30), None)
        subscribe(conn, TCS, at(8, 0), at(9, 20, 5))
        found = gaps(conn, SESSIONS, until=at(12, 3))
    assert runs(found) == [(INFY, at(11, 59), at(12, 3), 4), (TCS, at(9, 15), at(9, 21), 6)]


def test_the_api_lists_a_days_gaps_by_symbol(db_url: str, tmp_path: Path) -> None:
    with psycopg.connect(db_url) as conn:
        load_instruments(conn, default_sample_path())
        subscribe(conn, INFY, at(8, 0), None)
        subscribe(conn, TCS, at(8, 0), None)
        # The calendar says 2026-11-23 had its regular session; the ingest heard all but
        # 10:02-10:05 of it.
        open_span(conn, 0, at(9, 0), at(10, 2, 40))
        open_span(conn, 0, at(10, 5, 10), at(15, 40))
    settings = Settings(data_dir=tmp_path)
    with serve(create_app(settings, db_url)) as base, client(base) as http:
        infy = http.get("/api/v1/coverage", params={"date": DAY, "symbol": "infy"})
        every = http.get("/api/v1/coverage", params={"date": DAY})
        unknown = http.get("/api/v1/coverage", params={"date": DAY, "symbol": "NOSUCH"})
        not_a_date = http.get("/api/v1/coverage", params={"date": "0"})
    assert infy.status_code == 200, infy.text
    assert infy.json() == {
        "date": "2026-11-23",
        "sessions": [["2026-11-23T09:15:00+05:30", "2026-11-23T15:30:00+05:30"]],
        "gaps": [
            {
                "symbol": "INFY",
                "instrument_key": INFY,
                "start": "2026-11-23T04:32:00Z",
                "end": "2026-11-23T04:36:00Z",
                "minutes": 4,
                "backfilled": 0,
                "heard": 0,
            }
        ],
    }
    assert [gap["symbol"] for gap in every.json()["gaps"]] == ["INFY", "TCS"]
    assert unknown.status_code == 404
    assert "NOSUCH" in unknown.text
    assert not_a_date.status_code == 422


def _plan_nodes(plan: dict) -> list[dict]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _plan_nodes(child))]


def test_a_days_gaps_read_that_days_ticks_of_the_instruments_asked_only(db_url: str) -> None:
    """Issue 20: ticks were read by time alone, the whole index of every chunk, so one
    symbol's coverage cost as much as the table was long (0.42 s to 3 s)."""
    with psycopg.connect(db_url) as conn:
        subscribe(conn, INFY, at(8, 0) - 3 * DAY_SPAN, None)
        subscribe(conn, TCS, at(8, 0) - 3 * DAY_SPAN, None)
        # A tick a minute of each, on the day before, the day and the day after: three chunks.
        conn.execute(
            "INSERT INTO ticks (instrument_key, ts, ltp)"
            " SELECT k, m, 1 FROM unnest(%s::text[]) AS k,"
            " generate_series(%s::timestamptz, %s, INTERVAL '1 minute') AS m",
            [[INFY, TCS], at(9, 15) - DAY_SPAN, at(15, 29) + DAY_SPAN],
        )
        open_span(conn, 0, at(9, 0), at(10, 2, 40))
        open_span(conn, 0, at(10, 5, 10), at(15, 40))
        conn.execute("ANALYZE")
        found = gaps(conn, SESSIONS, [INFY], until=at(16, 0))
        [[[explained]]] = conn.execute(
            f"EXPLAIN (FORMAT JSON) {GAPS_SQL}", gaps_params(SESSIONS, [INFY], at(16, 0))
        ).fetchall()
    assert runs(found) == [(INFY, at(10, 2), at(10, 6), 4)]
    assert found[0].heard == 4
    scans = [
        node
        for node in _plan_nodes(explained["Plan"])
        if node.get("Relation Name", "").startswith("_hyper_")
    ]
    assert len({node["Relation Name"] for node in scans}) == 1  # the day's chunk alone
    assert all("instrument_key =" in node.get("Index Cond", "") for node in scans)
