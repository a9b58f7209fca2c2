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
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from core.config import Settings
from core.ist import IST
from ingest.client import FeedClient
from ingest.jobs.backfill import backfill_day
from ingest.service import WebSocketService
from ingest.simulator import FeedSimulator
from ingest.upstox.candles import CandleClient
from store.backfill import MinuteBar, store_minute_bars
from store.bars import refresh_bars
from store.coverage import open_span
from store.instruments import default_sample_path, instrument_records, load_instruments
from tests.clock import FeedClock
from tests.conftest import REPO
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


def expected_with_backfill(
    ticks: list[Tick], backfill: dict[str, list[MinuteBar]], uncovered: Iterable[datetime] = ()
) -> Bars:
    """ohlc_1m: the ticks' bars, where a candle counts the candle instead (a minute no span
    covers whole, or one without a tick of its key); ohlc_5m: those rows rolled up by
    definition, `backfill` when any of its minutes is."""
    uncovered = set(uncovered)
    live = expected_bars(ticks)["ohlc_1m"]
    with_ticks = {(row[0], row[1]) for row in live}
    counting = {
        (key, c.bucket): c
        for key, candles in backfill.items()
        for c in candles
        if (key, c.bucket) not in with_ticks or c.bucket in uncovered
    }
    minutes = [row for row in live if (row[0], row[1]) not in counting]
    minutes += [
        (key, c.bucket, c.open, c.high, c.low, c.close, c.volume, 0, "backfill")
        for (key, _), c in counting.items()
    ]
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


def record_spans(conn: psycopg.Connection, *spans: tuple[datetime, datetime]) -> None:
    """What the ingest's coverage recorder would have written: when it was receiving."""
    for started, ended in spans:
        open_span(conn, 0, started, ended)


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
        # The store heard the whole day: the holes are minutes in which the key did not trade.
        record_spans(conn, (ist(day, 9, 0), ist(day, 16, 0)))
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


def test_a_minute_heard_in_part_shows_its_candle_and_counts_its_volume_once(
    edition_db_url: str,
) -> None:
    """The ingest stopped at 10:02:30 and started again at 10:05:20: 10:02 and 10:05 were
    heard in part. Their candles replace the partial bars, in ohlc_1m and in ohlc_5m (on both
    editions), and the volume of 10:00-10:10 is the candles' plus the whole minutes'."""
    day = trading_day()
    stopped, started = ist(day, 10, 2, 30), ist(day, 10, 5, 20)
    gap = [ist(day, 10, 2), ist(day, 10, 3), ist(day, 10, 4), ist(day, 10, 5)]
    ticks = [t for t in generate_day(day, seed=20261206) if not stopped <= t.ts < started]
    key = INSTRUMENTS[0]
    candles = candles_for(key, gap, seed=5)

    with psycopg.connect(edition_db_url, autocommit=True) as conn:
        record_spans(conn, (ist(day, 9, 0), stopped), (started, ist(day, 16, 0)))
        copy_ticks(conn, ticks)
        assert store_minute_bars(conn, key, candles) == len(gap)
        expected = expected_with_backfill(ticks, {key: candles}, uncovered=gap)
        assert bars_of_day(conn, day) == expected
        refresh_bars(conn)
        bars = bars_of_day(conn, day)
        assert bars == expected
        ours = {row[1]: row for row in bars["ohlc_1m"] if row[0] == key}
        for candle in candles:
            assert ours[candle.bucket][2:] == (*candle[1:6], 0, "backfill")
        five = {row[1]: row for row in bars["ohlc_5m"] if row[0] == key}
        whole = [row for row in ours.values() if ist(day, 10, 0) <= row[1] < ist(day, 10, 10)]
        assert five[ist(day, 10, 0)][6] + five[ist(day, 10, 5)][6] == sum(r[6] for r in whole)
        # Another instrument, no candle: its partial bars still show, as live.
        other = {row[1]: row[-1] for row in bars["ohlc_1m"] if row[0] == INSTRUMENTS[1]}
        assert other[gap[0]] == other[gap[-1]] == "live"


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
        option_chains=(),  # the universe's minutes are the subject: the keys it starts with
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


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def minute_rows(url: str, key: str, start: datetime, end: datetime) -> dict[datetime, tuple]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT bucket, open, high, low, close, volume, source FROM ohlc_1m"
            " WHERE instrument_key = %s AND bucket >= %s AND bucket < %s",
            [key, start, end],
        ).fetchall()
    return {row[0]: row[1:] for row in rows}


def tick_volumes(url: str, key: str, start: datetime, end: datetime) -> dict[datetime, int]:
    """The volume the stored ticks carry, by minute."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT time_bucket('1 minute', ts), coalesce(sum(volume_delta), 0)::bigint"
            " FROM ticks WHERE instrument_key = %s AND ts >= %s AND ts < %s GROUP BY 1",
            [key, start, end],
        ).fetchall()
    return dict(rows)


def uncovered_minutes(url: str, minutes: Iterable[datetime]) -> set[datetime]:
    """Those of `minutes` that no coverage span covers whole."""
    with psycopg.connect(url) as conn:
        spans = conn.execute("SELECT started_at, ended_at FROM coverage_spans").fetchall()
    return {m for m in minutes if not any(a <= m and m + MINUTE <= b for a, b in spans)}


def sessions_of(url: str) -> int:
    """Sessions the database has had (`pg_stat_database`), this one's included, once those
    that ended have reported: a closed connection's backend reports as it exits, and this
    one as it first goes idle."""
    counts: list[int] = []
    with psycopg.connect(url, autocommit=True) as conn:
        while len(counts) < 20 and (len(counts) < 3 or len(set(counts[-3:])) > 1):
            counts.append(
                conn.execute(
                    "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
                ).fetchone()[0]
            )
            time.sleep(0.5)
    assert len(set(counts[-3:])) == 1, f"the count did not settle: {counts}"
    return counts[-1]


def five_minute_volumes(url: str, key: str, start: datetime, end: datetime) -> dict[datetime, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT bucket, volume FROM ohlc_5m"
            " WHERE instrument_key = %s AND bucket >= %s AND bucket < %s",
            [key, start, end],
        ).fetchall()
    return dict(rows)


def test_bars_across_a_stop_of_the_ingest_are_what_the_exchange_printed(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ingest stops for over two minutes while a second client keeps the simulated market
    trading, starts again, stops again; then backfill runs. Every minute from the first start
    to the last stop, the partly heard ones included, equals the simulator's candle, and so
    does every 5-minute bucket's volume. On both editions at once (Apache alone where there is
    no Community), on a clock fifteen times as fast: about 40 s."""
    clock = FeedClock(speed=15)
    if (
        clock.now().astimezone(IST).date()
        != (clock.now() + timedelta(minutes=15)).astimezone(IST).date()
        or datetime.now(IST).hour == 23
    ):
        pytest.skip("the scenario must stay inside one IST day")
    servers = {"apache": request.getfixturevalue("apache_server")}
    with contextlib.suppress(pytest.skip.Exception):  # no Community here: Apache alone
        servers["community"] = request.getfixturevalue("community_server")
    urls = {edition: server.create_database() for edition, server in servers.items()}
    try:
        for url in urls.values():
            with psycopg.connect(url) as conn:
                load_instruments(conn, default_sample_path())
        clock.install(monkeypatch)
        asyncio.run(stop_and_restart(clock, urls, tmp_path))
    finally:
        for edition, url in urls.items():
            servers[edition].drop_database(url)


async def stop_and_restart(clock: FeedClock, urls: dict[str, str], root: Path) -> None:
    with psycopg.connect(urls["apache"]) as conn:
        records = instrument_records(conn)
    async with FeedSimulator(records, rate=2000, frame_interval=0.05) as simulator:
        first_start = minute_of(clock.now())
        services = await start_ingests(simulator, urls, root)
        keys = sorted(services[0].ws_client.subscribed_keys)
        witness = FeedClient(ingest_settings(simulator, root / "witness"), Witness())
        await witness.connect()
        listening = asyncio.create_task(witness.listen())
        await witness.subscribe(keys, "full")
        try:
            # After a whole minute heard, stop 30 s into the next; start again 5 s into the
            # minute after the next (a whole minute unheard); hear one whole minute more,
            # stop inside the next one.
            stop = first_start + 2 * MINUTE + timedelta(seconds=30)
            restart = minute_of(stop) + 2 * MINUTE + timedelta(seconds=5)
            last_stop = minute_of(restart) + 2 * MINUTE + timedelta(seconds=30)
            await clock.sleep_until(stop)
            await asyncio.gather(*(service.stop() for service in services))
            await clock.sleep_until(restart)
            services = await start_ingests(simulator, urls, root)
            await clock.sleep_until(last_stop)
            await asyncio.gather(*(service.stop() for service in services))
            services = []
            until = minute_of(last_stop) + MINUTE
            await clock.sleep_until(until + timedelta(seconds=2))
            today = until.astimezone(IST).date()
            for url in urls.values():
                # A database that refuses the stores fails the run with its own error, as one
                # that refuses the search for gaps does (not wrapped in an ExceptionGroup,
                # which the ingest's backfill and the CLI would not recognise), storing nothing.
                read_only = make_conninfo(url, options="-c default_transaction_read_only=on")
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction, match="INSERT"):
                    await backfill_day(
                        read_only, simulator.url, "backfill-test-token", today, until=until
                    )
                sessions_before = sessions_of(url)
                report = await backfill_day(
                    url, simulator.url, "backfill-test-token", today, until=until
                )
                # One connection to find the gaps, one to store every instrument's candles:
                # not one per instrument, which at Upstox's 50 candle requests a second was
                # as many new backends.
                assert len(keys) > 2
                assert sessions_of(url) - sessions_before - 1 <= 2  # less this count's own
                # Each candle counted is of a gap minute left to fill, and filled: the stop's,
                # the unheard one, the restart's, the last stop's (and the first start's,
                # unless the service's own backfill filled it already). A minute subscribed
                # in before the simulator traded has no candle.
                assert {item.instrument_key for item in report.instruments} == set(keys)
                for item in report.instruments:
                    assert item.gap_minutes >= item.candles == item.filled >= 4, item
                again = await backfill_day(
                    url, simulator.url, "backfill-test-token", today, until=until
                )
                # Run again: what is left are minutes without a trade (the first ones
                # subscribed, before the simulator traded): no candle, nothing new.
                assert (again.filled, sum(i.candles for i in again.instruments)) == (0, 0)
        finally:
            await asyncio.gather(*(service.stop() for service in services))
            await witness.stop()
            listening.cancel()
        async with CandleClient(simulator.url, "backfill-test-token") as client:
            streamed = {key: await client.minute_candles(key, today) for key in keys}

    for edition, url in urls.items():
        for key in keys:
            candles = {c.start: c for c in streamed[key] if c.start < until}
            rows = minute_rows(url, key, first_start, until)
            as_printed = {
                start: (c.open, c.high, c.low, c.close, c.volume) for start, c in candles.items()
            }
            ours = {start: (*row[:4], row[4] or 0) for start, row in rows.items()}  # index: None
            assert ours == as_printed, (edition, key)
            # The candle replaced exactly the minutes no span covers whole: those of the
            # stops and the restart, the one unheard, and the first start's (unless the
            # socket opened before the simulator traded), or the next if a start was slow.
            repaired = {start for start, row in rows.items() if row[5] == "backfill"}
            assert repaired == uncovered_minutes(url, candles), (edition, key)
            stopped_in, started_in = minute_of(stop), minute_of(restart)
            planned = {stopped_in, stopped_in + MINUTE, started_in, minute_of(last_stop)}
            assert planned <= repaired, (edition, key)
            # Beneath the bars, the ticks never credit unheard volume to a minute: what a
            # minute's ticks carry is at most what traded in it, all of it when heard whole.
            heard = tick_volumes(url, key, first_start, until)
            for start, volume in heard.items():
                assert volume <= candles[start].volume, (edition, key, start)
                if start not in repaired:
                    assert volume == candles[start].volume, (edition, key, start)
            five = five_minute_volumes(url, key, first_start - 5 * MINUTE, until)
            by_bucket: dict[datetime, int] = defaultdict(int)
            for start, c in candles.items():
                by_bucket[start - timedelta(minutes=start.minute % 5)] += c.volume
            assert {bucket: volume or 0 for bucket, volume in five.items()} == by_bucket, (
                edition,
                key,
            )
