"""FeedClient: the subscriptions of the Upstox V3 feed, kept across reconnects.

The client owns the sockets and the subscriptions, nothing else: every binary frame goes to a
`FrameSink` with the time it was read, and the pipeline behind the sink journals, decodes and
dispatches it. The subscriptions are the client's desired state, not a log of requests: each
reconnect authorizes again (the feed URL is single-use) and re-sends every key in its mode, so
a dropped connection costs a gap in ticks, never a silently shrunken universe.

This class only keeps that state and delegates: `Capacity` decides where keys go, each
`Connection` keeps one socket open, `Authorizer` and `Token` get it onto the feed, and the
`Ledger` counts what `status()` shows.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, KeysView, Mapping

from core.config import Settings
from ingest.client.authorize import Authorizer, Token
from ingest.client.connection import Connection, Feed, FrameSink, FrameSpan
from ingest.client.ledger import Ledger
from ingest.client.planner import Capacity, unique
from ingest.handlers import TickCallback
from ingest.status import FeedStatus

# The state status() reports when connections differ: the one most in need of attention.
_WORST_FIRST = ("failed", "token_rejected", "backoff", "connecting", "connected")


class FeedClient:
    """The feed over one or more websockets, with subscriptions kept across reconnects.

    Usage: `await client.connect()`, `await client.subscribe(keys, mode)`, then
    `await client.listen()` until another task calls `await client.stop()`.
    All methods run on one event loop; none is thread-safe.
    """

    def __init__(
        self,
        settings: Settings,
        sink: FrameSink,
        *,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        token_retry_s: float = 60.0,
        entry: str = "authorize",
        source: str | None = None,
    ) -> None:
        """`token_retry_s`: how long a rejected token is left alone before it is tried again;
        `update_token()` ends the wait at once. `entry`: the documented way in, "authorize"
        (REST call, then the URL it returns) or "redirect" (the feed endpoint with the token,
        which redirects to an authorized URL). `source`: the feed's name in `status()`, the
        API base unless given."""
        authorizer = Authorizer(settings.upstox_api_base, entry)
        if settings.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {settings.max_connections}")
        self._sink = sink
        self._source = source or settings.upstox_api_base
        self._api_base = settings.upstox_api_base
        self._token = Token(settings.upstox_access_token)
        self._ledger = Ledger(self._token.scrub)
        self._capacity = Capacity(settings.mode_limits, settings.max_connections)
        self._feed = Feed(
            sink=sink,
            authorizer=authorizer,
            token=self._token,
            ledger=self._ledger,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            token_retry_s=token_retry_s,
            on_text=self._on_text,
            on_crash=self._on_crash,
            stall_s=settings.stall_s,
            read_pause_s=settings.feed_read_pause_ms / 1000,
        )
        self._connections = [Connection(0, self._feed)]
        self._modes: dict[str, str] = {}  # every subscribed key -> its mode
        self._where: dict[str, Connection] = {}
        self._failed: dict[str, str] = {}  # key -> the server's error
        self._failure_listeners: list[Callable[[dict[str, str]], None]] = []
        self._running = False
        self._stopped = False
        self._done = asyncio.Event()
        self._crash: BaseException | None = None

    def __repr__(self) -> str:
        return f"<FeedClient {self._state()} {len(self._modes)} keys>"

    async def register_handler(self, callback: TickCallback) -> None:
        """Follow every decoded tick with an async `callback` (a dict per tick).

        The sink decodes, so it runs the handlers: each in its own task behind a bounded
        buffer, so a slow or failing callback cannot stall this client or the writer.
        """
        register = getattr(self._sink, "register_handler", None)
        if register is None:
            raise TypeError(f"{type(self._sink).__name__} decodes no ticks to hand to handlers")
        await register(callback)

    def update_token(self, token: str) -> None:
        """Use a new access token from the next authorize on; ends a token_rejected wait."""
        self._token.update(token)

    @property
    def token_state(self) -> str:
        """unchecked, valid or rejected: what the feed made of the current token."""
        return self._token.state

    # -- subscriptions ------------------------------------------------------------------------

    @property
    def subscribed_keys(self) -> KeysView[str]:
        """A live view of the subscribed keys, for the decoder's `wanted`."""
        return self._modes.keys()

    def get_subscribed_symbols(self) -> dict[str, str]:
        """Instrument key -> mode of every subscription."""
        return dict(self._modes)

    def failed_subscriptions(self) -> dict[str, str]:
        """Instrument key -> the server's error, for keys the server refused."""
        return dict(self._failed)

    def add_failure_listener(self, listener: Callable[[dict[str, str]], None]) -> None:
        """Call `listener({key: error})` (on the event loop) when the server refuses keys."""
        self._failure_listeners.append(listener)

    def check_capacity(self, keys: Iterable[str], mode: str) -> None:
        """Raise SubscriptionLimitError unless `subscribe(keys, mode)` would fit."""
        self._capacity.plan(unique(keys), mode, self._held())

    def room(self, mode: str) -> int:
        """How many more keys `mode` could take (Capacity.free)."""
        return self._capacity.free(mode, self._held())

    async def subscribe(self, keys: Iterable[str], mode: str = "full") -> None:
        """Subscribe keys in `mode`; a key subscribed in another mode changes mode.

        All or nothing: a request the connections cannot hold raises SubscriptionLimitError
        before anything changes. Keys are kept across reconnects until unsubscribed; without
        an open connection they are sent when it opens.
        """
        # Interned, as the decoder interns the keys of the ticks: the test of every tick
        # against these (`subscribed_keys`) then finds its key by identity.
        keys = [sys.intern(key) for key in unique(keys)]
        plan = self._capacity.plan(keys, mode, self._held())
        for key in keys:
            self._failed.pop(key, None)
        sends: list[tuple[Connection, str, list[str]]] = []
        for index, assignment in plan.items():
            while len(self._connections) <= index:  # the plan opens another connection
                self._connections.append(Connection(len(self._connections), self._feed))
            conn = self._connections[index]
            for key in (*assignment.new, *assignment.changed):
                conn.keys[key] = mode
                self._modes[key] = mode
                self._where[key] = conn
            if assignment.changed:
                sends.append((conn, "change_mode", assignment.changed))
            if assignment.new:
                sends.append((conn, "sub", assignment.new))
        for conn, method, batch in sends:
            if self._running and conn.task is None:
                conn.start()
            await conn.send(method, batch, mode)

    async def unsubscribe(self, keys: Iterable[str]) -> None:
        """Stop receiving keys; keys that are not subscribed are ignored."""
        by_conn: dict[Connection, list[str]] = {}
        for key in unique(keys):
            self._failed.pop(key, None)
            conn = self._where.pop(key, None)
            if conn is None:
                continue
            del conn.keys[key]
            del self._modes[key]
            by_conn.setdefault(conn, []).append(key)
        for conn, batch in by_conn.items():
            await conn.send("unsub", batch, None)

    def _held(self) -> list[Mapping[str, str]]:
        """What each connection holds, key -> mode: the planner's view of the present."""
        return [conn.keys for conn in self._connections]

    def _on_text(self, text: str) -> None:
        """A server error frame; keys it refuses are dropped and reported failed."""
        failed = self._ledger.refused(text)
        if not failed:
            return
        for key in failed:
            conn = self._where.pop(key, None)
            if conn is not None:
                del conn.keys[key]
                del self._modes[key]
        self._failed.update(failed)
        for listener in self._failure_listeners:
            listener(failed)

    # -- running ------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        """Every connection that should be open is open."""
        active = [conn for conn in self._connections if conn.task is not None]
        return bool(active) and all(conn.state == "connected" for conn in active)

    async def connect(self) -> None:
        """Open every needed connection; return once each has connected or failed once.

        A failed first attempt is not raised: the connection keeps retrying, and
        `status()` tells why (say `token_rejected`).
        """
        if self._stopped:
            raise RuntimeError("this FeedClient was stopped; make a new one")
        if not self._running:
            self._running = True
            for conn in self._connections:
                if conn.index == 0 or conn.keys:
                    conn.start()
        await asyncio.gather(*(conn.tried.wait() for conn in self._connections if conn.task))

    async def listen(self) -> None:
        """Run until `stop()`; raises SinkError if the sink failed."""
        if not self._running:
            await self.connect()
        await self._done.wait()
        if self._crash is not None:
            raise self._crash

    async def stop(self) -> None:
        """Close every connection and end `listen()`."""
        self._stopped = True
        await asyncio.gather(*(conn.stop() for conn in self._connections))
        self._done.set()

    def _on_crash(self, exc: BaseException) -> None:
        """A connection died of a bug (the sink failed): `listen()` raises it."""
        self._crash = exc
        self._done.set()

    # -- reporting ----------------------------------------------------------------------------

    def _state(self) -> str:
        if self._stopped:
            return "stopped"
        states = {conn.state for conn in self._connections if conn.task is not None}
        return next((state for state in _WORST_FIRST if state in states), "idle")

    def frame_spans(self) -> list[tuple[int, FrameSpan]]:
        """(connection index, span of its open socket) of every connection that has
        received a frame."""
        return [(conn.index, conn.span) for conn in self._connections if conn.span is not None]

    def status(self) -> FeedStatus:
        """What an operator checks: state, counters, the last error, keys per mode."""
        ledger, now = self._ledger, time.monotonic()
        return FeedStatus(
            source=self._source,
            api_base=self._api_base,
            state=self._state(),
            connections=sum(conn.state == "connected" for conn in self._connections),
            connection_states=[conn.state for conn in self._connections],
            attempts=ledger.attempts,
            connects=ledger.connects,
            reconnects=ledger.reconnects,
            frames=ledger.frames,
            malformed_frames=ledger.malformed,
            last_error=ledger.last_error,
            requests=dict(ledger.requests_sent),
            subscribed=dict(Counter(self._modes.values())),
            failed=len(self._failed),
            stalls=[conn.watch.stalls for conn in self._connections],
            last_data_age_s=[conn.watch.data_age(now) for conn in self._connections],
        )
