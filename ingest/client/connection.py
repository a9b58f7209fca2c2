"""One websocket kept open: authorize, connect, restore its keys, read; again after a drop.

Each connection of a client runs this loop in its own task, so one that drops or waits for a
token never holds up the others. Out of market hours a connection can stay silent for hours and
websocket pings are the liveness check; while a segment it carries is open, the stall
watchdog (watchdog.py) closes and reopens one that has had no data frame for `stall_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.frames import Frame, Opcode
from websockets.protocol import Event

from ingest.backoff import Backoff
from ingest.client.authorize import (
    REJECTED_STATUSES,
    AuthorizeFailed,
    Authorizer,
    Token,
    TokenRejected,
)
from ingest.client.ledger import Ledger
from ingest.client.watchdog import StallWatch, market_statuses, segments_of
from ingest.upstox.decoder import MalformedFrame

log = logging.getLogger(__name__)


class FrameSink(Protocol):
    """Where frames go. Called on the event loop for every binary frame, so it must be cheap.

    It may raise `MalformedFrame`: the client counts and skips such a frame. Any other
    exception is a bug behind the sink and stops the client (`listen()` raises it).
    """

    def on_frame(self, frame: bytes, received_at_us: int) -> None: ...


class SinkError(RuntimeError):
    """The frame sink raised something other than MalformedFrame; the feed stops on it."""


@dataclass(frozen=True)
class Feed:
    """What every connection of one client shares.

    `on_text` hears the server's text frames (its errors); `on_crash` hears the exception
    that ended a connection for good, which only a bug (a failing sink) does.
    """

    sink: FrameSink
    authorizer: Authorizer
    token: Token
    ledger: Ledger
    backoff_initial_s: float
    backoff_max_s: float
    token_retry_s: float
    on_text: Callable[[str], None]
    on_crash: Callable[[BaseException], None]
    stall_s: float = 30.0
    read_pause_s: float = 0.0  # after a read that completed a frame (_FrameReadingConnection)


@dataclass
class FrameSpan:
    """The first and last frame of one open socket, wall-clock microseconds: when the store
    was receiving through it (ingest/jobs/coverage.py records it)."""

    first_us: int
    last_us: int


class _FrameReadingConnection(ClientConnection):
    """websockets' client connection, handing each binary message to `on_binary` as its last
    frame is parsed, inside `data_received`.

    websockets' own path queues a message and wakes the task reading it, one turn of the
    event loop per message: about a fifth of the feed client's CPU per frame
    (BENCHMARKS.md). Text messages, control frames and the handshake still take that path.
    A binary message in fragments is joined here, so frames reach `on_binary` in order.
    Whatever `on_binary` raises aborts the socket and is kept in `delivery_error`.

    After a read that completed a binary message the socket is left alone for
    `read_pause_s`: frames that arrive meanwhile wait in the kernel's buffer and are read
    together, one wake-up of the event loop for them all. A frame costs the ingest tens of
    microseconds however few ticks it carries, so a feed of small frames costs far less a
    tick this way; each frame reaches the sink at most `read_pause_s` later (0: read at
    once). A read that ends inside a message does not pause: a large frame arriving in
    pieces is read whole at once.
    """

    def __init__(
        self,
        *args: Any,
        on_binary: Callable[[bytes], None],
        read_pause_s: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._on_binary = on_binary
        self._read_pause_s = read_pause_s
        self._delivered = 0  # binary messages handed to on_binary
        self._fragments: list[bytes] | None = None  # of a binary message not yet whole
        self.delivery_error: Exception | None = None

    def data_received(self, data: bytes) -> None:
        delivered = self._delivered
        super().data_received(data)
        if self._read_pause_s and self._delivered != delivered and not self.transport.is_closing():
            self.transport.pause_reading()
            self.loop.call_later(self._read_pause_s, self._resume_reading)

    def _resume_reading(self) -> None:
        # Not where the socket is closing, nor while websockets' own queue of text messages
        # holds reading back (its flow control pauses the same transport).
        if not self.transport.is_closing() and not self.recv_messages.paused:
            self.transport.resume_reading()

    def process_event(self, event: Event) -> None:
        if isinstance(event, Frame):
            if event.opcode is Opcode.BINARY:
                if event.fin:
                    self._deliver(bytes(event.data))
                else:
                    self._fragments = [bytes(event.data)]
                return
            if event.opcode is Opcode.CONT and self._fragments is not None:
                self._fragments.append(bytes(event.data))
                if event.fin:
                    message, self._fragments = b"".join(self._fragments), None
                    self._deliver(message)
                return
        super().process_event(event)

    def _deliver(self, message: bytes) -> None:
        self._delivered += 1
        if self.delivery_error is not None:
            return  # the socket is closing on it: nothing more goes on
        try:
            self._on_binary(message)
        except Exception as exc:
            self.delivery_error = exc
            self.transport.abort()


class Connection:
    """One websocket and the keys it carries (key -> mode), which it restores on every open.

    `state` is one of idle, connecting, connected, backoff, token_rejected, failed, stopped.
    """

    def __init__(self, index: int, feed: Feed) -> None:
        self.index = index
        self.keys: dict[str, str] = {}
        self.state = "idle"
        self.opened = 0  # how many times it has connected
        self.task: asyncio.Task[None] | None = None
        self.tried = asyncio.Event()  # set once the first attempt has connected or failed
        self._feed = feed
        self._ws: ClientConnection | None = None
        self._send_lock = asyncio.Lock()  # keeps a restore and a new request from interleaving
        self._stopping = False
        self.watch = StallWatch(feed.stall_s)
        self.span: FrameSpan | None = None  # of the latest socket, new at its first frame
        self._stalled = False  # the watchdog closed the socket now open
        self._socket_span: FrameSpan | None = None  # of the socket being opened or read

    def start(self) -> None:
        """Run the loop in a task of its own."""
        self.task = asyncio.create_task(self._run(), name=f"upstox-feed-{self.index}")

    async def send(self, method: str, keys: list[str], mode: str | None) -> None:
        """Send a request if the socket is open; if not, the next open restores `keys` anyway."""
        async with self._send_lock:
            if self._ws is not None:
                await self._request(self._ws, method, keys, mode)

    async def stop(self) -> None:
        """Close the socket with a handshake (code 1000), so the server sees a client leave."""
        self._stopping = True
        if self._ws is not None:
            await asyncio.gather(self._ws.close(), return_exceptions=True)
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.state = "stopped"

    async def _run(self) -> None:
        try:
            await self._keep_open()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.state = "failed"  # never "connected" once nothing reads the socket
            self._feed.ledger.error(f"feed connection {self.index} stopped: {exc}", logging.ERROR)
            self._feed.on_crash(exc)
            raise

    async def _keep_open(self) -> None:
        """Authorize, connect, restore, read; forever, with backoff between attempts."""
        feed, ledger = self._feed, self._feed.ledger
        backoff = Backoff(feed.backoff_initial_s, feed.backoff_max_s, jitter=(0.5, 1.0))
        while True:
            self.state = "connecting"
            ledger.attempts += 1
            generation = feed.token.generation
            opened_at = None
            try:
                uri = await feed.authorizer.feed_uri(feed.token.current)
                options = feed.authorizer.connect_options(uri, feed.token.current)
                # Frames can come with the handshake's answer, before _read starts.
                self._socket_span = None
                reader = functools.partial(
                    _FrameReadingConnection,
                    on_binary=self._on_binary,
                    read_pause_s=feed.read_pause_s,
                )
                async with ws_connect(uri, create_connection=reader, **options) as ws:
                    opened_at = time.monotonic()
                    feed.token.accepted(generation)
                    await self._opened(ws)
                    stalled = await self._read_watched(ws)
                if self._stopping:
                    return
                if not stalled:
                    ledger.error(
                        f"feed connection {self.index} closed by the server "
                        f"(code {ws.close_code}, {ws.close_reason or 'no reason'})"
                    )
            except (TokenRejected, InvalidStatus) as exc:
                if isinstance(exc, InvalidStatus) and (
                    exc.response.status_code not in REJECTED_STATUSES
                ):
                    ledger.error(f"feed connection {self.index}: {exc}")
                else:
                    await self._await_token(exc, generation)
                    backoff.reset()  # a new token (or a long wait): start again quickly
                    continue
            except (AuthorizeFailed, OSError, TimeoutError, WebSocketException) as exc:
                ledger.error(f"feed connection {self.index}: {type(exc).__name__}: {exc}")
            finally:
                self._ws = None
            self.tried.set()
            if opened_at is not None and time.monotonic() - opened_at > backoff.maximum:
                backoff.reset()  # it outlived the longest delay: a healthy connection, not a flap
            self.state = "backoff"
            await backoff.sleep()

    async def _await_token(self, exc: Exception, generation: int) -> None:
        """Leave a rejected token alone until update_token() or `token_retry_s` has passed."""
        self.state = "token_rejected"
        self.tried.set()
        token = self._feed.token
        # One line per token: later connections and retries that hear it again log nothing.
        level = logging.ERROR if token.rejected(generation) else logging.DEBUG
        self._feed.ledger.error(
            f"the Upstox access token was rejected ({exc}); the feed waits for a new one "
            "(tickvault token set, tickvault login or POST /api/v1/token)",
            level,
        )
        await token.wait_for_new(generation, self._feed.token_retry_s)

    async def _opened(self, ws: ClientConnection) -> None:
        """Count the connection and re-send its subscriptions, one request per mode."""
        ledger = self._feed.ledger
        async with self._send_lock:
            self._ws = ws
            self.state = "connected"
            self.watch.opened(time.monotonic())
            ledger.connects += 1
            if self.opened:
                ledger.reconnects += 1
            self.opened += 1
            self.tried.set()
            by_mode: dict[str, list[str]] = {}
            for key, mode in self.keys.items():
                by_mode.setdefault(mode, []).append(key)
            for mode, keys in by_mode.items():
                await self._request(ws, "sub", keys, mode)
        log.info(
            "feed connection %d open (%d keys restored)%s",
            self.index,
            len(self.keys),
            " after a reconnect" if self.opened > 1 else "",
        )

    async def _read_watched(self, ws: ClientConnection) -> bool:
        """Read until the socket closes; True when the watchdog closed it as stalled."""
        self._stalled = False
        watchdog = asyncio.create_task(self._watch(ws), name=f"upstox-watchdog-{self.index}")
        try:
            await self._read(ws)
        finally:
            watchdog.cancel()
        return self._stalled

    async def _watch(self, ws: ClientConnection) -> None:
        """Close the socket once the feed stalls (see watchdog.py), with one warning."""
        watch = self.watch
        while True:  # a clock to poll, not an event to wait for
            await asyncio.sleep(min(watch.stall_s / 4, 1.0))
            if watch.stalled(time.monotonic(), segments_of(self.keys)):
                break
        log.warning(
            "feed connection %d stalled: no data frame for %.0f s while its market is open "
            "(stall %d); reconnecting",
            self.index,
            watch.stall_s,
            watch.stalls,
        )
        self._stalled = True
        await ws.close(reason="stalled: no data")

    def _on_binary(self, message: bytes) -> None:
        """Hand a binary frame to the sink with its arrival time. It runs inside the socket's
        `data_received`: a MalformedFrame is counted and skipped, anything else the sink
        raises ends the feed (`_read`)."""
        received_at_us = time.time_ns() // 1000
        span = self._socket_span
        if span is None:
            self.span = self._socket_span = FrameSpan(received_at_us, received_at_us)
        else:
            span.last_us = received_at_us
        feed = self._feed
        feed.ledger.frames += 1
        statuses = market_statuses(message)
        if statuses is None:
            self.watch.data(time.monotonic())
        else:
            self.watch.market_info(statuses)
        try:
            feed.sink.on_frame(message, received_at_us)
        except MalformedFrame as exc:
            feed.ledger.malformed_frame(exc)

    async def _read(self, ws: ClientConnection) -> None:
        """Wait for the socket to close, handing its text frames to `on_text` (binary ones
        reach the sink as they are parsed); raises SinkError if the sink failed."""
        assert isinstance(ws, _FrameReadingConnection)
        try:
            async for message in ws:  # text frames: the binary ones went to the sink
                assert isinstance(message, str)
                self._feed.on_text(message)
        finally:
            error = ws.delivery_error
            if error is not None:
                raise SinkError(f"the frame sink failed: {error!r}") from error

    async def _request(
        self, ws: ClientConnection, method: str, keys: list[str], mode: str | None
    ) -> None:
        """Send one request; if the socket just died, the reconnect re-sends the state."""
        payload = self._feed.ledger.request(method, keys, mode)
        with contextlib.suppress(WebSocketException):
            await ws.send(payload)  # bytes: a binary frame, as Upstox wants
            self._feed.ledger.requests_sent[method] += 1
