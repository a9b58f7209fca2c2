"""Bars of every interval against an independent pandas resample, on both editions.

Two generated trading days go in as ticks: a liquid stock with a pre-open trade, an illiquid
one with many minutes, 17 minutes in a row and more than an hour without trades, and an index
without volume. Every interval the API serves must equal pandas' resample of the same 1-minute bars
with the 09:15 IST origin (IST calendar days for 1d), row for row and to the last bit of every
double; the SQL function bars() must give the API's rows; 5m bars (their own relation) must
be the 1-minute bars aggregated. Half of the second day arrives after a bar refresh, so the
bars read both the materialized buckets and the live ones past the watermark.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import psycopg
import pytest
from psycopg.rows import dict_row

from api import create_app
from core.config import Settings
from store.bars import BAR_COLUMNS, BAR_INTERVALS, BarInterval, refresh_bars
from store.instruments import (
    default_sample_path,
    load_instruments,
)
from tests import conftest
from tests import test_compose as compose
from tests.test_api import client, serve
from tests.test_bars import IST, Tick, copy_ticks, ist, trading_day

INFY = "NSE_EQ|INE009A01021"
TCS = "NSE_EQ|INE467B01029"
NIFTY = "NSE_INDEX|Nifty 50"
# What a user types for each: a trading symbol, a trading symbol in another case, an index name.
SYMBOLS = {INFY: "INFY", TCS: "tcs", NIFTY: "Nifty 50"}

KOLKATA = "Asia/Kolkata"
SESSION_ORIGIN = pd.Timestamp("2000-01-03 09:15", tz=KOLKATA)
PANDAS_RULES: dict[str, str] = {
    "1m": "1min",
    "3m": "3min",
    "5m": "5min",
    "10m": "10min",
    "15m": "15min",
    "30m": "30min",
    "1h": "1h",
}

Row = dict[str, Any]
app_role = compose.app_role  # the compose app's database role, set up by deploy/app_role.py


# --- the data ------------------------------------------------------------------------------


def the_days() -> tuple[date, date]:
    """Two weekdays in a row, four to seven days back (see tests.test_bars.trading_day)."""
    day = trading_day()
    before = day - timedelta(days=1)
    while before.weekday() >= 5:
        before -= timedelta(days=1)
    return before, day


def quiet(day: date) -> list[tuple[datetime, datetime]]:
    """When the illiquid stock does not trade: 17 minutes, then more than a whole hour."""
    return [(ist(day, 10, 2), ist(day, 10, 19)), (ist(day, 13, 10), ist(day, 14, 25))]


def generate_day(day: date, seed: int) -> list[Tick]:
    """A session of ticks, 09:15 to 15:30 IST, in time order, timestamps distinct per key."""
    rng = random.Random(seed)
    close = ist(day, 15, 30)
    ticks: list[Tick] = []

    def walk(key: str, first: datetime, gaps: tuple[int, int], volume: bool) -> None:
        price = round(rng.uniform(100, 3000), 2)
        ts = first
        while ts < close:
            if key != TCS or not any(start <= ts < end for start, end in quiet(day)):
                ticks.append(Tick(key, ts, price, rng.randint(1, 500) if volume else None))
            price = round(max(1.0, price + rng.gauss(0, 0.8)), 2)
            ts += timedelta(microseconds=rng.randrange(gaps[0] * 10**6, gaps[1] * 10**6))

    # The pre-open call auction's price, before 09:15: in the 08:15-09:15 hour.
    walk(INFY, ist(day, 9, 7, 31, 250_000), (5, 40), volume=True)
    walk(TCS, ist(day, 9, 15, 2), (20, 540), volume=True)
    walk(NIFTY, ist(day, 9, 15, 0, 500_000), (15, 45), volume=False)
    # The last minute of the session, for the 15:15-15:30 hour of every instrument.
    for key in (TCS, NIFTY):
        ticks.append(Tick(key, ist(day, 15, 29, 59, 900_000), 1234.5, 7 if key == TCS else None))
    ticks.sort(key=lambda tick: tick.ts)
    return ticks


def fill(url: str) -> tuple[datetime, datetime]:
    """The instrument master and two days of ticks, the second half of the second day after a
    refresh; returns the two days as [start, end) from midnight IST."""
    before, day = the_days()
    ticks = generate_day(before, seed=9) + generate_day(day, seed=10)
    cut = ist(day, 12, 2, 30)  # inside a 5-minute, 15-minute and 1-hour bucket
    with psycopg.connect(url, autocommit=True) as conn:
        load_instruments(conn, default_sample_path())
        copy_ticks(conn, [tick for tick in ticks if tick.ts < cut])
        refresh_bars(conn, end=cut)
        copy_ticks(conn, [tick for tick in ticks if tick.ts >= cut])
    start = datetime.combine(before, time(0), IST)
    return start, datetime.combine(day + timedelta(days=1), time(0), IST)


@contextmanager
def api(url: str, tmp_path: Path) -> Iterator[httpx.Client]:
    app = create_app(Settings(data_dir=tmp_path), url)
    with serve(app) as base, client(base) as http:
        yield http


# --- the independent computation -----------------------------------------------------------


def one_minute_bars(conn: psycopg.Connection, key: str) -> pd.DataFrame:
    """ohlc_1m of `key`, indexed by bucket in IST."""
    rows = conn.execute(
        f"SELECT {', '.join(BAR_COLUMNS)} FROM ohlc_1m WHERE instrument_key = %s ORDER BY bucket",
        [key],
    ).fetchall()
    frame = pd.DataFrame(rows, columns=list(BAR_COLUMNS)).set_index("bucket")
    frame.index = pd.DatetimeIndex(frame.index).tz_convert(KOLKATA)
    frame["volume"] = frame["volume"].astype("Int64")
    return frame


def resampled(minutes: pd.DataFrame, interval: BarInterval) -> list[Row]:
    """pandas' bars of `interval` from 1-minute bars: buckets from 09:15 IST (1d: IST dates),
    left-closed and labelled by their start; a bucket without a minute has no bar."""
    if interval == "1d":  # calendar days of the index's time zone, IST
        groups = minutes.resample("1D", closed="left", label="left")
    else:
        groups = minutes.resample(
            PANDAS_RULES[interval], origin=SESSION_ORIGIN, closed="left", label="left"
        )
    frame = pd.DataFrame(
        {
            "open": groups["open"].first(),
            "high": groups["high"].max(),
            "low": groups["low"].min(),
            "close": groups["close"].last(),
            "volume": groups["volume"].sum(min_count=1),
            "tick_count": groups["tick_count"].sum(),
            "minutes": groups["open"].count(),
        }
    )
    frame = frame[frame["minutes"] > 0]
    return [
        {
            "bucket": bucket.tz_convert("UTC").to_pydatetime(),
            "open": float(bar.open),
            "high": float(bar.high),
            "low": float(bar.low),
            "close": float(bar.close),
            "volume": None if pd.isna(bar.volume) else int(bar.volume),
            "tick_count": int(bar.tick_count),
        }
        for bucket, bar in frame.iterrows()
    ]


def from_json(bars: list[Row]) -> list[Row]:
    return [{**bar, "bucket": datetime.fromisoformat(bar["bucket"])} for bar in bars]


def sql_bars(
    conn: psycopg.Connection, symbol: str, interval: str, start: datetime, end: datetime
) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM bars(%s, %s, %s, %s)", [symbol, interval, start, end]
        ).fetchall()


def get_bars(
    http: httpx.Client, symbol: str, interval: str, start: datetime, end: datetime
) -> httpx.Response:
    return http.get(
        f"/api/v1/bars/{symbol}",
        params={"interval": interval, "start": start.isoformat(), "end": end.isoformat()},
    )


# --- the tests -----------------------------------------------------------------------------


def test_every_interval_equals_a_pandas_resample_of_the_1m_bars(
    edition_db_url: str, tmp_path: Path
) -> None:
    start, end = fill(edition_db_url)
    with psycopg.connect(edition_db_url) as conn:
        minutes = {key: one_minute_bars(conn, key) for key in SYMBOLS}
    with api(edition_db_url, tmp_path) as http:
        for key, symbol in SYMBOLS.items():
            for interval in BAR_INTERVALS:
                response = get_bars(http, symbol, interval, start, end)
                assert response.status_code == 200, response.text
                body = response.json()
                assert (body["instrument_key"], body["interval"]) == (key, interval)
                assert from_json(body["bars"]) == resampled(minutes[key], interval), (
                    symbol,
                    interval,
                )

    # The data has what the rule is about.
    day = end.date() - timedelta(days=1)
    tcs = minutes[TCS]
    session = tcs[(tcs.index >= ist(day, 9, 15)) & (tcs.index < ist(day, 15, 30))]
    assert len(session) < 375 / 2  # minutes without trades, most of them
    assert not any(ist(day, 10, 2) <= minute < ist(day, 10, 19) for minute in session.index)
    hours = [bar["bucket"].astimezone(IST).time() for bar in resampled(tcs, "1h")]
    assert time(13, 15) not in hours  # an hour without a trade
    assert time(15, 15) in hours
    infy_hours = [bar["bucket"] for bar in resampled(minutes[INFY], "1h")]
    assert ist(day, 8, 15) in infy_hours  # the pre-open trade
    assert [ist(day, h, 15) for h in range(9, 16)] == [
        b for b in infy_hours if ist(day, 9, 15) <= b < ist(day, 16, 0)
    ]
    last_hour = minutes[INFY][minutes[INFY].index >= ist(day, 15, 15)]
    assert last_hour.index.max() == ist(day, 15, 29)  # 15:15-15:30: fifteen minutes
    assert [bar["volume"] for bar in resampled(minutes[NIFTY], "1d")] == [None, None]


def test_the_sql_function_gives_the_api_rows(edition_db_url: str, tmp_path: Path) -> None:
    start, end = fill(edition_db_url)
    with api(edition_db_url, tmp_path) as http, psycopg.connect(edition_db_url) as conn:
        for key, symbol in SYMBOLS.items():
            for interval in BAR_INTERVALS:
                shown = from_json(get_bars(http, symbol, interval, start, end).json()["bars"])
                assert shown, (symbol, interval)
                assert sql_bars(conn, symbol, interval, start, end) == shown
                assert sql_bars(conn, key, interval, start, end) == shown
                # Named arguments and the defaults: no bound reads everything.
                every = conn.execute(
                    "SELECT count(*) FROM bars(%s, bar_interval => %s)", [symbol, interval]
                ).fetchone()
                assert every == (len(shown),)
        csv = http.get(
            "/api/v1/bars/INFY",
            params={
                "interval": "1h",
                "start": start.isoformat(),
                "end": end.isoformat(),
                "format": "csv",
            },
        )
        header, *lines = csv.text.splitlines()
        assert header == ",".join(BAR_COLUMNS)
        assert lines == [
            ",".join(
                [bar["bucket"].isoformat().replace("+00:00", "Z")]
                + [str(bar[name]) for name in BAR_COLUMNS[1:]]
            )
            for bar in sql_bars(conn, "INFY", "1h", start, end)
        ]


def test_5m_bars_are_the_1m_bars_aggregated(edition_db_url: str) -> None:
    start, end = fill(edition_db_url)
    with psycopg.connect(edition_db_url) as conn:
        for key in SYMBOLS:
            with conn.cursor(row_factory=dict_row) as cur:
                stored = cur.execute(
                    f"SELECT {', '.join(BAR_COLUMNS)} FROM ohlc_5m WHERE instrument_key = %s"
                    " ORDER BY bucket",
                    [key],
                ).fetchall()
                # What bars() does for the intervals that have no relation, at 5 minutes.
                aggregated = cur.execute(
                    "SELECT time_bucket(INTERVAL '5 minutes', bucket,"
                    "   origin => '2000-01-03 09:15+05:30') AS bucket,"
                    " first(open, bucket) AS open, max(high) AS high, min(low) AS low,"
                    " last(close, bucket) AS close, sum(volume)::bigint AS volume,"
                    " sum(tick_count)::bigint AS tick_count"
                    " FROM ohlc_1m WHERE instrument_key = %s GROUP BY 1 ORDER BY 1",
                    [key],
                ).fetchall()
            assert stored == aggregated
            assert stored == resampled(one_minute_bars(conn, key), "5m")
            assert stored == sql_bars(conn, key, "5m", start, end)


def test_a_window_takes_whole_bars_by_their_start(edition_db_url: str) -> None:
    start, end = fill(edition_db_url)
    day = end.date() - timedelta(days=1)
    with psycopg.connect(edition_db_url) as conn:
        every = {interval: sql_bars(conn, INFY, interval, start, end) for interval in BAR_INTERVALS}

        def window(interval: str, low: datetime, high: datetime) -> list[datetime]:
            bars = sql_bars(conn, INFY, interval, low, high)
            assert all(bar in every[interval] for bar in bars)  # whole, as in a wide window
            return [bar["bucket"] for bar in bars]

        # 10:00 to 11:00 holds the start of the 10:15 bar only, which runs to 11:15.
        assert window("1h", ist(day, 10, 0), ist(day, 11, 0)) == [ist(day, 10, 15)]
        # Start inclusive, end exclusive.
        assert window("1h", ist(day, 10, 15), ist(day, 11, 15)) == [ist(day, 10, 15)]
        assert window("15m", ist(day, 15, 14, 59), ist(day, 15, 15)) == []
        assert window("3m", ist(day, 9, 15), ist(day, 9, 21)) == [ist(day, 9, 15), ist(day, 9, 18)]
        # A day bar starts at midnight IST.
        assert window("1d", ist(day, 0, 0), ist(day, 0, 0, 0, 1)) == [ist(day, 0, 0)]
        assert window("1d", ist(day, 0, 0, 0, 1), end) == []
        assert window("1d", start, end) == [start, ist(day, 0, 0)]
        # Infinite bounds are no bounds.
        assert conn.execute(
            "SELECT count(*) FROM bars(%s, '30m', '-infinity', 'infinity')", [INFY]
        ).fetchone() == (len(every["30m"]),)


def test_unknown_intervals_and_symbols(db_url: str, tmp_path: Path) -> None:
    start, end = fill(db_url)
    with api(db_url, tmp_path) as http:
        for interval in ("2m", "1M", "60m", "1H", "", "1w"):
            response = get_bars(http, "INFY", interval, start, end)
            assert response.status_code == 422, interval
            [error] = response.json()["detail"]
            assert error["loc"] == ["query", "interval"]
            assert all(f"'{name}'" in error["msg"] for name in BAR_INTERVALS), error["msg"]

        # The 31-day rule holds for every interval built from the 1-minute bars.
        for interval in BAR_INTERVALS:
            days = 180 if interval == "5m" else 31
            for span, status in (
                (timedelta(days=days), 200),
                (timedelta(days=days, seconds=1), 422),
            ):
                response = get_bars(http, "INFY", interval, end - span, end)
                assert response.status_code == status, (interval, span)

        parameters = http.get("/openapi.json").json()["paths"]["/api/v1/bars/{symbol}"]["get"]
        [interval] = [p for p in parameters["parameters"] if p["name"] == "interval"]
        assert interval["schema"]["enum"] == list(BAR_INTERVALS)
        assert "09:15 IST" in interval["description"]
        assert get_bars(http, "NOSUCH", "15m", start, end).status_code == 404

    with psycopg.connect(db_url) as conn:
        assert [name for (name,) in conn.execute("SELECT name FROM bar_intervals()")] == list(
            BAR_INTERVALS
        )
        with pytest.raises(psycopg.errors.InvalidParameterValue) as bad_interval:
            sql_bars(conn, "INFY", "2m", start, end)
        conn.rollback()
        assert "'2m'" in str(bad_interval.value)
        assert bad_interval.value.diag.message_hint == f"Use one of {', '.join(BAR_INTERVALS)}."
        with pytest.raises(psycopg.errors.NoDataFound, match="unknown symbol 'NOSUCH'"):
            sql_bars(conn, "NOSUCH", "15m", start, end)


def test_both_editions_give_identical_bars(
    apache_server: conftest.DbServer, community_server: conftest.DbServer
) -> None:
    results = []
    for server in (apache_server, community_server):
        url = server.create_database()
        try:
            start, end = fill(url)
            with psycopg.connect(url) as conn:
                results.append(
                    {
                        (symbol, interval): sql_bars(conn, symbol, interval, start, end)
                        for symbol in SYMBOLS.values()
                        for interval in BAR_INTERVALS
                    }
                )
        finally:
            server.drop_database(url)
    apache, community = results
    assert apache == community
    assert all(apache.values())


def test_the_app_role_reads_bars_of_any_interval(app_role: compose.AppRole) -> None:
    """What the compose app connects as may run bars(): functions are executable by all."""
    start, end = fill(app_role.owner_url)
    with psycopg.connect(app_role.app_url) as conn:
        for interval in BAR_INTERVALS:
            assert sql_bars(conn, "INFY", interval, start, end), interval
