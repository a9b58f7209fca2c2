"""Upstox's 1-minute candles: the client against the simulator's candle endpoints, over real
loopback sockets. The candles must be what the simulator streamed, minute by minute; a 429
is backed off and the call goes through; a 401 is one clear error without the token."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta

import httpx
import pandas as pd
import pytest

from core.ist import IST
from ingest.simulator import FeedSimulator, SentTick
from ingest.upstox.candles import (
    Candle,
    CandleAuthError,
    CandleClient,
    CandleError,
    RateLimits,
)
from ingest.upstox.proto import upstox_feed_v3_pb2 as pb
from tests.test_simulator import feed, http_get, request, sent_tick

RELIANCE = "NSE_EQ|INE002A01018"
NIFTY = "NSE_INDEX|Nifty 50"
NIFTY_FUT = "NSE_FO|900001"
SBIN = "NSE_EQ|INE062A01020"  # in the simulator's universe; subscribed by nobody below
KEYS = [RELIANCE, NIFTY, NIFTY_FUT]
TOKEN = "candle-test-token-0123456789"
# Quick retries for the tests; the windows are Upstox's own.
FAST = RateLimits(((50, 1.0), (500, 60.0), (2000, 1800.0)), backoff_s=0.02, attempts=5)


def today() -> date:
    return datetime.now(IST).date()


@asynccontextmanager
async def streamed(seconds: float = 1.5) -> AsyncIterator[FeedSimulator]:
    """A simulator that has streamed KEYS in full mode for `seconds` to one client; it
    accepts any token until told to reject them (`/_sim/reject_token`)."""
    async with FeedSimulator(rate=400, frame_interval=0.02) as simulator:
        async with feed(simulator) as ws:
            await request(ws, "sub", KEYS, "full")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    while True:
                        await ws.recv()
        yield simulator


def expected_candles(simulator: FeedSimulator, key: str) -> list[Candle]:
    """The minutes of what the simulator sent."""
    return minutes_of(simulator.sent_ticks(), key)


def minutes_of(sent: list[SentTick], key: str) -> list[Candle]:
    """`key`'s minutes of these ticks (in the order sent), built with pandas: LTP
    open/high/low/close and the rise of vtt since the instrument's previous tick."""
    ticks = pd.DataFrame(sent, columns=["key", "ltt", "ltp", "ltq", "vtt"])
    ticks = ticks[ticks.key == key].copy()
    ticks["traded"] = ticks.vtt.astype("Float64").diff().fillna(0).astype(int)
    ticks["start"] = pd.to_datetime(ticks.ltt, unit="ms", utc=True).dt.floor("min")
    bars = ticks.groupby("start").agg(
        open=("ltp", "first"),
        high=("ltp", "max"),
        low=("ltp", "min"),
        close=("ltp", "last"),
        volume=("traded", "sum"),
    )
    return [
        Candle(start.to_pydatetime(), r.open, r.high, r.low, r.close, int(r.volume), 0)
        for start, r in bars.iterrows()
    ]


def test_candles_are_the_minutes_of_what_the_simulator_streamed() -> None:
    async def main() -> None:
        async with streamed() as simulator, CandleClient(simulator.url, TOKEN) as client:
            for key in KEYS:
                candles = await client.minute_candles(key, today())
                assert candles, key
                assert candles == expected_candles(simulator, key), key
                assert all(c.start.utcoffset() == timedelta(hours=5, minutes=30) for c in candles)
            index = await client.minute_candles(NIFTY, today())
            assert {candle.volume for candle in index} == {0}  # an index trades no volume
            assert sum(c.volume for c in await client.minute_candles(RELIANCE, today())) > 0

    asyncio.run(main())


def test_past_days_come_from_historical_v3_and_a_day_not_streamed_has_no_candles() -> None:
    async def main() -> None:
        async with streamed(0.5) as simulator, CandleClient(simulator.url, TOKEN) as client:
            assert await client.minute_candles(RELIANCE, today() - timedelta(days=1)) == []
            with pytest.raises(CandleError, match="after today"):
                await client.minute_candles(RELIANCE, today() + timedelta(days=1))
            # Historical V3 (to_date first) over today answers what the intraday call does.
            key, day = "NSE_EQ%7CINE002A01018", today().isoformat()
            base = f"{simulator.url}/v3/historical-candle"
            intraday = await asyncio.to_thread(http_get, f"{base}/intraday/{key}/minutes/1", TOKEN)
            historical = await asyncio.to_thread(
                http_get, f"{base}/{key}/minutes/1/{day}/{day}", TOKEN
            )
            assert intraday == historical
            assert intraday[0] == 200
            assert intraday[1]["data"]["candles"]
            status, body = await asyncio.to_thread(
                http_get, f"{base}/{key}/minutes/1/2026-01-01/2026-01-05", TOKEN
            )
            assert status == 400
            assert "to_date" in body["errors"][0]["message"]

    asyncio.run(main())


def test_a_429_is_backed_off_and_the_call_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with (
            streamed(0.5) as simulator,
            CandleClient(simulator.url, TOKEN, limits=FAST) as client,
        ):
            wanted = await client.minute_candles(RELIANCE, today())
            status, _ = await asyncio.to_thread(http_get, f"{simulator.url}/_sim/throttle?n=3")
            assert status == 200
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="ingest.upstox.candles"):
                assert await client.minute_candles(RELIANCE, today()) == wanted
            # Three waits, doubling from 0.02 s.
            assert time.monotonic() - started >= 0.02 + 0.04 + 0.08
            retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
            assert len(retries) == 3
            assert all("429" in m and "UDAPI10005" in m for m in retries)

            await asyncio.to_thread(http_get, f"{simulator.url}/_sim/throttle?n=10")
            impatient = CandleClient(simulator.url, TOKEN, limits=FAST)
            with pytest.raises(CandleError, match=r"429.*UDAPI10005.*gave up after 5 attempts"):
                await impatient.minute_candles(RELIANCE, today())
            await impatient.aclose()

    asyncio.run(main())


def test_a_401_is_one_clear_error_without_the_token(caplog: pytest.LogCaptureFixture) -> None:
    wrong = "wrong-token-must-not-leak-42"
    sent: list[httpx.Request] = []

    async def count(req: httpx.Request) -> None:
        sent.append(req)

    async def main() -> None:
        async with (
            streamed(0.3) as simulator,
            httpx.AsyncClient(event_hooks={"request": [count]}) as http,
        ):
            await asyncio.to_thread(http_get, f"{simulator.url}/_sim/reject_token?on=1")
            client = CandleClient(simulator.url, wrong, limits=FAST, http=http)
            with (
                caplog.at_level(logging.DEBUG),
                pytest.raises(CandleAuthError, match="refused") as raised,
            ):
                await client.minute_candles(RELIANCE, today())
            await client.aclose()
            assert not http.is_closed  # a client it was given stays its owner's
        assert len(sent) == 1  # no retry loop on a dead token
        assert "UDAPI100050" in str(raised.value)
        assert wrong not in str(raised.value)
        assert wrong not in repr(raised.value)
        assert wrong not in caplog.text

    asyncio.run(main())


def test_requests_stay_within_the_per_second_window() -> None:
    """Ten calls through a window of 4 a second take over a second: the limiter waits."""

    async def main() -> None:
        limits = RateLimits(((4, 1.0),), backoff_s=0.02)
        async with (
            streamed(0.3) as simulator,
            CandleClient(simulator.url, TOKEN, limits=limits) as client,
        ):
            started = time.monotonic()
            await asyncio.gather(*(client.minute_candles(NIFTY, today()) for _ in range(10)))
            assert time.monotonic() - started >= 1.0

    asyncio.run(main())


class FastClock:
    """Market time from 10:00 IST today, running `speed` times as fast as the wall clock:
    a test then sees minutes pass in seconds."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.wall_start = time.time()
        self.start = datetime.combine(today(), datetime.min.time(), IST) + timedelta(hours=10)

    def __call__(self) -> int:
        elapsed = (time.time() - self.wall_start) * self.speed
        return int((self.start.timestamp() + elapsed) * 1000)


async def hear(simulator: FeedSimulator, seconds: float, into: list[SentTick]) -> None:
    """Follow KEYS for `seconds`, then stall the market and read what was on its way, so
    that the client heard every tick sent to it before it leaves."""
    async with feed(simulator) as ws:
        await request(ws, "sub", KEYS, "full")
        frames: list[bytes] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    frames.append(await ws.recv())
        simulator.stall(3)
        with contextlib.suppress(TimeoutError):
            while True:
                frames.append(await asyncio.wait_for(ws.recv(), 0.5))
    for raw in frames:
        response = pb.FeedResponse.FromString(raw)
        if response.type != pb.market_info:
            ticks = [sent_tick(key, feed_) for key, feed_ in response.feeds.items()]
            into.extend(tick for tick in ticks if tick not in into)


def test_the_whole_market_has_candles_for_minutes_nobody_heard() -> None:
    """Minutes nobody was subscribed in have candles (an outage of the whole store can be
    backfilled), of a key followed before and of a universe key nobody followed; a minute a
    client heard is still exactly what it heard."""

    async def main() -> None:
        clock = FastClock(speed=60)  # a market minute a second
        async with FeedSimulator(
            rate=400, frame_interval=0.02, whole_market=True, clock=clock
        ) as simulator:
            heard: list[SentTick] = []
            await hear(simulator, 1.5, heard)
            await asyncio.sleep(5)  # nobody subscribed for about five market minutes
            await hear(simulator, 1.5, heard)
            async with CandleClient(simulator.url, TOKEN) as client:
                candles = {key: await client.minute_candles(key, today()) for key in KEYS}
                nobody_s = await client.minute_candles(SBIN, today())
            assert simulator.stats()["whole_market"] is True
        for key in KEYS:
            expected = minutes_of(sorted(heard, key=lambda tick: tick[1]), key)
            heard_minutes = {candle.start for candle in expected}
            assert [c for c in candles[key] if c.start in heard_minutes] == expected, key
            unheard = [c for c in candles[key] if c.start not in heard_minutes]
            first, last = min(heard_minutes), max(heard_minutes)
            assert [c for c in unheard if first < c.start < last], f"{key}: the outage"
        assert len(nobody_s) >= 5
        assert sum(candle.volume for candle in nobody_s) > 0

    asyncio.run(main())
