"""The Upstox V3 market data feed: authorize, connect, subscribe, and keep it that way.

The client owns the sockets and the subscriptions, nothing else: every binary frame goes to a
`FrameSink` with the time it was read, and the pipeline behind the sink journals, decodes and
dispatches it. The subscriptions are the client's desired state, not a log of requests: each
reconnect authorizes again (the feed URL is single-use) and re-sends every key in its mode, so
a dropped connection costs a gap in ticks, never a silently shrunken universe.

A universe larger than one connection may carry is spread over up to `max_connections`
websockets, each reconnecting on its own. Out of market hours a connection can stay silent for
hours; websocket pings are the only liveness check, so silence alone never closes one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, KeysView
from typing import Any, Protocol
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus, WebSocketException

from ingest.config import Secret, Settings
from ingest.handlers import TickCallback
from ingest.upstox.decoder import MalformedFrame
from ingest.upstox.redact import RedactBearer
from ingest.upstox.wire import AUTHORIZE_PATH, FEED_PATH

log = logging.getLogger(__name__)

ENTRIES = ("authorize", "redirect")
_REJECTED_STATUSES = (401, 403)
_ERROR_SAMPLE_CHARS = 300
_TRACKED_REQUESTS = 1024  # recent requests kept so a failure naming a guid finds its keys
_MAX_FRAME_BYTES = 2**24  # a full-mode snapshot of thousands of keys exceeds websockets' 1 MiB
_HTTP_TIMEOUT_S = 10.0


class FrameSink(Protocol):
    """Where frames go. Called on the event loop for every binary frame, so it must be cheap.

    It may raise `MalformedFrame`: the client counts and skips such a frame. Any other
    exception is a bug behind the sink and stops the client (`listen()` raises it).
    """

    def on_frame(self, frame: bytes, received_at_us: int) -> None: ...


class SubscriptionLimitError(ValueError):
    """More keys than the configured connections may carry in a mode; nothing was subscribed."""


class SinkError(RuntimeError):
    """The frame sink raised something other than MalformedFrame; the feed stops on it."""


class _TokenRejected(Exception):
    """Upstox answered 401/403: the token is bad or expired, and only a new one helps."""


class _AuthorizeFailed(Exception):
    """The authorize call failed for a reason a later retry may not share (5xx, network)."""


_ws_log = logging.getLogger(f"{__name__}.websocket")
_ws_log.addFilter(RedactBearer())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirect with the Authorization header, even to another host."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _require_tls(url: str, secure: str, plain: str, what: str) -> None:
    """Plain text is for the simulator on this machine only; everything else is TLS."""
    parts = urlsplit(url)
    if parts.scheme == secure or (parts.scheme == plain and is_loopback(parts.hostname)):
        return
    raise ValueError(
        f"{what} must be a {secure}:// URL ({plain}:// is accepted only for loopback hosts), "
        f"got {parts.scheme}://{parts.hostname}"
    )


class _Connection:
    """One websocket and the keys it carries."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.keys: dict[str, str] = {}  # instrument key -> mode
        self.state = "idle"
        self.opened = 0  # how many times it has connected
        self.ws: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.tried = asyncio.Event()  # set once the first attempt has connected or failed
        self.send_lock = asyncio.Lock()  # keeps a restore and a new request from interleaving

    def counts(self) -> Counter[str]:
        return Counter(self.keys.values())


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
    ) -> None:
        """`token_retry_s`: how long a rejected token is left alone before it is tried again;
        `update_token()` ends the wait at once. `entry`: the documented way in, "authorize"
        (REST call, then the URL it returns) or "redirect" (the feed endpoint with the token,
        which redirects to an authorized URL)."""
        base = settings.upstox_api_base.rstrip("/")
        _require_tls(base, "https", "http", "UPSTOX_API_BASE")
        if entry not in ENTRIES:
            raise ValueError(f"entry must be one of {', '.join(ENTRIES)}, not {entry!r}")
        if settings.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {settings.max_connections}")
        self._settings = settings
        self._sink = sink
        self._token = Secret(settings.upstox_access_token)
        self._token_generation = 0
        self._token_updated = asyncio.Event()
        self._entry = entry
        self._authorize_url = base + AUTHORIZE_PATH
        self._feed_url = "ws" + base.removeprefix("http") + FEED_PATH  # https -> wss
        self._loopback = is_loopback(urlsplit(base).hostname)
        self._ssl = ssl.create_default_context()
        handlers: list[urllib.request.BaseHandler] = [
            urllib.request.HTTPSHandler(context=self._ssl),
            _NoRedirect(),
        ]
        if self._loopback:  # a proxy from the environment has no business with 127.0.0.1
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._token_retry = token_retry_s

        self._connections: list[_Connection] = [_Connection(0)]
        self._modes: dict[str, str] = {}  # every subscribed key -> its mode
        self._where: dict[str, _Connection] = {}
        self._failed: dict[str, str] = {}  # key -> the server's error
        self._failure_listeners: list[Callable[[dict[str, str]], None]] = []
        self._requests: OrderedDict[str, list[str]] = OrderedDict()  # guid -> keys

        self._running = False
        self._stopped = False
        self._done = asyncio.Event()
        self._crash: BaseException | None = None
        self._attempts = 0
        self._connects = 0
        self._requests_sent: Counter[str] = Counter()
        self._reconnects = 0
        self._frames = 0
        self._malformed = 0
        self._malformed_logged: set[str] = set()
        self._last_error: str | None = None

    def __repr__(self) -> str:
        return f"<FeedClient {self._state()} {len(self._modes)} keys>"

    # -- the token ----------------------------------------------------------------------------

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
        if not token:
            raise ValueError("the access token is empty")
        self._token = Secret(token)
        self._token_generation += 1
        updated, self._token_updated = self._token_updated, asyncio.Event()
        updated.set()

    def _scrub(self, text: str) -> str:
        """The text with the token masked, for anything that reaches a log or status()."""
        if self._token:
            text = text.replace(self._token, "********")
        return text[:_ERROR_SAMPLE_CHARS]

    def _error(self, message: str, level: int = logging.WARNING) -> None:
        self._last_error = self._scrub(message)
        log.log(level, "%s", self._last_error)

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
        self._plan(_unique(keys), mode)

    async def subscribe(self, keys: Iterable[str], mode: str = "full") -> None:
        """Subscribe keys in `mode`; a key subscribed in another mode changes mode.

        All or nothing: a request the connections cannot hold raises SubscriptionLimitError
        before anything changes. Keys are kept across reconnects until unsubscribed; without
        an open connection they are sent when it opens.
        """
        keys = _unique(keys)
        plan = self._plan(keys, mode)
        for key in keys:
            self._failed.pop(key, None)
        sends: list[tuple[_Connection, str, list[str]]] = []
        for conn, (new, changed) in plan.items():
            if conn.index == len(self._connections):  # the plan opens another connection
                self._connections.append(conn)
            for key in (*new, *changed):
                conn.keys[key] = mode
                self._modes[key] = mode
                self._where[key] = conn
            if changed:
                sends.append((conn, "change_mode", changed))
            if new:
                sends.append((conn, "sub", new))
        for conn, method, batch in sends:
            if self._running and conn.task is None:
                self._start(conn)
            await self._send(conn, method, batch, mode)

    async def change_mode(self, keys: Iterable[str], mode: str) -> None:
        """Move subscribed keys to `mode`; a key that is not subscribed is a KeyError."""
        keys = _unique(keys)
        missing = [key for key in keys if key not in self._modes]
        if missing:
            raise KeyError(f"not subscribed, so no mode to change: {', '.join(missing[:10])}")
        await self.subscribe(keys, mode)

    async def unsubscribe(self, keys: Iterable[str]) -> None:
        """Stop receiving keys; keys that are not subscribed are ignored."""
        by_conn: dict[_Connection, list[str]] = {}
        for key in _unique(keys):
            self._failed.pop(key, None)
            conn = self._where.pop(key, None)
            if conn is None:
                continue
            del conn.keys[key]
            del self._modes[key]
            by_conn.setdefault(conn, []).append(key)
        for conn, batch in by_conn.items():
            await self._send(conn, "unsub", batch, None)

    def _plan(self, keys: list[str], mode: str) -> dict[_Connection, tuple[list[str], list[str]]]:
        """Which connection takes which key: {conn: (new keys, keys changing mode)}."""
        if mode not in self._settings.mode_limits:
            raise ValueError(
                f"unknown mode {mode!r}; configured modes: {', '.join(self._settings.mode_limits)}"
            )
        conns = list(self._connections)
        conns += [_Connection(i) for i in range(len(conns), self._settings.max_connections)]
        counts = [conn.counts() for conn in conns]
        plan: dict[_Connection, tuple[list[str], list[str]]] = {}
        new: list[str] = []
        for key in keys:
            conn = self._where.get(key)
            if conn is None:
                new.append(key)
            elif conn.keys[key] != mode:
                plan.setdefault(conn, ([], []))[1].append(key)
                counts[conn.index][conn.keys[key]] -= 1
                counts[conn.index][mode] += 1
        if any(self._room(counts[conn.index], mode) < 0 for conn in plan):
            raise self._limit_error(len(keys), mode, counts)
        rest = new
        for conn, count in zip(conns, counts, strict=True):
            if not rest:
                break
            take = min(max(self._room(count, mode), 0), len(rest))
            if take:
                plan.setdefault(conn, ([], []))[0].extend(rest[:take])
                count[mode] += take
                rest = rest[take:]
        if rest:
            raise self._limit_error(len(new), mode, [conn.counts() for conn in conns])
        return plan

    def _room(self, counts: Counter[str], mode: str) -> int:
        """How many more `mode` keys fit a connection holding `counts` (negative: over)."""
        limits = self._settings.mode_limits
        others = {m: n for m, n in counts.items() if m != mode and n > 0}
        if not others:
            return limits[mode][0] - counts[mode]
        if any(n > limits[m][1] for m, n in others.items()):
            return -1
        return limits[mode][1] - counts[mode]

    def _limit_error(
        self, requested: int, mode: str, counts: list[Counter[str]]
    ) -> SubscriptionLimitError:
        allowed = sum(max(self._room(count, mode), 0) for count in counts)
        single, combined = self._settings.mode_limits[mode]
        n = self._settings.max_connections
        return SubscriptionLimitError(
            f"cannot subscribe {requested} keys in mode {mode!r}: {n} connection(s) have room "
            f"for {allowed} more (per connection {single} keys when {mode!r} is the only mode, "
            f"{combined} when modes are combined); nothing was subscribed"
        )

    async def _send(
        self, conn: _Connection, method: str, keys: list[str], mode: str | None
    ) -> None:
        async with conn.send_lock:
            if conn.ws is not None:
                await self._request(conn.ws, method, keys, mode)

    async def _request(
        self, ws: ClientConnection, method: str, keys: list[str], mode: str | None
    ) -> None:
        """Send one request; if the socket just died, the reconnect re-sends the state."""
        guid = uuid.uuid4().hex
        data: dict[str, Any] = {"instrumentKeys": keys}
        if mode is not None:
            data["mode"] = mode
        self._requests[guid] = keys
        if len(self._requests) > _TRACKED_REQUESTS:
            self._requests.popitem(last=False)
        payload = json.dumps({"guid": guid, "method": method, "data": data}).encode()
        with contextlib.suppress(WebSocketException):
            await ws.send(payload)  # bytes: a binary frame, as Upstox wants
            self._requests_sent[method] += 1

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
                    self._start(conn)
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
        # A close handshake first (code 1000), so the server sees a client leaving, not a crash.
        await asyncio.gather(
            *(conn.ws.close() for conn in self._connections if conn.ws is not None),
            return_exceptions=True,
        )
        tasks = [conn.task for conn in self._connections if conn.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in self._connections:
            conn.state = "stopped"
        self._done.set()

    def _start(self, conn: _Connection) -> None:
        conn.task = asyncio.create_task(self._run(conn), name=f"upstox-feed-{conn.index}")

    async def _run(self, conn: _Connection) -> None:
        try:
            await self._keep_open(conn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._crash = exc
            conn.state = "failed"  # never "connected" once nothing reads the socket
            self._error(f"feed connection {conn.index} stopped: {exc}", logging.ERROR)
            self._done.set()
            raise

    async def _keep_open(self, conn: _Connection) -> None:
        """Authorize, connect, restore, read; forever, with backoff between attempts."""
        attempt = 0
        while True:
            conn.state = "connecting"
            self._attempts += 1
            generation = self._token_generation
            opened_at = None
            try:
                if self._entry == "authorize":
                    uri = await asyncio.to_thread(self._authorize, self._token)
                else:
                    uri = self._feed_url
                async with ws_connect(uri, **self._connect_options(uri)) as ws:
                    opened_at = time.monotonic()
                    await self._opened(conn, ws)
                    await self._read(conn, ws)
                if self._stopped:
                    return
                self._error(
                    f"feed connection {conn.index} closed by the server "
                    f"(code {ws.close_code}, {ws.close_reason or 'no reason'})"
                )
            except (_TokenRejected, InvalidStatus) as exc:
                if isinstance(exc, InvalidStatus) and (
                    exc.response.status_code not in _REJECTED_STATUSES
                ):
                    self._error(f"feed connection {conn.index}: {exc}")
                else:
                    await self._await_token(conn, exc, generation)
                    attempt = 0
                    continue
            except (_AuthorizeFailed, OSError, TimeoutError, WebSocketException) as exc:
                self._error(f"feed connection {conn.index}: {type(exc).__name__}: {exc}")
            finally:
                conn.ws = None
            conn.tried.set()
            if opened_at is not None and time.monotonic() - opened_at > self._backoff_max:
                attempt = 0  # it outlived the longest delay: a healthy connection, not a flap
            delay = min(self._backoff_max, self._backoff_initial * 2**attempt)
            attempt = min(attempt + 1, 32)
            conn.state = "backoff"
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _await_token(self, conn: _Connection, exc: Exception, generation: int) -> None:
        """Leave a rejected token alone until update_token() or `token_retry_s` has passed."""
        conn.state = "token_rejected"
        conn.tried.set()
        self._error(f"access token rejected ({exc}); waiting for update_token()")
        if generation != self._token_generation:
            return  # a new token arrived while the rejected one was in flight
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._token_updated.wait(), self._token_retry)

    def _connect_options(self, uri: str) -> dict[str, Any]:
        secure = urlsplit(uri).scheme == "wss"
        options: dict[str, Any] = {
            "additional_headers": {"Authorization": f"Bearer {self._token}"},
            "max_size": _MAX_FRAME_BYTES,
            "close_timeout": 2,
            "logger": _ws_log,
        }
        if secure:
            options["ssl"] = self._ssl
        if is_loopback(urlsplit(uri).hostname):
            options["proxy"] = None
        return options

    def _authorize(self, token: Secret) -> str:
        """The single-use feed URL, from the REST authorize endpoint (runs in a thread)."""
        request = urllib.request.Request(  # noqa: S310 (the scheme is checked in __init__)
            self._authorize_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )
        try:
            with self._opener.open(request, timeout=_HTTP_TIMEOUT_S) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            detail = _error_detail(exc.read())
            if exc.code in _REJECTED_STATUSES:
                raise _TokenRejected(f"authorize answered HTTP {exc.code}{detail}") from None
            raise _AuthorizeFailed(f"authorize answered HTTP {exc.code}{detail}") from None
        except urllib.error.URLError as exc:
            raise _AuthorizeFailed(f"authorize failed: {exc.reason}") from None
        try:
            data = json.loads(body).get("data") or {}
            uri = data.get("authorized_redirect_uri") or data.get("authorizedRedirectUri")
        except (ValueError, AttributeError):
            uri = None
        if not isinstance(uri, str) or not uri:
            raise _AuthorizeFailed("authorize answer carries no authorized_redirect_uri")
        try:
            _require_tls(uri, "wss", "ws", "the authorized feed URL")
        except ValueError as exc:
            raise _AuthorizeFailed(str(exc)) from None
        return uri

    async def _opened(self, conn: _Connection, ws: ClientConnection) -> None:
        """Count the connection and re-send its subscriptions, one request per mode."""
        async with conn.send_lock:
            conn.ws = ws
            conn.state = "connected"
            self._connects += 1
            if conn.opened:
                self._reconnects += 1
            conn.opened += 1
            conn.tried.set()
            by_mode: dict[str, list[str]] = {}
            for key, mode in conn.keys.items():
                by_mode.setdefault(mode, []).append(key)
            for mode, keys in by_mode.items():
                await self._request(ws, "sub", keys, mode)
        log.info(
            "feed connection %d open (%d keys restored)%s",
            conn.index,
            len(conn.keys),
            " after a reconnect" if conn.opened > 1 else "",
        )

    async def _read(self, conn: _Connection, ws: ClientConnection) -> None:
        on_frame = self._sink.on_frame
        async for message in ws:
            received_at_us = time.time_ns() // 1000
            if isinstance(message, bytes):
                self._frames += 1
                try:
                    on_frame(message, received_at_us)
                except MalformedFrame as exc:
                    self._count_malformed(exc)
                except Exception as exc:
                    raise SinkError(f"the frame sink failed: {exc!r}") from exc
            else:
                self._on_text(message)

    def _count_malformed(self, exc: MalformedFrame) -> None:
        self._malformed += 1
        kind = type(exc).__name__
        if kind not in self._malformed_logged:
            self._malformed_logged.add(kind)
            log.warning("skipping a malformed frame (%s); later ones are only counted", exc)

    def _on_text(self, text: str) -> None:
        """Upstox reports errors as JSON text frames; one naming keys marks them failed."""
        self._error(f"feed says: {text}")
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("status") != "failed":
            return
        data = message.get("data")
        keys = data.get("instrumentKeys") if isinstance(data, dict) else None
        if not isinstance(keys, list):
            keys = self._requests.get(str(message.get("guid")))
        if not keys:
            return
        error = self._scrub(str(message.get("error") or message.get("message") or text))
        failed = {}
        for key in keys:
            conn = self._where.pop(key, None)
            if conn is not None:
                del conn.keys[key]
                del self._modes[key]
            failed[key] = self._failed[key] = error
        for listener in self._failure_listeners:
            listener(failed)

    # -- reporting ----------------------------------------------------------------------------

    def _state(self) -> str:
        if self._stopped:
            return "stopped"
        states = {conn.state for conn in self._connections if conn.task is not None}
        for state in ("failed", "token_rejected", "backoff", "connecting", "connected"):
            if state in states:
                return state
        return "idle"

    def status(self) -> dict[str, Any]:
        """What an operator checks: state, counters, the last error, keys per mode."""
        return {
            "state": self._state(),
            "connections": sum(conn.state == "connected" for conn in self._connections),
            "connection_states": [conn.state for conn in self._connections],
            "attempts": self._attempts,  # authorize (or redirect) calls: shows a hot loop
            "connects": self._connects,
            "reconnects": self._reconnects,
            "frames": self._frames,
            "malformed_frames": self._malformed,
            "last_error": self._last_error,
            "requests": dict(self._requests_sent),  # sub / unsub / change_mode sent
            "subscribed": dict(Counter(self._modes.values())),
            "failed": len(self._failed),
        }


def _unique(keys: Iterable[str]) -> list[str]:
    if isinstance(keys, str):
        raise TypeError("keys must be a list of instrument keys, not one string")
    return list(dict.fromkeys(keys))


def _error_detail(body: bytes) -> str:
    """The errorCode and message of an Upstox REST error body, if it has them."""
    try:
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return f" ({first.get('errorCode')}: {first.get('message')})"
    except (ValueError, AttributeError, IndexError, KeyError, TypeError):
        return ""
