"""FeedClient against the feed simulator over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from core.config import Secret, Settings
from ingest.client import FeedClient, SinkError, SubscriptionLimitError
from ingest.simulator import FeedSimulator
from ingest.simulator.frames import market_info_frame
from ingest.upstox.decoder import FeedDecoder
from ingest.upstox.proto import upstox_feed_v3_pb2 as pb
from tests.test_decoder import field

TOKEN = "tok-7Q2x-do-not-print-me"
INFY = "NSE_EQ|INE009A01021"
TCS = "NSE_EQ|INE467B01029"
SBIN = "NSE_EQ|INE062A01020"
RELIANCE = "NSE_EQ|INE002A01018"
NIFTY = "NSE_INDEX|Nifty 50"


class RecordingSink:
    """The pipeline's place: decodes every frame (so garbage raises MalformedFrame)."""

    def __init__(self) -> None:
        self.decoder = FeedDecoder()
        self.frames: list[tuple[str, dict[str, str], int]] = []  # kind, key -> feed kind, time
        self.raw: list[bytes] = []

    def on_frame(self, frame: bytes, received_at_us: int) -> None:
        self.raw.append(frame)
        kind = self.decoder.decode(frame, received_at_us).kind
        feeds = pb.FeedResponse.FromString(frame).feeds
        self.frames.append(
            (
                kind,
                {key: feed.WhichOneof("FeedUnion") for key, feed in feeds.items()},
                received_at_us,
            )
        )

    def live(self, key: str, since: int = 0) -> list[str]:
        """The feed kinds of the live frames for `key`, from frame number `since` on."""
        return [
            feeds[key] for kind, feeds, _ in self.frames[since:] if kind == "live" and key in feeds
        ]


WAIT_S = 15.0  # a bound for a hang, not a speed requirement


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def feed(
    simulator: dict[str, Any] | None = None, client: dict[str, Any] | None = None, **settings: Any
) -> AsyncIterator[tuple[FeedSimulator, FeedClient, RecordingSink]]:
    sim = FeedSimulator(
        **{"token": TOKEN, "rate": 500, "frame_interval": 0.02, **(simulator or {})}
    )
    await sim.start()
    sink = RecordingSink()
    feed_client = FeedClient(
        Settings(
            upstox_api_base=sim.url,
            upstox_access_token=Secret(settings.pop("token", TOKEN)),
            **settings,
        ),
        sink,
        **{"backoff_initial_s": 0.05, "backoff_max_s": 0.5, **(client or {})},
    )
    try:
        yield sim, feed_client, sink
    finally:
        await feed_client.stop()
        await sim.stop()


@contextlib.asynccontextmanager
async def live_socket(**settings: Any) -> AsyncIterator[tuple[Any, FeedClient, RecordingSink]]:
    """A client following INFY, once its live frames flow, with the simulator's side of its
    socket: the test sends frames of its own through it."""
    async with feed(**settings) as (sim, client, sink):
        await client.subscribe([INFY])
        await client.connect()
        await until(lambda: sink.live(INFY), "live frames")
        yield sim._sessions[0].connection, client, sink


@pytest.mark.parametrize("entry", ["authorize", "redirect"])
def test_market_info_then_snapshot_then_live(entry: str) -> None:
    async def main() -> None:
        async with feed(client={"entry": entry}) as (_, client, sink):
            await client.subscribe([INFY, NIFTY], "full")
            await client.connect()
            assert client.is_connected
            await until(lambda: len(sink.live(INFY)) >= 2 and len(sink.live(NIFTY)) >= 2, "live")

            kinds = [kind for kind, _, _ in sink.frames]
            assert kinds[0] == "market_info"
            first = next(i for i, (_, feeds, _) in enumerate(sink.frames) if feeds)
            assert kinds[first] == "snapshot"
            assert set(sink.frames[first][1]) == {INFY, NIFTY}
            assert "live" not in kinds[:first]
            now_us = time.time_ns() // 1000
            assert all(abs(now_us - received) < 60_000_000 for _, _, received in sink.frames)

            status = client.status()
            assert status.state == "connected"
            assert (status.attempts, status.connects, status.reconnects) == (1, 1, 0)
            assert status.frames == len(sink.frames)
            assert status.requests == {"sub": 1}
            assert status.subscribed == {"full": 2}
            assert client.get_subscribed_symbols() == {INFY: "full", NIFTY: "full"}
            assert INFY in client.subscribed_keys

    asyncio.run(main())


def test_reconnect_restores_every_subscription_in_its_mode() -> None:
    async def main() -> None:
        async with feed() as (sim, client, sink):
            await client.connect()
            await client.subscribe([INFY], "full")
            await client.subscribe([NIFTY], "ltpc")
            await until(lambda: sink.live(INFY) and sink.live(NIFTY), "live frames")

            assert await sim.drop_connections() == 1
            await until(lambda: client.status().reconnects == 1, "a reconnect")
            mark = len(sink.frames)
            await until(lambda: sink.live(INFY, mark) and sink.live(NIFTY, mark), "frames again")

            assert set(sink.live(INFY, mark)) == {"fullFeed"}
            assert set(sink.live(NIFTY, mark)) == {"ltpc"}
            assert client.get_subscribed_symbols() == {INFY: "full", NIFTY: "ltpc"}
            assert sim.stats()["subscribed_keys"] == 2
            status = client.status()
            assert status.state == "connected"
            assert status.connects == 2
            assert "closed" in status.last_error or "ConnectionClosed" in status.last_error

    asyncio.run(main())


def test_garbage_frame_is_counted_logged_once_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ingest.client")

    async def main() -> None:
        async with feed() as (sim, client, sink):
            await client.subscribe([INFY])
            await client.connect()
            await until(lambda: sink.live(INFY), "live frames")
            assert await sim.send_garbage() == 1
            await sim.send_garbage()
            await until(lambda: client.status().malformed_frames == 2, "two malformed frames")
            mark = len(sink.frames)
            await until(lambda: len(sink.live(INFY, mark)) >= 2, "frames after the garbage")
            assert client.status().connects == 1  # the same connection carried on

    asyncio.run(main())
    malformed = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(malformed) == 1
    assert b"\x0fgarbage".hex() in malformed[0].getMessage()


def test_a_message_in_fragments_reaches_the_sink_whole_and_in_its_place() -> None:
    """Binary frames go to the sink as they are parsed (ingest/client/connection.py); one
    message sent in fragments must still arrive whole, before the message sent after it."""
    whole = market_info_frame(1, {"NSE_EQ": pb.NORMAL_OPEN})
    after = market_info_frame(2, {"NSE_EQ": pb.NORMAL_CLOSE})

    async def main() -> None:
        async with live_socket() as (connection, client, sink):  # the simulator never fragments
            await connection.send([whole[:3], whole[3:10], whole[10:]])
            await connection.send(after)
            await until(lambda: after in sink.raw, "the message after the fragments")
            assert sink.raw.count(whole) == 1
            assert sink.raw.index(whole) < sink.raw.index(after)
            assert client.status().malformed_frames == 0

    asyncio.run(main())


def test_frames_sent_back_to_back_reach_the_sink_once_each_and_in_order() -> None:
    """Reading pauses after each read (TICKVAULT_FEED_READ_PAUSE_MS) so that close frames
    are read together: a burst of several reads' worth must still arrive whole, in order."""
    feeds = {f"NSE_EQ|BURST{n}": pb.Feed(ltpc=pb.LTPC(ltp=float(n))) for n in range(200)}
    burst = [
        pb.FeedResponse(type=pb.live_feed, currentTs=n, feeds=feeds).SerializeToString()
        for n in range(1, 201)
    ]  # 1.3 MB in all: five reads of asyncio's 256 kB at least

    async def main() -> None:
        async with live_socket(feed_read_pause_ms=20) as (connection, client, sink):
            for message in burst:
                await connection.send(message)
            await until(lambda: burst[-1] in sink.raw, "the end of the burst")
            sent = set(burst)
            assert [frame for frame in sink.raw if frame in sent] == burst
            assert client.status().malformed_frames == 0

    asyncio.run(main())


@pytest.mark.parametrize("pause_ms", [0, 60])
def test_a_read_is_followed_by_the_pause_before_the_next(pause_ms: int) -> None:
    """After a read the socket is not read for the pause: a frame sent once the one before
    has reached the sink waits out the rest of it in the kernel's buffer."""
    first = market_info_frame(1, {"NSE_EQ": pb.NORMAL_OPEN})
    second = market_info_frame(2, {"NSE_EQ": pb.NORMAL_CLOSE})

    async def main() -> None:
        async with live_socket(feed_read_pause_ms=pause_ms) as (connection, client, sink):
            socket = client._connections[0]._ws
            assert socket is not None
            await connection.send(first)
            await until(lambda: first in sink.raw, "the first frame")
            reading_right_after = socket.transport.is_reading()
            await connection.send(second)
            await until(lambda: second in sink.raw, "the second frame")
            received = dict(zip(sink.raw, (at for _, _, at in sink.frames), strict=True))
            if pause_ms:
                assert not reading_right_after
                assert (received[second] - received[first]) / 1000 >= pause_ms - 1
            else:
                assert reading_right_after

    asyncio.run(main())


def test_a_large_frame_arriving_in_pieces_is_read_without_pausing_between_them() -> None:
    """Only a read that completed a message pauses: a 2.6 MB frame takes ten or more reads
    of asyncio's 256 kB, which a pause of 100 ms after each would stretch past a second."""
    # 2.6 MB of an unknown field (number 99), which decoders skip: cheap to decode.
    padding = field(99, 2, b"x" * 2_600_000)
    large = pb.FeedResponse(type=pb.live_feed, currentTs=1).SerializeToString() + padding

    async def main() -> None:
        async with live_socket(feed_read_pause_ms=100) as (connection, _, sink):
            await asyncio.sleep(0.2)  # past the pause of the last live frame's read
            sent = time.monotonic()
            await connection.send(large)
            await until(lambda: large in sink.raw, "the large frame")
            assert time.monotonic() - sent < 0.5

    asyncio.run(main())


@pytest.mark.parametrize("entry", ["authorize", "redirect"])
def test_rejected_token_waits_for_a_new_one(entry: str) -> None:
    async def main() -> None:
        async with feed(client={"entry": entry}, token="expired-token") as (_, client, sink):
            await client.subscribe([INFY])
            await client.connect()
            assert client.status().state == "token_rejected"
            assert not client.is_connected
            await asyncio.sleep(2)
            status = client.status()
            assert status.state == "token_rejected"
            assert status.attempts <= 2
            assert "401" in status.last_error
            assert not sink.frames

            client.update_token(TOKEN)
            await until(lambda: client.is_connected, "a connection with the new token")
            await until(lambda: sink.live(INFY), "live frames")

    asyncio.run(main())


def test_subscribe_beyond_the_limits_subscribes_nothing() -> None:
    limits = {"full": (3, 2), "ltpc": (4, 3)}

    async def main() -> None:
        async with feed(simulator={"mode_limits": limits}, mode_limits=limits) as (sim, client, _):
            await client.connect()
            await client.subscribe(["T|1", "T|2", "T|3"], "full")
            with pytest.raises(SubscriptionLimitError, match=r"2 keys in mode 'full'.* 0 more"):
                await client.subscribe(["T|4", "T|5"], "full")
            # A second mode would make the three full keys exceed the combined limit of 2.
            with pytest.raises(SubscriptionLimitError, match=r"mode 'ltpc'"):
                await client.subscribe(["T|6"], "ltpc")
            assert client.get_subscribed_symbols() == dict.fromkeys(["T|1", "T|2", "T|3"], "full")
            assert client.status().requests == {"sub": 1}

            await client.subscribe(["T|3"], "ltpc")  # full 2, ltpc 1: within the combined limits
            await until(lambda: client.status().requests.get("change_mode") == 1, "the request")
            await until(lambda: sim.stats()["subscribed_keys"] == 3, "the server's count")
            assert client.get_subscribed_symbols()["T|3"] == "ltpc"
            assert client.status().last_error is None  # the server refused nothing

    asyncio.run(main())


def test_a_universe_beyond_one_connection_is_spread_over_several() -> None:
    limits = {"full": (2, 1), "ltpc": (5, 2)}
    keys = [INFY, TCS, SBIN, RELIANCE, NIFTY]

    async def main() -> None:
        async with feed(
            simulator={"mode_limits": limits}, mode_limits=limits, max_connections=3
        ) as (sim, client, sink):
            await client.subscribe(keys, "full")
            await client.connect()
            await until(lambda: sim.stats()["connections"] == 3, "three connections")
            await until(lambda: all(sink.live(key) for key in keys), "frames for every key")
            assert sim.stats()["subscribed_keys"] == 5
            status = client.status()
            assert (status.state, status.connections) == ("connected", 3)
            assert status.last_error is None  # no connection went over the server's limits

            with pytest.raises(SubscriptionLimitError, match=r"3 connection\(s\) have room for 1"):
                await client.subscribe(["T|1", "T|2"], "full")
            await client.subscribe(["T|1"], "full")
            await until(lambda: sim.stats()["subscribed_keys"] == 6, "the sixth key")

    asyncio.run(main())


def test_server_refusal_is_kept_in_status() -> None:
    """A client configured above the server's limits hears the refusal as a text frame."""

    async def main() -> None:
        async with feed(
            simulator={"mode_limits": {"ltpc": (1, 1)}}, mode_limits={"ltpc": (5, 5)}
        ) as (_, client, _sink):
            await client.connect()
            await client.subscribe([INFY, TCS], "ltpc")
            await until(lambda: client.status().last_error is not None, "the refusal")
            assert "failed" in client.status().last_error
            assert client.is_connected

    asyncio.run(main())


def test_stop_ends_listen_and_closes_the_sockets() -> None:
    async def main() -> None:
        async with feed() as (sim, client, _):
            listening = asyncio.create_task(client.listen())
            await until(lambda: client.is_connected, "a connection")
            await client.stop()
            assert await asyncio.wait_for(listening, 5) is None
            assert client.status().state == "stopped"
            await until(lambda: sim.stats()["connections"] == 0, "the server to see the close")

    asyncio.run(main())


def test_a_failing_sink_stops_the_feed_loudly() -> None:
    class BrokenSink:
        def on_frame(self, frame: bytes, received_at_us: int) -> None:
            raise RuntimeError("journal disk is full")

    async def main() -> None:
        sim = FeedSimulator(token=TOKEN)
        await sim.start()
        client = FeedClient(
            Settings(upstox_api_base=sim.url, upstox_access_token=Secret(TOKEN)), BrokenSink()
        )
        try:
            with pytest.raises(SinkError, match="journal disk is full"):
                await asyncio.wait_for(client.listen(), 15)
            # Nothing reads the socket any more: the state must not say "connected".
            assert not client.is_connected
            assert client.status().state == "failed"
        finally:
            await client.stop()
            await sim.stop()

    asyncio.run(main())


@pytest.mark.parametrize(
    "base", ["http://api.upstox.com", "http://10.1.2.3:8080", "ftp://127.0.0.1", "api.upstox.com"]
)
def test_plain_text_is_refused_beyond_loopback(base: str) -> None:
    with pytest.raises(ValueError, match=r"https://.*loopback"):
        FeedClient(Settings(upstox_api_base=base), RecordingSink())


@pytest.mark.parametrize(
    "base", ["https://api.upstox.com", "http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9"]
)
def test_tls_or_loopback_is_accepted(base: str) -> None:
    FeedClient(Settings(upstox_api_base=base), RecordingSink())


def test_the_token_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rejected, accepted = "tok-REJECTED-4a1f9c", "tok-ACCEPTED-77e0b2"
    seen: list[str] = []

    async def main() -> None:
        async with feed(simulator={"token": None}, token=rejected) as (sim, client, sink):
            sim.reject_token()
            await client.subscribe([INFY])
            await client.connect()
            assert client.status().state == "token_rejected"
            seen.extend([repr(client), str(client.status())])
            sim.reject_token(False)
            client.update_token(accepted)
            await until(lambda: sink.live(INFY), "live frames")
            await sim.drop_connections()
            await until(lambda: client.status().reconnects == 1, "a reconnect")
            seen.extend([repr(client), str(client.status())])

    asyncio.run(main())
    assert "Bearer ********" in caplog.text  # the handshake headers were logged, masked
    for token in (rejected, accepted):
        assert token not in caplog.text
        assert all(token not in text for text in seen)
