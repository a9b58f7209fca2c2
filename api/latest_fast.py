"""The hot case of `GET /api/v1/websocket/latest-ticks`, answered below FastAPI.

At 1,000 requests/s the API workers have about 1 ms of CPU a request, and a profile of the
FastAPI route (BENCHMARKS.md) put ~20% of it in routing and dependency solving and ~14% in
building a dict and a pydantic model per tick, for an answer that changes only when a tick
does. `LatestTicksShortcut` sits innermost among the middlewares (the trusted-host check,
the API-key gate and the body limit still run first) and answers the hot case itself:

- GET of that exact path, with `symbols` given, valid, and every symbol already remembered
  by the resolver (api/symbol_resolver.py), read from the ingest without a busy slot;
- each tick's JSON is rendered once by the route's own model (`LatestTickOut`) and kept
  while the tick stays the same, so a request joins ten byte strings.

Below that, the HTTP protocol (api/http_protocol.py) gives the same answer (`LatestTicks`)
before any ASGI machinery (no scope, no middleware chain, no task) to a request the three
middlewares in front would pass on unchanged: at 1,000 requests/s the chain of eight ASGI
layers was most of a request's own CPU (BENCHMARKS.md, issue 21 item 4).

Everything else (no `symbols`, a list to check or resolve, an unknown symbol, no ingest, a
busy slot, another method) falls through to the FastAPI route, which gives the errors and
the documented schema as before: the shortcut never answers anything but a 200.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter
from starlette.datastructures import QueryParams, State
from starlette.types import ASGIApp, Receive, Scope, Send

from api.context import ApiContext
from api.models import LatestTickOut
from api.params import checked_symbol_list
from ingest.channels.latest_table import IngestNotRunning, SlotBusy
from store.instruments import UnknownSymbol
from store.tick_row import Tick, as_dict

PATH = "/api/v1/websocket/latest-ticks"
# Rendered ticks kept per (key, requested name); names differ in case ("infy", "INFY"), so
# the memory is bounded, and simply emptied when full: refilling costs one render per tick.
MAX_RENDERED = 10_000
# Queries whose symbols are kept, parsed and checked: a few kB each at most, so the memory
# stays within a few MB; a longer one (up to MAX_SYMBOL_LIST_CHARS) is parsed each time.
MAX_KEPT_QUERIES = 1_000
MAX_KEPT_QUERY_BYTES = 2_048
_UNSEEN: Any = object()

_NAMES = TypeAdapter(list[str])
_HEAD = b'{"source":"cache","ticks":['


class LatestTicks:
    """The hot answer itself, shared by the two places that give it: `LatestTicksShortcut`
    (an ASGI middleware, below the host check, the key gate and the body limit) and the HTTP
    protocol (api/http_protocol.py), which gives it before any ASGI machinery for a request
    those three would let through unchanged (`lets_through`)."""

    def __init__(self, state: State, allowed_hosts: Iterable[str], needs_api_key: bool) -> None:
        self._state = state  # the app's: its `context` is set once its lifespan has begun
        hosts = list(allowed_hosts)
        # TrustedHostMiddleware's test of the Host header's name, for the patterns it compares
        # whole; a wildcard pattern is left to the middleware (the request takes the ASGI path).
        self._any_host = "*" in hosts
        self._hosts = frozenset(h.encode("latin-1") for h in hosts if not h.startswith("*"))
        self._open = not needs_api_key
        self._rendered: dict[tuple[str, str], tuple[Tick, bytes]] = {}
        # The symbols of each query seen (None: not the hot case): a client repeats its query.
        self._queries: dict[bytes, list[str] | None] = {}

    def lets_through(self, host: bytes) -> bool:
        """Whether the middlewares in front of the shortcut pass a GET of the path without a
        body, with this Host header (b"" for none), on to it unchanged: the host is allowed
        by name and the route asks for no API key."""
        return self._open and (self._any_host or host.split(b":", 1)[0] in self._hosts)

    def body(self, query_string: bytes) -> bytes | None:
        """The body of the answer to a GET of PATH with this query, or None for the FastAPI
        route to answer."""
        context: ApiContext | None = getattr(self._state, "context", None)
        names = self._queries.get(query_string, _UNSEEN)
        if names is _UNSEEN:
            names = _names(query_string)
            if len(query_string) <= MAX_KEPT_QUERY_BYTES:
                if len(self._queries) >= MAX_KEPT_QUERIES:
                    self._queries.clear()
                self._queries[query_string] = names
        if context is None or names is None:
            return None
        try:
            keys = context.resolver.remembered(names)
        except UnknownSymbol:
            return None
        if keys is None:
            return None
        latest = _latest(context, keys)
        if latest is None:
            return None
        return self._render(keys, names, latest)

    def _render(self, keys: list[str], names: list[str], latest: dict[str, Tick]) -> bytes:
        rendered = self._rendered
        parts = []
        missing = []
        for key, name in zip(keys, names, strict=True):
            tick = latest.get(key)
            if tick is None:
                missing.append(name)
                continue
            kept = rendered.get((key, name))
            if kept is None or kept[0] != tick:
                if len(rendered) >= MAX_RENDERED:
                    rendered.clear()
                kept = rendered[key, name] = (tick, _render_tick(tick, name))
            parts.append(kept[1])
        return b"".join((_HEAD, b",".join(parts), b'],"missing":', _NAMES.dump_json(missing), b"}"))


class LatestTicksShortcut:
    """ASGI middleware: answers the hot latest-ticks request, passes every other one on."""

    def __init__(self, app: ASGIApp, answer: LatestTicks) -> None:
        self.app = app
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "GET":
            body = self.answer.body(scope["query_string"])
            if body is not None:
                start = {"type": "http.response.start", "status": 200}
                await send({**start, "headers": answer_headers(body)})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def answer_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    """The answer's own headers, as the route's JSONResponse gives them."""
    return [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]


def _names(query_string: bytes) -> list[str] | None:
    """The symbols a query asks for, None when the route must answer (none given, or a list
    it refuses)."""
    raw = QueryParams(query_string).get("symbols")
    if raw is None:
        return None
    names, problem = checked_symbol_list(raw)
    return None if problem is not None else names


def _latest(context: ApiContext, keys: list[str]) -> dict[str, Tick] | None:
    """The ticks from what the ingest publishes; None when the route must answer instead
    (no ingest, a slot busy past the event loop's budget)."""
    try:
        return context.latest(keys, on_loop=True)
    except (IngestNotRunning, SlotBusy):
        return None


def _render_tick(tick: Tick, name: str) -> bytes:
    """A tick's JSON exactly as the route's response model writes it inside its list."""
    fields: dict[str, Any] = {**as_dict(tick), "symbol": name}
    return LatestTickOut.model_validate(fields).model_dump_json().encode()
