"""The push stream as its clients see it: a real ingest on the simulator beside a real API,
real WebSockets (the `websockets` library) and Server-Sent Events (httpx).

The feed's clock runs 30 times as fast (tests/clock.py), so a market minute passes in two
seconds and a bar's minute closes while the test watches.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import websockets
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed

from api import create_app
from api.stream_hub import StreamClient
from api.stream_messages import dumps, tick_body
from core.config import Secret, Settings
from ingest.channels.latest_publisher import LatestTickPublisher
from ingest.channels.latest_reader import LatestTickReader
from ingest.channels.latest_table import BARS, IncompatibleTable
from ingest.minute_bars import BAR_FIELDS, MinuteBarHandler
from store.tick_row import TICK_COLUMNS
from tests.clock import FeedClock
from tests.conftest import DbServer
from tests.test_api import API_KEY, INFY, client, ingest_beside, sample_database, serve, wait_for
from tickvault.stream import StreamRefused, stream, stream_url

KEY = {"X-API-Key": API_KEY}
MAX_SYMBOLS = 5
MAX_CLIENTS = 6
QUEUE_MAX = 20


@dataclass
class Live:
    base: str
    ws: str
    database_url: str
    app: FastAPI


@pytest.fixture(scope="module")
def live(apache_server: DbServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with pytest.MonkeyPatch.context() as patch, sample_database(apache_server) as url:
        FeedClock(speed=30).install(patch)
        config = Settings(
            data_dir=Path(tmp_path_factory.mktemp("stream")),
            simulator_rate=2000,
            rollup_interval_s=1,
            api_key=Secret(API_KEY),
            stream_max_symbols=MAX_SYMBOLS,
            stream_max_clients=MAX_CLIENTS,
            stream_queue_max=QUEUE_MAX,
        )
        app = create_app(config, url)
        with ingest_beside(config, url), serve(app) as base, client(base) as http:
            wait_for(lambda: http.get("/health").status_code == 200)
            yield Live(base, stream_url(base), url, app)


def connect(live: Live, **kwargs: Any) -> Any:
    return websockets.connect(live.ws, additional_headers=KEY, **kwargs)


async def subscribe(ws: Any, symbols: Any, **options: Any) -> dict[str, Any]:
    """Subscribe and return the snapshot (skipping heartbeats before it)."""
    await ws.send(json.dumps({"action": "subscribe", "symbols": symbols, **options}))
    return await next_of(ws, "snapshot", "error")


async def next_of(ws: Any, *types: str) -> dict[str, Any]:
    """The next message of one of `types`, within 5 s."""

    async def find() -> dict[str, Any]:
        while True:
            message = json.loads(await ws.recv())
            if message["type"] in types:
                return message

    async with asyncio.timeout(5):
        return await find()


async def close_code(ws: Any) -> int | None:
    """Read until the server closes (within 10 s); its close code."""
    try:
        async with asyncio.timeout(10):
            async for _ in ws:
                pass
    except ConnectionClosed:
        pass
    return ws.close_code


def wait_for_no_clients(live: Live) -> None:
    wait_for(lambda: not live.app.state.stream_hub.clients, timeout=10)


def test_snapshot_then_ticks_within_a_second_through_the_python_client(live: Live) -> None:
    async def main() -> None:
        messages = stream(["INFY", "TCS"], ticks_ms=100, url=live.base, api_key=API_KEY)
        snapshot = await anext(messages)
        while snapshot["type"] == "heartbeat":  # a heartbeat may come first: it is no change
            snapshot = await anext(messages)
        assert snapshot["type"] == "snapshot"
        assert {tick["symbol"] for tick in snapshot["ticks"]} == {"INFY", "TCS"}
        assert {bar["symbol"] for bar in snapshot["bars"]} == {"INFY", "TCS"}
        started = time.monotonic()
        seen: set[str] = set()
        async for message in messages:
            assert message["type"] != "changes"  # the client unpacks its batches
            if message["type"] == "tick":
                assert message["ltp"] > 0
                assert datetime.fromisoformat(message["ts"])
                seen.add(message["symbol"])
            if seen == {"INFY", "TCS"}:
                break
        assert time.monotonic() - started < 1.0
        await messages.aclose()

    asyncio.run(main())


def test_ticks_are_conflated_to_ticks_ms_per_symbol(live: Live) -> None:
    async def main() -> None:
        arrivals: dict[str, list[float]] = {"INFY": [], "TCS": []}
        async with connect(live) as ws:
            await subscribe(ws, ["INFY", "TCS"], ticks_ms=400, bars=False)
            end = time.monotonic() + 2.5
            while time.monotonic() < end:
                message = await next_of(ws, "tick", "bar")
                assert message["type"] == "tick"  # bars: false
                arrivals[message["symbol"]].append(time.monotonic())
        for symbol, times in arrivals.items():
            # At most one tick per 400 ms. A message that reaches this client late (a busy
            # machine) makes the gap after it short and the one before it long by as much, so
            # the gaps are judged by their mean and median, not by the shortest.
            assert len(times) >= 3, symbol
            gaps = [b - a for a, b in itertools.pairwise(times)]
            spacing = (statistics.mean(gaps), statistics.median(gaps))
            assert min(spacing) > 0.35, (symbol, gaps)  # 400 ms, less jitter

    asyncio.run(main())


def test_batch_sends_each_round_of_changes_in_one_message(live: Live) -> None:
    """With "batch": true, the ticks and forming bars due by ticks_ms come in one "changes"
    message, each symbol at most once in it; only a minute's final bar comes on its own."""

    async def main() -> None:
        arrivals: list[float] = []
        made: list[float] = []  # each message's "ts": when the server made it
        symbols: set[str] = set()
        async with connect(live) as ws:
            await subscribe(ws, ["INFY", "TCS"], ticks_ms=300, batch=True)
            end = time.monotonic() + 2.5
            while time.monotonic() < end:
                message = await next_of(ws, "tick", "bar", "changes")
                if message["type"] == "bar":
                    assert message["final"]
                    continue
                assert message["type"] == "changes"
                arrivals.append(time.monotonic())
                made.append(datetime.fromisoformat(message["ts"]).timestamp())
                for kind in ("ticks", "bars"):
                    named = [item["symbol"] for item in message[kind]]
                    assert len(named) == len(set(named)), (kind, named)
                    assert {item["type"] for item in message[kind]} <= {kind[:-1]}
                    symbols.update(named)
            await ws.send(json.dumps({"action": "subscribe", "symbols": ["INFY"], "batch": 1}))
            refused = await next_of(ws, "error")
        assert symbols == {"INFY", "TCS"}
        assert len(arrivals) >= 4
        # One message per 300 ms: the server spaces them; loopback on a loaded machine may
        # deliver one late and the next on time, so the median holds the spacing.
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert statistics.median(gaps) > 0.28, gaps
        # The server's own times carry no loopback jitter: the next one is ticks_ms later.
        assert min(b - a for a, b in itertools.pairwise(made)) > 0.299, made
        assert abs(time.time() - made[-1]) < 5  # a UTC time, not the feed's or a monotonic one
        assert min(gaps) > 0.15, gaps
        assert refused["message"] == '"bars" and "batch" must be true or false'

    asyncio.run(main())


def test_the_last_bar_of_a_minute_equals_the_stored_row(live: Live) -> None:
    """Forming bars as they change, then final ones; once the minute is two behind the feed,
    the last final bar pushed for it is the ohlc_1m row. Heartbeats say open and connected."""

    async def main() -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        finals: dict[str, dict[str, Any]] = {}
        forming: list[dict[str, Any]] = []
        heartbeats: list[dict[str, Any]] = []
        async with connect(live) as ws:
            await subscribe(ws, ["INFY"], ticks_ms=50)
            watched = None
            async with asyncio.timeout(20):
                while True:
                    message = json.loads(await ws.recv())
                    if message["type"] == "heartbeat":
                        heartbeats.append(message)
                    if message["type"] != "bar":
                        continue
                    if message["final"]:
                        finals[message["bucket"]] = message
                        watched = watched or message["bucket"]
                    else:
                        forming.append(message)
                        moved = datetime.fromisoformat(message["bucket"]).timestamp()
                        start = datetime.fromisoformat(watched or message["bucket"]).timestamp()
                        if watched and heartbeats and moved - start >= 120:
                            return finals[watched], forming, heartbeats
        raise AssertionError("unreachable")

    final, forming, heartbeats = asyncio.run(main())
    assert forming
    assert all(bar["instrument_key"] == INFY for bar in forming)
    assert heartbeats[0]["market"] == "open"
    assert heartbeats[0]["feed"] == "connected"
    with psycopg.connect(live.database_url) as conn:
        row = conn.execute(
            "SELECT open, high, low, close, volume, tick_count FROM ohlc_1m"
            " WHERE instrument_key = %s AND bucket = %s",
            [INFY, datetime.fromisoformat(final["bucket"])],
        ).fetchone()
    fields = ("open", "high", "low", "close", "volume", "tick_count")
    assert row is not None
    assert tuple(final[name] for name in fields) == row
    assert final["tick_count"] > 1


def test_server_sent_events_carry_the_same_messages(live: Live) -> None:
    url = f"{live.base}/api/v1/stream/sse"
    params = {"symbols": "INFY,TCS", "ticks_ms": "100"}
    with httpx.Client(timeout=10, headers=KEY) as http:
        with http.stream("GET", url, params=params) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events: list[tuple[str, dict[str, Any]]] = []
            event = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    events.append((event, json.loads(line[6:])))
                    if sum(kind == "tick" for kind, _ in events) >= 4:
                        break
        events = [item for item in events if item[0] != "heartbeat"]
        assert events[0][0] == "snapshot"
        assert len(events[0][1]["ticks"]) == 2
        assert all(body["type"] == kind for kind, body in events)
        assert response.status_code == 200
        refusals = {
            "unknown symbols: NOSUCH": {"symbols": "INFY,NOSUCH"},
            "too many symbols": {"symbols": ",".join(f"S{n}" for n in range(MAX_SYMBOLS + 1))},
        }
        for words, query in refusals.items():
            answer = http.get(url, params=query)
            assert answer.status_code == 400
            assert words in answer.json()["detail"]
        assert http.get(url, params={"symbols": "INFY", "ticks_ms": "10"}).status_code == 422
        anonymous = http.get(url, params={"symbols": "INFY"}, headers={"X-API-Key": ""})
        assert anonymous.status_code == 401
        browser = {"symbols": "INFY", "api_key": API_KEY}  # an EventSource sets no header
        with http.stream("GET", url, params=browser, headers={"X-API-Key": ""}) as response:
            assert response.status_code == 200


def test_bad_input_is_answered_and_other_clients_do_not_notice(live: Live) -> None:
    async def main() -> None:
        async with connect(live) as watcher, connect(live) as ws:
            await subscribe(watcher, ["INFY"], ticks_ms=50)
            errors = {
                "not json{": "malformed JSON",
                "[1, 2]": "a JSON object",
                '{"symbols": ["INFY"]}': '"action"',
                '{"action": "subscribe"}': '"symbols"',
                '{"action": "subscribe", "symbols": ["INFY", "NOSUCH"]}': "unknown symbols: NOSUCH",
                '{"action": "subscribe", "symbols": ["INFY"], "ticks_ms": 5}': '"ticks_ms"',
                '{"action": "subscribe", "symbols": ["INFY"], "bars": "yes"}': '"bars"',
            }
            for text, words in errors.items():
                await ws.send(text)
                message = await next_of(ws, "error", "snapshot")
                assert message["type"] == "error", text
                assert words in message["message"], text
            snapshot = await subscribe(ws, ["TCS"])  # the session goes on
            assert [tick["symbol"] for tick in snapshot["ticks"]] == ["TCS"]

            closes = []
            too_many = [f"S{n}" for n in range(MAX_SYMBOLS + 1)]
            for payload in (
                b"\x00binary",
                "x" * 2**20,
                json.dumps({"action": "subscribe", "symbols": too_many}),
            ):
                async with connect(live) as bad:
                    await bad.send(payload)
                    closes.append(await close_code(bad))
            assert closes == [1003, 1009, 1008]
            await next_of(watcher, "tick")  # still served
            assert watcher.close_code is None

    asyncio.run(main())


def test_a_slow_client_is_closed_with_4000_while_another_keeps_receiving(live: Live) -> None:
    async def main() -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", int(live.base.rsplit(":", 1)[1])))
        async with connect(live, sock=sock, max_queue=1) as slow, connect(live) as reader:
            await slow.send(
                json.dumps({"action": "subscribe", "symbols": "universe", "ticks_ms": 50})
            )
            await subscribe(reader, ["INFY"], ticks_ms=50)
            deadline = time.monotonic() + 15
            while live.app.state.stream_hub.clients.__len__() == 2:  # the slow one goes
                await next_of(reader, "tick")
                assert time.monotonic() < deadline, "the slow client was never closed"
            assert await close_code(slow) == 4000
            assert "fell behind" in slow.close_reason
            await next_of(reader, "tick")
            assert reader.close_code is None

    wait_for_no_clients(live)
    asyncio.run(main())


def test_a_client_queue_is_bounded_in_bytes_as_well_as_messages() -> None:
    """A batch client's messages are large: its memory is held to the byte bound, while an
    empty queue still takes a snapshot bigger than the bound."""

    async def main() -> None:
        client = StreamClient(queue_max=100, queue_max_bytes=1000)
        client.offer(("snapshot", "s" * 5000))  # alone in the queue: taken
        assert not client.behind.is_set()
        assert await client.next_message() == ("snapshot", "s" * 5000)
        assert client.queued_bytes == 0
        client.offer(("changes", "c" * 400))
        client.offer(("changes", "c" * 400))
        assert not client.behind.is_set()
        assert client.queued_bytes == 800
        client.offer(("changes", "c" * 400))  # 1200 bytes would be queued
        assert client.behind.is_set()
        assert client.queue.qsize() == 2
        assert client.queued_bytes == 800
        client.offer(("tick", "t"))  # nothing more once behind
        assert client.queue.qsize() == 2

    asyncio.run(main())


def test_frames_are_compressed_only_where_configured(live: Live, tmp_path: Path) -> None:
    """Compressing each frame cost about half of a worker's stream CPU, so the server declines
    permessage-deflate unless TICKVAULT_STREAM_DEFLATE asks for it; websockets offers it."""

    async def extensions(base: str) -> str | None:
        async with websockets.connect(stream_url(base), additional_headers=KEY) as ws:
            assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
            return ws.response.headers.get("Sec-WebSocket-Extensions")

    assert asyncio.run(extensions(live.base)) is None
    settings = Settings(data_dir=tmp_path, api_key=Secret(API_KEY), stream_deflate=True)
    with serve(create_app(settings, live.database_url)) as base:
        assert "permessage-deflate" in (asyncio.run(extensions(base)) or "")


def test_a_float_json_cannot_hold_is_sent_as_null_with_the_rest_of_the_tick() -> None:
    """NaN or infinity from the feed has no JSON number: the tick still goes out, with null
    there (a refusal would have failed the whole round for every client)."""
    tick = [None] * len(TICK_COLUMNS)
    tick[0], tick[1] = "NSE_EQ|INE009A01021", 0
    tick[TICK_COLUMNS.index("ltp")] = float("nan")
    tick[TICK_COLUMNS.index("cp")] = float("inf")
    tick[TICK_COLUMNS.index("ltq")] = 7
    body = json.loads(dumps(tick_body(tuple(tick), {"NSE_EQ|INE009A01021": "INFY"})))
    assert (body["symbol"], body["ltp"], body["cp"], body["ltq"]) == ("INFY", None, None, 7)
    assert body["ts"] == "2000-01-01T00:00:00+00:00"  # tick times count from 2000 (tick_row)


def test_the_api_key_is_required_when_configured(live: Live) -> None:
    async def main() -> None:
        async with websockets.connect(live.ws) as anonymous:
            assert await close_code(anonymous) == 1008
        async with websockets.connect(
            live.ws, additional_headers={"X-API-Key": "wrong-key"}
        ) as wrong:
            assert await close_code(wrong) == 1008
        async with websockets.connect(f"{live.ws}?api_key={API_KEY}") as browser:
            assert (await subscribe(browser, ["INFY"]))["type"] == "snapshot"
        messages = stream(["INFY"], url=live.base, api_key="wrong-key")
        with pytest.raises(StreamRefused, match="1008"):
            await anext(messages)

    asyncio.run(main())


def test_a_full_worker_closes_one_more_client_with_1013(live: Live) -> None:
    async def main() -> None:
        opened = [await connect(live) for _ in range(MAX_CLIENTS)]
        try:
            for ws in opened:
                assert (await subscribe(ws, ["INFY"]))["type"] == "snapshot"
            async with connect(live) as extra:
                assert await close_code(extra) == 1013
            async with httpx.AsyncClient(base_url=live.base, headers=KEY) as http:
                sse = await http.get("/api/v1/stream/sse", params={"symbols": "INFY"})
                assert sse.status_code == 503
                assert "too many clients" in sse.json()["detail"]
        finally:
            for ws in opened:
                await ws.close()

    wait_for_no_clients(live)
    asyncio.run(main())


def test_a_late_tick_still_updates_the_previous_minute(tmp_path: Path) -> None:
    """The published bars as a reader of another process sees them: the forming minute, the
    previous one updated by a late tick, a tick older than both left to the database; and
    the tick table's reader refuses the bars' file."""
    bars = MinuteBarHandler()
    minute = 60_000_000
    t0 = 1_000 * minute  # microseconds since 2000, on a minute

    def tick(ts: int, ltp: float, delta: int | None) -> tuple:
        row = [None] * len(TICK_COLUMNS)
        row[:6] = [INFY, ts, ltp, 1, 0, delta]
        row[-1] = ts
        return tuple(row)

    bars.on_frame(1, [tick(t0 + 5, 10.0, 3), tick(t0 + 9, 12.0, None), tick(t0 + 9, 11.0, 2)])
    bars.on_frame(2, [tick(t0 + minute + 1, 20.0, 1)])
    bars.on_frame(3, [tick(t0 + 2, 9.0, 4), tick(t0 - minute, 1.0, 1)])  # late; too late
    path = tmp_path / "bars.bin"
    with LatestTickPublisher(path, capacity=4, status_bytes=64, shape=BARS) as publisher:
        publisher.publish(bars.take_changed().values())
        with LatestTickReader(path, shape=BARS) as reader:
            row = reader.latest([INFY])[INFY]
        with LatestTickReader(path) as wrong, pytest.raises(IncompatibleTable):
            wrong.latest([INFY])
    width = len(BAR_FIELDS)
    assert row[1 : 1 + width] == (t0 + minute, 20.0, 20.0, 20.0, 20.0, 1, 1)
    # open: the earliest ts (the late tick); close: the first tick of the latest ts, as
    # last(ltp, ts) keeps; volume: the deltas' sum, None ones skipped, as sum() does.
    assert row[1 + width :] == (t0, 9.0, 12.0, 9.0, 12.0, 9, 4)
