"""The feed simulator, spoken to as the ingest speaks to Upstox: real sockets on loopback.

What comes over the wire is decoded with the generated protobuf classes and held against
what the simulator says it sent, and against a reference built field by field with those
classes from the simulated instruments themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from google.protobuf.message import DecodeError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from core.upstox_wire import MODES
from ingest.simulator import FeedSimulator
from ingest.simulator.frames import ENCODERS, snapshot_frame
from ingest.simulator.market import DEFAULT_UNIVERSE, Instrument, Universe
from ingest.upstox.proto import upstox_feed_v3_pb2 as pb

RELIANCE = "NSE_EQ|INE002A01018"
SBIN = "NSE_EQ|INE062A01020"
NIFTY = "NSE_INDEX|Nifty 50"
BANK_NIFTY = "NSE_INDEX|Nifty Bank"
NIFTY_FUT = "NSE_FO|900001"
NIFTY_CE = "NSE_FO|900003"
NIFTY_PE = "NSE_FO|900004"
ALL_KEYS = [str(record["instrument_key"]) for record in DEFAULT_UNIVERSE]
STOCK_KEYS = [RELIANCE, SBIN, NIFTY_FUT, NIFTY_CE, NIFTY_PE]
TICK_SIZE = {
    str(r["instrument_key"]): float(r.get("tick_size", 5.0)) / 100 for r in DEFAULT_UNIVERSE
}


# Talking to the simulator


def http_get(url: str, token: str | None = "any-token") -> tuple[int, dict]:
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


async def authorize(simulator: FeedSimulator, token: str | None = "any-token") -> tuple[int, dict]:
    url = f"{simulator.url}/v3/feed/market-data-feed/authorize"
    return await asyncio.to_thread(http_get, url, token)


@asynccontextmanager
async def feed(simulator: FeedSimulator) -> AsyncIterator[ClientConnection]:
    """A feed connection through the authorize call, its market_info frame already read."""
    status, body = await authorize(simulator)
    assert status == 200, body
    async with connect(body["data"]["authorized_redirect_uri"], max_size=None) as ws:
        first = pb.FeedResponse.FromString(await ws.recv())
        assert first.type == pb.market_info
        yield ws


async def request(ws: ClientConnection, method: str, keys: list[str], mode: str | None) -> None:
    data: dict[str, object] = {"instrumentKeys": keys}
    if mode is not None:
        data["mode"] = mode
    await ws.send(
        json.dumps({"guid": f"g{time.monotonic_ns()}", "method": method, "data": data}).encode()
    )


async def frame(ws: ClientConnection) -> tuple[bytes, pb.FeedResponse]:
    raw = await asyncio.wait_for(ws.recv(), 15)
    assert isinstance(raw, bytes), raw
    return raw, pb.FeedResponse.FromString(raw)


async def drain(ws: ClientConnection, quiet: float) -> None:
    """Read until nothing has come for `quiet` seconds."""
    with contextlib.suppress(TimeoutError):
        while True:
            await asyncio.wait_for(ws.recv(), quiet)


async def failure(ws: ClientConnection) -> dict:
    """The next text frame, skipping feed frames that were already on their way."""
    while True:
        message = await asyncio.wait_for(ws.recv(), 10)
        if isinstance(message, str):
            return json.loads(message)


def top_level_fields(raw: bytes) -> list[tuple[int, bytes | int]]:
    """The fields of a protobuf message as they sit on the wire, repeats and all: a decoded
    map keeps the last of two entries with one key, so this is how to see the first."""
    fields: list[tuple[int, bytes | int]] = []
    position = 0

    def varint() -> int:
        nonlocal position
        value = shift = 0
        while True:
            byte = raw[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while position < len(raw):
        tag = varint()
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            fields.append((number, varint()))
        elif wire_type == 2:
            length = varint()
            fields.append((number, raw[position : position + length]))
            position += length
        elif wire_type == 1:
            fields.append((number, raw[position : position + 8]))
            position += 8
        else:
            raise AssertionError(f"unexpected wire type {wire_type}")
    return fields


def keys_on_the_wire(raw: bytes) -> list[str]:
    entries = [value for number, value in top_level_fields(raw) if number == 2]
    return [
        next(v for n, v in top_level_fields(entry) if n == 1).decode()  # type: ignore[union-attr]
        for entry in entries  # type: ignore[arg-type]
    ]


def sent_tick(key: str, feed_: pb.Feed) -> tuple[str, int, float, int | None, int | None]:
    """A decoded feed in the shape of `FeedSimulator.sent_ticks()`."""
    kind = feed_.WhichOneof("FeedUnion")
    if kind == "ltpc":
        ltpc, vtt = feed_.ltpc, None
    elif kind == "firstLevelWithGreeks":
        ltpc, vtt = feed_.firstLevelWithGreeks.ltpc, feed_.firstLevelWithGreeks.vtt
    elif feed_.fullFeed.WhichOneof("FullFeedUnion") == "indexFF":
        ltpc, vtt = feed_.fullFeed.indexFF.ltpc, None
    else:
        ltpc, vtt = feed_.fullFeed.marketFF.ltpc, feed_.fullFeed.marketFF.vtt
    if key.startswith("NSE_INDEX|"):
        return (key, ltpc.ltt, ltpc.ltp, None, None)
    return (key, ltpc.ltt, ltpc.ltp, ltpc.ltq, vtt)


async def collect(ws: ClientConnection, into: list[bytes]) -> ConnectionClosed | None:
    """Every binary frame until the connection closes; how it closed, if not cleanly."""
    try:
        async for message in ws:
            if isinstance(message, bytes):
                into.append(message)
    except ConnectionClosed as closed:
        return closed
    return None


# Entry


def test_authorize_gives_a_url_that_works_once() -> None:
    async def scenario() -> None:
        async with FeedSimulator(rate=100) as simulator:
            status, body = await authorize(simulator)
            assert status == 200
            assert body["status"] == "success"
            url = body["data"]["authorized_redirect_uri"]
            assert body["data"]["authorizedRedirectUri"] == url
            assert url.startswith(f"ws://127.0.0.1:{simulator.port}/v3/feed/market-data-feed?")
            assert "requestId=" in url
            assert "code=" in url
            async with connect(url) as ws:
                first = pb.FeedResponse.FromString(await ws.recv())
                assert first.type == pb.market_info
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url):
                    pass
            assert refused.value.response.status_code == 403
            status, second = await authorize(simulator)
            assert second["data"]["authorized_redirect_uri"] != url

    asyncio.run(scenario())


def test_feed_endpoint_redirects_a_bearer_token_to_an_authorized_url() -> None:
    async def scenario() -> None:
        async with FeedSimulator(rate=100) as simulator:
            headers = {"Authorization": "Bearer some-token"}
            async with connect(simulator.feed_url, additional_headers=headers) as ws:
                first = pb.FeedResponse.FromString(await ws.recv())
                assert first.type == pb.market_info
                assert "code=" in ws.request.path  # the handshake that succeeded was redirected
            with pytest.raises(InvalidStatus) as refused:
                async with connect(simulator.feed_url):
                    pass
            assert refused.value.response.status_code == 401

    asyncio.run(scenario())


def test_only_the_configured_token_is_accepted() -> None:
    async def scenario() -> None:
        async with FeedSimulator(token="right-token", rate=100) as simulator:
            assert (await authorize(simulator, "wrong-token"))[0] == 401
            assert (await authorize(simulator, None))[0] == 401
            assert (await authorize(simulator, ""))[0] == 401
            status, body = await authorize(simulator, "right-token")
            assert status == 200, body

    asyncio.run(scenario())


def test_rejected_token_gets_401_udapi100050_until_reset() -> None:
    async def scenario() -> None:
        async with FeedSimulator(rate=100) as simulator:
            simulator.reject_token()
            status, body = await authorize(simulator)
            assert status == 401
            assert body["status"] == "error"
            assert body["errors"][0]["errorCode"] == "UDAPI100050"
            assert body["errors"][0]["message"] == "Invalid token used to access API"
            headers = {"Authorization": "Bearer any-token"}
            with pytest.raises(InvalidStatus) as refused:
                async with connect(simulator.feed_url, additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 401
            simulator.reject_token(False)
            assert (await authorize(simulator))[0] == 200

    asyncio.run(scenario())


def test_binds_to_loopback_only() -> None:
    async def scenario() -> None:
        with pytest.raises(ValueError, match="loopback"):
            await FeedSimulator().start(host="0.0.0.0")

    asyncio.run(scenario())


# Conversation


def test_market_info_first_then_a_snapshot_then_live_frames() -> None:
    async def scenario() -> None:
        async with FeedSimulator(rate=2000, frame_interval=0.05) as simulator:
            _status, body = await authorize(simulator)
            async with connect(body["data"]["authorized_redirect_uri"]) as ws:
                raw, info = await frame(ws)
                assert info.type == pb.market_info
                assert dict(info.marketInfo.segmentStatus) == {
                    "NSE_EQ": pb.NORMAL_OPEN,
                    "NSE_FO": pb.NORMAL_OPEN,
                    "NSE_INDEX": pb.NORMAL_OPEN,
                }
                assert abs(info.currentTs - time.time() * 1000) < 60_000
                await request(ws, "sub", ALL_KEYS, "full")
                raw, snapshot = await frame(ws)
                assert 1 not in [number for number, _ in top_level_fields(raw)], "no type field"
                assert snapshot.type == pb.initial_feed
                assert sorted(snapshot.feeds) == sorted(ALL_KEYS)
                live = [await frame(ws) for _ in range(20)]
        assert all(response.type == pb.live_feed for _, response in live)
        for raw, response in live:
            on_the_wire = keys_on_the_wire(raw)
            assert len(on_the_wire) == len(set(on_the_wire)) == len(response.feeds)
        assert max(len(response.feeds) for _, response in live) > 1, "frames should conflate"

    asyncio.run(scenario())


def test_sub_without_mode_means_ltpc_and_change_mode_switches() -> None:
    async def scenario() -> None:
        async with FeedSimulator(rate=500) as simulator, feed(simulator) as ws:
            await request(ws, "sub", [RELIANCE], None)
            _, snapshot = await frame(ws)
            assert snapshot.feeds[RELIANCE].WhichOneof("FeedUnion") == "ltpc"
            assert snapshot.feeds[RELIANCE].requestMode == pb.ltpc
            await request(ws, "change_mode", [RELIANCE], "option_greeks")
            while True:  # live ltpc frames may still be on their way
                _, response = await frame(ws)
                if response.type == pb.initial_feed:
                    break
            changed = response.feeds[RELIANCE]
            assert changed.WhichOneof("FeedUnion") == "firstLevelWithGreeks"
            assert changed.requestMode == pb.option_greeks
            await request(ws, "unsub", [RELIANCE], None)
            await asyncio.sleep(0.3)
            assert simulator.stats()["subscribed_keys"] == 0

    asyncio.run(scenario())


def test_what_decodes_is_exactly_what_the_simulator_recorded() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes], FeedSimulator]:
        simulator = FeedSimulator(rate=3000, frame_interval=0.05, seed=3)
        await simulator.start()
        full: list[bytes] = []
        greeks: list[bytes] = []
        async with feed(simulator) as first, feed(simulator) as second:
            await request(first, "sub", ALL_KEYS, "full")
            await request(second, "sub", [RELIANCE, NIFTY_CE, NIFTY], "option_greeks")
            readers = [
                asyncio.create_task(collect(first, full)),
                asyncio.create_task(collect(second, greeks)),
            ]
            await asyncio.sleep(1.5)
            await simulator.stop()  # closes both connections after the last frame
            await asyncio.gather(*readers)
        return full, greeks, simulator

    full, greeks, simulator = asyncio.run(scenario())
    received = {
        sent_tick(key, feed_)
        for raw in full + greeks
        for key, feed_ in pb.FeedResponse.FromString(raw).feeds.items()
    }
    sent = simulator.sent_ticks()
    assert len(sent) > 1000
    assert len(sent) == len(set(sent)), "a tick was recorded twice"
    assert received == set(sent)
    assert simulator.stats()["ticks_sent"] == len(sent)


def test_prices_volumes_and_times_move_like_a_market() -> None:
    async def scenario() -> list[pb.FeedResponse]:
        simulator = FeedSimulator(rate=3000, frame_interval=0.05)
        async with simulator, feed(simulator) as ws:
            await request(ws, "sub", STOCK_KEYS, "full")
            return [(await frame(ws))[1] for _ in range(400)]

    history: dict[str, list[pb.MarketFullFeed]] = defaultdict(list)
    for response in asyncio.run(scenario()):
        for key, feed_ in response.feeds.items():
            history[key].append(feed_.fullFeed.marketFF)
    more_than_one_trade = 0
    for key, feeds in history.items():
        assert len(feeds) > 20, key
        for before, after in itertools.pairwise(feeds):
            assert after.ltpc.ltt > before.ltpc.ltt, key
            assert after.ltpc.ltq > 0, key
            assert after.vtt - before.vtt >= after.ltpc.ltq, key
            more_than_one_trade += after.vtt - before.vtt > after.ltpc.ltq
        tick = TICK_SIZE[key]
        for market in feeds:
            ltpc = market.ltpc
            assert abs(ltpc.ltp / tick - round(ltpc.ltp / tick)) < 1e-6, (key, ltpc.ltp)
            if key not in (NIFTY_CE, NIFTY_PE):  # an option's day moves far more
                assert 0.8 * ltpc.cp < ltpc.ltp < 1.2 * ltpc.cp, key
            if market.HasField("marketLevel"):
                quotes = market.marketLevel.bidAskQuote
                assert len(quotes) == 5
                assert quotes[0].bidP <= ltpc.ltp <= quotes[0].askP
                assert [q.bidP for q in quotes] == sorted((q.bidP for q in quotes), reverse=True)
                assert [q.askP for q in quotes] == sorted(q.askP for q in quotes)
                assert all(q.bidQ > 0 and q.askQ > 0 for q in quotes)
            assert market.atp > 0
            assert market.tbq > 0
            assert market.tsq > 0
    assert more_than_one_trade > 0, "sometimes several trades fall between two frames"
    live = [market for feeds in history.values() for market in feeds[1:]]
    assert any(not market.HasField("marketLevel") for market in live), "unchanged depth left out"
    assert any(market.HasField("marketLevel") for market in live)


def test_index_keys_get_index_feeds_in_whole_seconds() -> None:
    async def scenario() -> list[pb.FeedResponse]:
        simulator = FeedSimulator(rate=1000, frame_interval=0.05)
        async with simulator, feed(simulator) as ws:
            await request(ws, "sub", [NIFTY, BANK_NIFTY], "full")
            deadline = time.monotonic() + 2.5
            responses = []
            while time.monotonic() < deadline:
                responses.append((await frame(ws))[1])
            return responses

    responses = asyncio.run(scenario())
    feeds = [(key, f) for response in responses for key, f in response.feeds.items()]
    assert {key for key, _ in feeds} == {NIFTY, BANK_NIFTY}
    ltts: dict[str, list[int]] = defaultdict(list)
    for key, feed_ in feeds:
        assert feed_.fullFeed.WhichOneof("FullFeedUnion") == "indexFF"
        assert feed_.requestMode == pb.full_d5
        ltpc = feed_.fullFeed.indexFF.ltpc
        assert ltpc.ltt % 1000 == 0
        assert ltpc.ltq == 0
        assert ltpc.ltp > 0
        assert ltpc.cp > 0
        ltts[key].append(ltpc.ltt)
    for key, times in ltts.items():
        assert len(times) >= 2, key
        assert times == sorted(set(times)), key
    assert responses[0].feeds[NIFTY].fullFeed.indexFF.marketOHLC.ohlc[0].interval == "1d"


def test_option_keys_get_greeks_in_both_modes() -> None:
    async def scenario() -> tuple[pb.FeedResponse, pb.FeedResponse, list[pb.FeedResponse]]:
        simulator = FeedSimulator(rate=500)
        async with simulator, feed(simulator) as full, feed(simulator) as greeks:
            await request(full, "sub", [NIFTY_CE, NIFTY_PE, RELIANCE], "full")
            await request(greeks, "sub", [NIFTY_CE, NIFTY_PE, SBIN], "option_greeks")
            full_snapshot = (await frame(full))[1]
            greeks_snapshot = (await frame(greeks))[1]
            # A connection nobody reads holds the market up: keep reading the second one.
            reader = asyncio.create_task(collect(greeks, []))
            live = [(await frame(full))[1] for _ in range(60)]
            reader.cancel()
            return full_snapshot, greeks_snapshot, live

    full_snapshot, greeks_snapshot, live = asyncio.run(scenario())
    for key, sign in ((NIFTY_CE, 1), (NIFTY_PE, -1)):
        market = full_snapshot.feeds[key].fullFeed.marketFF
        greeks = market.optionGreeks
        assert 0 < sign * greeks.delta < 1
        assert greeks.gamma > 0
        assert greeks.vega > 0
        assert greeks.theta < 0
        assert sign * greeks.rho > 0
        assert 0 < market.iv < 1
        assert market.oi > 0
        first_level = greeks_snapshot.feeds[key].firstLevelWithGreeks
        assert greeks_snapshot.feeds[key].requestMode == pb.option_greeks
        assert 0 < sign * first_level.optionGreeks.delta < 1
        assert first_level.firstDepth.bidP <= first_level.ltpc.ltp <= first_level.firstDepth.askP
        assert first_level.vtt > 0
        assert first_level.oi > 0
        assert first_level.iv > 0
    stock = full_snapshot.feeds[RELIANCE].fullFeed.marketFF
    assert not stock.HasField("optionGreeks")
    assert stock.oi == 0
    assert stock.iv == 0
    assert not greeks_snapshot.feeds[SBIN].firstLevelWithGreeks.HasField("optionGreeks")
    option_updates = [
        response.feeds[key].fullFeed.marketFF
        for response in live
        for key in (NIFTY_CE, NIFTY_PE)
        if key in response.feeds
    ]
    assert any(market.HasField("optionGreeks") for market in option_updates)


def test_unknown_key_gets_plausible_defaults() -> None:
    async def scenario() -> pb.FeedResponse:
        async with FeedSimulator(rate=100) as simulator, feed(simulator) as ws:
            await request(ws, "sub", ["NSE_EQ|INE000X00000"], "full")
            return (await frame(ws))[1]

    market = asyncio.run(scenario()).feeds["NSE_EQ|INE000X00000"].fullFeed.marketFF
    assert market.ltpc.cp == 1000.0
    assert abs(market.ltpc.ltp / 0.05 - round(market.ltpc.ltp / 0.05)) < 1e-6


def test_over_the_limit_sub_is_refused_and_nothing_subscribed() -> None:
    limits = {"ltpc": (3, 2), "option_greeks": (3, 2), "full": (2, 1), "full_d30": (1, 1)}

    async def scenario() -> None:
        async with FeedSimulator(rate=100, mode_limits=limits) as simulator, feed(simulator) as ws:
            await request(ws, "sub", ALL_KEYS[:4], "ltpc")
            refused = await failure(ws)
            assert refused["status"] == "failed"
            assert refused["method"] == "sub"
            assert "ltpc allows 3" in refused["error"]
            assert simulator.stats()["subscribed_keys"] == 0
            await request(ws, "sub", ALL_KEYS[:2], "ltpc")
            _, snapshot = await frame(ws)
            assert sorted(snapshot.feeds) == sorted(ALL_KEYS[:2])
            await request(ws, "sub", ALL_KEYS[2:4], "full")  # combined: full allows 1
            refused = await failure(ws)
            assert "full allows 1" in refused["error"]
            assert "combined" in refused["error"]
            assert simulator.stats()["subscribed_keys"] == 2

    asyncio.run(scenario())


def test_bad_requests_get_a_failed_frame_and_the_connection_stays() -> None:
    async def scenario() -> None:
        async with FeedSimulator(rate=100) as simulator, feed(simulator) as ws:
            await ws.send(b"{not json")
            assert (await failure(ws))["status"] == "failed"
            await ws.send(json.dumps({"method": "subscribe", "data": {}}).encode())
            unknown = await failure(ws)
            assert unknown["method"] == "subscribe"
            assert "unknown method" in unknown["error"]
            await ws.send(json.dumps({"method": "sub", "data": {"instrumentKeys": [RELIANCE]}}))
            assert "binary" in (await failure(ws))["error"]
            await request(ws, "sub", [RELIANCE], "full_d5")
            assert "mode" in (await failure(ws))["error"]
            await request(ws, "sub", [RELIANCE], "full")
            _, snapshot = await frame(ws)
            assert list(snapshot.feeds) == [RELIANCE]

    asyncio.run(scenario())


def test_a_large_snapshot_is_split_across_frames() -> None:
    async def scenario() -> list[bytes]:
        simulator = FeedSimulator(rate=10, max_frame_bytes=600)
        async with simulator, feed(simulator) as ws:
            await request(ws, "sub", ALL_KEYS, "full")
            frames = []
            while sum(len(keys_on_the_wire(raw)) for raw in frames) < len(ALL_KEYS):
                raw, response = await frame(ws)
                assert response.type == pb.initial_feed
                frames.append(raw)
            return frames

    frames = asyncio.run(scenario())
    assert len(frames) > 1
    assert sorted(key for raw in frames for key in keys_on_the_wire(raw)) == sorted(ALL_KEYS)


# Faults


def test_dropped_connections_close_without_a_close_frame_and_lose_nothing_sent() -> None:
    async def scenario() -> tuple[list[bytes], ConnectionClosed | None, FeedSimulator]:
        simulator = FeedSimulator(rate=3000, frame_interval=0.02)
        async with simulator:
            received: list[bytes] = []
            async with feed(simulator) as ws:
                await request(ws, "sub", ALL_KEYS, "full")
                reader = asyncio.create_task(collect(ws, received))
                await asyncio.sleep(1.0)
                assert await simulator.drop_connections() == 1
                closed = await asyncio.wait_for(reader, 10)
            async with feed(simulator):  # a reconnect through authorize works
                pass
        return received, closed, simulator

    received, closed, simulator = asyncio.run(scenario())
    assert isinstance(closed, ConnectionClosedError)
    assert closed.rcvd is None, "no close frame: an abrupt end"
    decoded = {
        sent_tick(key, feed_)
        for raw in received
        for key, feed_ in pb.FeedResponse.FromString(raw).feeds.items()
    }
    assert len(decoded) > 500
    assert decoded == set(simulator.sent_ticks())


def test_garbage_frame_does_not_decode_and_the_feed_goes_on() -> None:
    async def scenario() -> None:
        async with FeedSimulator(rate=500) as simulator, feed(simulator) as ws:
            await request(ws, "sub", [RELIANCE], "full")
            await frame(ws)
            assert await simulator.send_garbage() == 1
            while True:
                raw = await asyncio.wait_for(ws.recv(), 10)
                try:
                    pb.FeedResponse.FromString(raw)
                except DecodeError:
                    break
            _, after = await frame(ws)
            assert after.type == pb.live_feed
            assert RELIANCE in after.feeds

    asyncio.run(scenario())


def test_stall_stops_frames_but_keeps_the_socket_open() -> None:
    async def scenario() -> None:
        async with (
            FeedSimulator(rate=1000, frame_interval=0.02) as simulator,
            feed(simulator) as ws,
        ):
            await request(ws, "sub", ALL_KEYS, "full")
            await frame(ws)
            simulator.stall(4.0)
            await drain(ws, quiet=0.3)  # what was already on its way
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 1.5)
            assert simulator.stats()["stalled"] is True
            await asyncio.wait_for(await ws.ping(), 5)  # the socket answers all along
            _, resumed = await frame(ws)
            assert resumed.type == pb.live_feed

    asyncio.run(scenario())


# The market behind the feed


def _first_ticks(seed: int) -> dict[str, list[tuple[float, int | None, int | None]]]:
    async def scenario() -> list[tuple]:
        async with FeedSimulator(rate=2000, seed=seed) as simulator, feed(simulator) as ws:
            await request(ws, "sub", ALL_KEYS, "full")
            while len(simulator.sent_ticks()) < 400:
                await frame(ws)
            return simulator.sent_ticks()

    by_key: dict[str, list[tuple[float, int | None, int | None]]] = defaultdict(list)
    for key, _ltt, ltp, ltq, vtt in asyncio.run(scenario()):
        by_key[key].append((ltp, ltq, vtt))
    return by_key


def test_same_seed_same_market() -> None:
    first, second, other = _first_ticks(5), _first_ticks(5), _first_ticks(6)
    # Indices print whole seconds, and options are priced on their index: both follow the
    # clock, not the seed alone.
    options = (NIFTY_CE, NIFTY_PE, "NSE_FO|900005")
    stocks = [key for key in ALL_KEYS if not key.startswith("NSE_INDEX|") and key not in options]
    for key in stocks:
        length = min(len(first[key]), len(second[key]))
        assert length > 10, key
        assert first[key][:length] == second[key][:length], key
    assert any(first[key][:10] != other[key][:10] for key in stocks)


def _reference_ltpc(instrument: Instrument) -> pb.LTPC:
    ltq = 0 if instrument.index else instrument.ltq
    return pb.LTPC(ltp=instrument.ltp, ltt=instrument.ltt, ltq=ltq, cp=instrument.close)


def _reference_candle(instrument: Instrument) -> pb.MarketOHLC:
    candle = pb.OHLC(
        interval="1d",
        open=instrument.day_open,
        high=instrument.day_high,
        low=instrument.day_low,
        close=instrument.ltp,
        vol=instrument.vtt,
        ts=instrument.day_start_ms,
    )
    return pb.MarketOHLC(ohlc=[candle])


def _reference_feed(instrument: Instrument, mode: str, snapshot: bool) -> pb.Feed:
    """The feed the simulator should send, built field by field with the generated classes."""
    ltpc = _reference_ltpc(instrument)
    greeks = pb.OptionGreeks(
        **dict(zip(("delta", "theta", "gamma", "vega", "rho"), instrument.greeks, strict=True))
    )
    with_greeks = instrument.option and (snapshot or instrument.greeks_changed)
    with_depth = snapshot or instrument.depth_changed
    if mode == "ltpc":
        return pb.Feed(ltpc=ltpc)
    if mode == "option_greeks":
        first = pb.FirstLevelWithGreeks(ltpc=ltpc)
        if not instrument.index:
            first.vtt, first.oi, first.iv = instrument.vtt, instrument.oi, instrument.iv
            if with_depth:
                bid_q, bid_p, ask_q, ask_p = instrument.depth(1)[0]
                first.firstDepth.CopyFrom(pb.Quote(bidQ=bid_q, bidP=bid_p, askQ=ask_q, askP=ask_p))
            if with_greeks:
                first.optionGreeks.CopyFrom(greeks)
        return pb.Feed(firstLevelWithGreeks=first, requestMode=pb.option_greeks)
    request_mode = pb.full_d5 if mode == "full" else pb.full_d30
    if instrument.index:
        index = pb.IndexFullFeed(ltpc=ltpc)
        if snapshot:
            index.marketOHLC.CopyFrom(_reference_candle(instrument))
        return pb.Feed(fullFeed=pb.FullFeed(indexFF=index), requestMode=request_mode)
    market = pb.MarketFullFeed(
        ltpc=ltpc,
        atp=instrument.atp,
        vtt=instrument.vtt,
        oi=instrument.oi,
        iv=instrument.iv,
        tbq=instrument.tbq,
        tsq=instrument.tsq,
    )
    if with_depth:
        for bid_q, bid_p, ask_q, ask_p in instrument.depth(5 if mode == "full" else 30):
            market.marketLevel.bidAskQuote.add(bidQ=bid_q, bidP=bid_p, askQ=ask_q, askP=ask_p)
    if with_greeks:
        market.optionGreeks.CopyFrom(greeks)
    if snapshot:
        market.marketOHLC.CopyFrom(_reference_candle(instrument))
    return pb.Feed(fullFeed=pb.FullFeed(marketFF=market), requestMode=request_mode)


def test_hand_written_bytes_decode_to_the_instruments_values() -> None:
    cheap_call = {
        "instrument_key": "NSE_FO|999999",
        "segment": "NSE_FO",
        "instrument_type": "CE",
        "tick_size": 5.0,
        "lot_size": 50,
        "strike_price": 30000.0,
        "underlying_key": NIFTY,
        "last_price": 0.1,  # a book this close to zero runs out of bids at depth
    }
    universe = Universe([*DEFAULT_UNIVERSE, cheap_call], seed=11)
    now_ms = 1_790_000_000_000
    keys = [*ALL_KEYS, "NSE_FO|999999", "NSE_EQ|UNKNOWN"]
    instruments = [Instrument(universe.profile(key, now_ms), universe, now_ms) for key in keys]
    checked = 0
    for step in range(150):
        for instrument in instruments:
            snapshot = step % 10 == 0
            if not snapshot and not instrument.trade(now_ms + 7 * step):
                continue
            for mode, encode in ENCODERS.items():
                raw = snapshot_frame(now_ms, [encode(instrument, snapshot)])
                decoded = pb.FeedResponse.FromString(raw)
                assert keys_on_the_wire(raw) == [instrument.key]
                assert decoded.currentTs == now_ms
                expected = _reference_feed(instrument, mode, snapshot)
                assert decoded.feeds[instrument.key] == expected, (instrument.key, mode, step)
                checked += 1
    assert checked > 3000
    assert tuple(ENCODERS) == MODES, "the simulator encodes every feed mode, and no other"
    cheap = instruments[-2]
    assert any(bid_p == 0.0 for _, bid_p, _, _ in cheap.depth(30)), "bids should run out"


# Standalone


def test_command_line_serves_until_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "ingest.simulator", "--port", "0", "--rate", "500", "--record"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("feed simulator listening on http://127.0.0.1:"), line
        base = line.split()[-1]

        async def scenario() -> None:
            status, body = await asyncio.to_thread(
                http_get, f"{base}/v3/feed/market-data-feed/authorize"
            )
            assert status == 200
            async with connect(body["data"]["authorized_redirect_uri"]) as ws:
                await frame(ws)
                await request(ws, "sub", [RELIANCE, NIFTY], "full")
                _, snapshot = await frame(ws)
                assert sorted(snapshot.feeds) == sorted([RELIANCE, NIFTY])
                await frame(ws)

        asyncio.run(scenario())
        status, stats = http_get(f"{base}/_sim/stats")
        assert status == 200
        assert stats["ticks_sent"] > 0
        assert stats["recording"] is True
        status, sent = http_get(f"{base}/_sim/sent_ticks")
        assert status == 200
        assert {tick[0] for tick in sent} <= {RELIANCE, NIFTY}
        assert len(sent) == stats["ticks_sent"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_command_line_without_record_serves_candles_and_names_the_flag() -> None:
    """Candles need no --record (they come from the minute book); the tick list does, and
    its hook says so."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ingest.simulator", "--port", "0", "--rate", "500"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base = process.stdout.readline().split()[-1]
        status, stats = http_get(f"{base}/_sim/stats")
        assert (stats["recording"], stats["whole_market"]) == (False, True)
        candles = f"{base}/v3/historical-candle/intraday/NSE_EQ%7CINE062A01020/minutes/1"
        deadline = time.monotonic() + 20
        while not (answer := http_get(candles))[1].get("data", {}).get("candles"):
            assert answer[0] == 200, answer  # nobody subscribed: its market trades anyway
            assert time.monotonic() < deadline, answer
            time.sleep(0.2)
        status, body = http_get(f"{base}/_sim/sent_ticks")
        assert status == 409
        assert body["errors"][0]["errorCode"] == "SIM_NOT_RECORDED"
        assert "--record" in body["errors"][0]["message"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
