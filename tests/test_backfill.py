"""Backfilled minutes in ohlc_1m and ohlc_5m, on both editions, against an independent computation.

A trading day of ticks with holes goes in, then candles for the holes (and for a minute that
has ticks, which must not show): ohlc_1m must show the ticks' bars where there are ticks and
the candles elsewhere, ohlc_5m the 1-minute rows of either source rolled up, `backfill` where
any minute is; a late tick takes its minute back from the candle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from api.app import create_app
from core.ist import IST
from ingest.client import FeedClient
from ingest.config import Settings
from ingest.service import WebSocketService
from ingest.simulator import FeedSimulator
from ingest.upstox.candles import CandleClient
from store.backfill import MinuteBar, store_minute_bars
from store.bars import refresh_bars
from store.instruments import default_sample_path, instrument_records, load_instruments
from tests.conftest import REPO
from tests.test_api import client, serve
from tests.test_bars import (
    INSTRUMENTS,
    MINUTE,
    Bars,
    Tick,
    bars_of_day,
    copy_ticks,
    expected_bars,
    generate_day,
    insert_one_by_one,
    ist,
    trading_day,
)

FIVE = 5 * MINUTE
RELIANCE = "NSE_EQ|INE002A01018"


def candles_for(key: str, minutes: list[datetime], seed: int) -> list[MinuteBar]:
    rng = random.Random(seed)
    candles = []
    for minute in minutes:
        open_, close = rng.uniform(90, 110), rng.uniform(90, 110)
        high, low = max(open_, close) + rng.uniform(0, 2), min(open_, close) - rng.uniform(0, 2)
        candles.append(MinuteBar(minute, open_, high, low, close, rng.randint(1, 9000), None))
    return candles


def expected_with_backfill(ticks: list[Tick], backfill: dict[str, list[MinuteBar]]) -> Bars:
    """ohlc_1m: the ticks' bars, then each candle whose minute has no tick of its key;
    ohlc_5m: those rows rolled up by definition, `backfill` when any of its minutes is."""
    live = expected_bars(ticks)["ohlc_1m"]
    with_ticks = {(row[0], row[1]) for row in live}
    minutes = list(live)
    for key, candles in backfill.items():
        for c in candles:
            if (key, c.bucket) not in with_ticks:
                minutes.append(
                    (key, c.bucket, c.open, c.high, c.low, c.close, c.volume, 0, "backfill")
                )
    minutes.sort()
    groups: dict[tuple[str, datetime], list[tuple]] = defaultdict(list)
    for row in minutes:
        origin = ist(date(2000, 1, 3), 9, 15)
        groups[row[0], origin + (row[1] - origin) // FIVE * FIVE].append(row)
    fives = [
        (
            key,
            bucket,
            rows[0][2],
            max(r[3] for r in rows),
            min(r[4] for r in rows),
            rows[-1][5],
            sum(r[6] for r in rows),
            sum(r[7] for r in rows),
            "backfill" if any(r[8] == "backfill" for r in rows) else "live",
        )
        for (key, bucket), rows in sorted(groups.items())
    ]
    return {"ohlc_1m": minutes, "ohlc_5m": fives}


def test_backfill_fills_holes_and_never_a_live_bucket(edition_db_url: str) -> None:
    day = trading_day()
    key = INSTRUMENTS[1]
    hole = [ist(day, 10, 2), ist(day, 10, 3), ist(day, 10, 4), ist(day, 10, 31)]
    ticks = [
        t
        for t in generate_day(day, seed=20261129)
        if not (t.instrument_key == key and any(m <= t.ts < m + MINUTE for m in hole))
    ]
    with_ticks = ist(day, 10, 1)  # a minute with ticks: its candle must be left out
    candles = candles_for(key, [with_ticks, *hole], seed=3)

    with psycopg.connect(edition_db_url, autocommit=True) as conn:
        copy_ticks(conn, ticks)
        assert store_minute_bars(conn, key, candles) == len(hole)
        # Real time (nothing materialized yet on Community), then materialized.
        assert bars_of_day(conn, day) == expected_with_backfill(ticks, {key: candles})
        refresh_bars(conn)
        assert bars_of_day(conn, day) == expected_with_backfill(ticks, {key: candles})
        # Stored again (a second backfill): nothing new, nothing counts twice.
        assert store_minute_bars(conn, key, candles) == 0
        # Upstox corrects a candle: the correction replaces it.
        candles[2] = candles[2]._replace(close=candles[2].low, volume=5)
        assert store_minute_bars(conn, key, candles) == 1
        assert bars_of_day(conn, day) == expected_with_backfill(ticks, {key: candles})

        # A late tick in a backfilled minute: the minute is the tick's from the next refresh
        # on, and the candle never shows beside it.
        late = Tick(key, hole[1] + timedelta(seconds=20), 101.5, 77)
        insert_one_by_one(conn, [late])
        refresh_bars(conn)
        bars = bars_of_day(conn, day)
        assert bars == expected_with_backfill([*ticks, late], {key: candles})
        five = {row[1]: row for row in bars["ohlc_5m"] if row[0] == key}
        assert five[ist(day, 10, 0)][-1] == "backfill"  # 10:02 and 10:04 still are
        assert five[ist(day, 10, 30)][-1] == "backfill"
        assert five[ist(day, 10, 5)][-1] == "live"
        minute = {row[1]: row for row in bars["ohlc_1m"] if row[0] == key}
        assert minute[hole[1]][-2:] == (1, "live")
        assert minute[with_ticks][-1] == "live"


# --- a real gap: the ingest stopped for a whole minute, against the simulator ----------------


class Witness:
    """A second feed client that stays connected through the ingest's stop, so the simulator
    goes on streaming (its candles are what it streamed) while the store hears nothing."""

    def on_frame(self, frame: bytes, received_at_us: int) -> None:
        pass


def ingest_settings(simulator: FeedSimulator, data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        upstox_access_token="backfill-test-token",
        upstox_api_base=simulator.url,
        rollup_interval_s=1,
    )


async def start_ingests(simulator: FeedSimulator, urls: dict[str, str], root: Path) -> list:
    services = [
        WebSocketService(ingest_settings(simulator, root / edition), url)
        for edition, url in urls.items()
    ]
    await asyncio.gather(*(service.start() for service in services))
    return services


def cli_backfill(
    url: str, api_base: str, *args: str, token: str = "backfill-test-token"
) -> tuple[int, Any]:
    """`tickvault backfill --json` in its own process: (status, the report or stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "tickvault", "backfill", "--json", *args],
        cwd=REPO,
        env={
            **os.environ,
            "TICKVAULT_DATABASE_URL": url,
            "UPSTOX_ACCESS_TOKEN": token,
            "UPSTOX_API_BASE": api_base,
            "TICKVAULT_LOG_LEVEL": "WARNING",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, json.loads(done.stdout) if done.returncode == 0 else done.stderr


def test_backfill_without_a_token_or_of_an_unknown_symbol_is_a_clear_error(db_url: str) -> None:
    nowhere = "http://127.0.0.1:9"
    status, err = cli_backfill(db_url, nowhere, token="")
    assert status == 1
    assert "UPSTOX_ACCESS_TOKEN" in err
    status, err = cli_backfill(db_url, nowhere, "--symbols", "INFY,NOSUCH", token="secret-x")
    assert status == 1
    assert "unknown symbol(s): INFY, NOSUCH" in err  # no instrument master loaded
    assert "secret-x" not in err


def sleep_until(moment: datetime) -> float:
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def minute_rows(url: str, key: str, start: datetime, end: datetime) -> dict[datetime, tuple]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT bucket, open, high, low, close, volume, tick_count, source FROM ohlc_1m"
            " WHERE instrument_key = %s AND bucket >= %s AND bucket < %s",
            [key, start, end],
        ).fetchall()
    return {row[0]: row[1:] for row in rows}


async def wait_backfilled(http: httpx.Client, day: date, minute: datetime) -> list[dict]:
    """The coverage answer once every gap holding `minute` reports it backfilled."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        answer = await asyncio.to_thread(http.get, "/api/v1/coverage", params={"date": day})
        assert answer.status_code == 200, answer.text
        holding = [
            gap
            for gap in answer.json()["gaps"]
            if datetime.fromisoformat(gap["start"]) <= minute < datetime.fromisoformat(gap["end"])
        ]
        if holding and all(gap["backfilled"] >= 1 for gap in holding):
            return holding
        assert asyncio.get_running_loop().time() < deadline, answer.json()
        await asyncio.sleep(0.5)


def test_a_stopped_ingest_leaves_a_gap_that_is_listed_and_backfilled_from_the_candles(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Both editions at once, each with its own ingest on one simulator: ~65-125 s."""
    servers = {"apache": request.getfixturevalue("apache_server")}
    with contextlib.suppress(pytest.skip.Exception):  # no Community here: Apache alone
        servers["community"] = request.getfixturevalue("community_server")
    urls = {edition: server.create_database() for edition, server in servers.items()}
    try:
        for url in urls.values():
            with psycopg.connect(url) as conn:
                load_instruments(conn, default_sample_path())
        asyncio.run(gap_scenario(urls, tmp_path))
    finally:
        for edition, url in urls.items():
            servers[edition].drop_database(url)


async def gap_scenario(urls: dict[str, str], root: Path) -> None:
    today = datetime.now(IST).date()
    apache = urls["apache"]
    with psycopg.connect(apache) as conn:
        records = instrument_records(conn)
    async with FeedSimulator(records, rate=2000, frame_interval=0.05) as simulator:
        services = await start_ingests(simulator, urls, root)
        keys = sorted(services[0].ws_client.subscribed_keys)
        witness = FeedClient(ingest_settings(simulator, root / "witness"), Witness())
        await witness.connect()
        listening = asyncio.create_task(witness.listen())
        await witness.subscribe(keys, "full")

        # Stop two seconds before a minute starts; start again a second after it ends.
        now = datetime.now(UTC)
        gap_minute = (now + timedelta(seconds=6)).replace(second=0, microsecond=0) + MINUTE
        await asyncio.sleep(sleep_until(gap_minute - timedelta(seconds=2)))
        await asyncio.gather(*(service.stop() for service in services))
        stopped_in = gap_minute - MINUTE
        await asyncio.sleep(sleep_until(gap_minute + MINUTE + timedelta(seconds=1)))
        services = await start_ingests(simulator, urls, root)
        try:
            settings = ingest_settings(simulator, root / "api")
            with (
                serve(create_app(settings, apache, run_ingest=False)) as base,
                client(base) as http,
            ):
                holding = await wait_backfilled(http, today, gap_minute)
                one = await asyncio.to_thread(
                    http.get, "/api/v1/coverage", params={"date": today, "symbol": "RELIANCE"}
                )
            # Every subscribed instrument has the gap, RELIANCE's alone when asked for it.
            assert {gap["instrument_key"] for gap in holding} == set(keys)
            [reliance] = [gap for gap in one.json()["gaps"] if gap in holding]
            assert {gap["instrument_key"] for gap in one.json()["gaps"]} == {RELIANCE}
            assert reliance["symbol"] == "RELIANCE"
            # The minute it stopped in was heard in part: a gap minute, whose live bar stays.
            # (So is the one it started again in, once that minute is over.)
            assert datetime.fromisoformat(reliance["start"]) <= stopped_in
            assert datetime.fromisoformat(reliance["end"]) == gap_minute + MINUTE
            assert reliance["backfilled"] == 1

            assert reliance["heard"] >= 1
            assert reliance["minutes"] == reliance["backfilled"] + reliance["heard"]

            # Run again by hand: what is left of the gaps was heard in part, nothing to fill.
            status, report = await asyncio.to_thread(
                cli_backfill, apache, simulator.url, "--date", str(today)
            )
            assert status == 0, report
            assert report == {"date": str(today), "filled": 0, "instruments": []}
        finally:
            await asyncio.gather(*(service.stop() for service in services))
            await witness.stop()
            listening.cancel()
        async with CandleClient(simulator.url, "backfill-test-token") as candles:
            streamed = {key: await candles.minute_candles(key, today) for key in keys}

    for edition, url in urls.items():
        for key in keys:
            rows = minute_rows(url, key, stopped_in, gap_minute + 2 * MINUTE)
            candle = next(c for c in streamed[key] if c.start == gap_minute)
            # The whole missing minute: the simulator's candle of what it streamed then.
            assert rows[gap_minute] == (
                candle.open,
                candle.high,
                candle.low,
                candle.close,
                candle.volume,
                0,
                "backfill",
            ), (edition, key)
            # The partly heard minutes around it keep their live bars: never replaced.
            assert rows[stopped_in][-1] == "live", (edition, key)
            assert rows[gap_minute + MINUTE][-1] == "live", (edition, key)
        with psycopg.connect(url) as conn:
            assert conn.execute(
                "SELECT count(*) FROM ohlc_1m_backfill WHERE bucket <> %s", [gap_minute]
            ).fetchone() == (0,)
            five = conn.execute(
                "SELECT DISTINCT source FROM ohlc_5m WHERE bucket = time_bucket('5 minutes', %s)",
                [gap_minute],
            ).fetchall()
        assert five == [("backfill",)], edition
