"""How many requests of each kind one API worker lets do database work at once.

Without a budget, a flood of one anonymous request that costs the database a lot (coverage
once took 0.42 s; at 10 req/s half the answers were statement timeouts and bars took 3 s)
takes every pooled connection, every worker thread and the database's CPU from everyone
else. Each route that reads the database belongs to a class:

- "cheap": bounded reads of a few index ranges (bars within their window, the calendar,
  the subscription list, latest ticks when a symbol must be looked up);
- "expensive": reads whose cost grows with what is asked (a day's gaps of every
  instrument, the audit of a day, an instrument search, pages of ticks, the bars of many
  symbols at once).

A class has `limit` requests at once; `queue` more may wait on the event loop (no thread,
no connection) for up to `wait_s`; beyond that the request is answered 429 with Retry-After
at once, so a flood of one class answers 429 for itself while the others, /health and the
latest-ticks shortcut (answered from memory before this middleware) stay fast.

The budget is per worker process: `tickvault api` runs TICKVAULT_API_WORKERS of them, so
the server as a whole admits that many times each limit. The read pool has one connection
per admitted request (POOL_SIZE), so an admitted request does not wait for one.
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass(frozen=True)
class RouteClass:
    name: str
    limit: int  # requests of the class doing database work at once, per worker
    queue: int  # more that may wait for one of those places
    wait_s: float  # the longest a request waits before it is answered 429


# One expensive read per worker: with the default two workers, at most two at once, which a
# two-core database host runs beside everyone else's reads (bench/api_flood.py: under 10 req/s
# of the costliest, 1-3 s each, latest ticks' and bars' p99 stayed under 3 times their own).
CHEAP = RouteClass("cheap", limit=6, queue=64, wait_s=2.0)
EXPENSIVE = RouteClass("expensive", limit=1, queue=4, wait_s=1.0)
POOL_SIZE = CHEAP.limit + EXPENSIVE.limit

# Routes not named here read no database (health, metrics, status and its option windows,
# the latest-ticks shortcut) or need the API key (subscription changes, POST audit, the token).
ROUTE_CLASSES: dict[tuple[str, str], RouteClass] = {
    ("GET", "/api/v1/bars/{symbol}"): CHEAP,
    ("GET", "/api/v1/market/calendar"): CHEAP,
    ("GET", "/api/v1/websocket/subscriptions"): CHEAP,
    ("GET", "/api/v1/websocket/latest-ticks"): CHEAP,
    # One index probe per contract (about a hundred), or none at all for the chain now.
    ("GET", "/api/v1/option-chain/{underlying}"): CHEAP,
    ("GET", "/api/v1/option-chain/{underlying}/expiries"): CHEAP,
    # At most 1000 rows, newest first down one index (instrument, name or time).
    ("GET", "/api/v1/signals"): CHEAP,
    ("GET", "/api/v1/coverage"): EXPENSIVE,
    ("GET", "/api/v1/audit"): EXPENSIVE,
    ("GET", "/api/v1/instruments"): EXPENSIVE,
    ("GET", "/api/v1/ticks/{symbol}"): EXPENSIVE,
    # Bars of up to 200 symbols at once: up to 200 times one symbol's read.
    ("GET", "/api/v1/bars"): EXPENSIVE,
}


def route_class(method: str, path: str) -> RouteClass | None:
    """The class of a request, None for one outside every class. HEAD is GET: Starlette
    answers it wherever it answers GET, by running the same route."""
    method = "GET" if method == "HEAD" else method
    found = ROUTE_CLASSES.get((method, path))
    if found is None:
        found = next(
            (cls for (m, pattern), cls in _TEMPLATES if m == method and pattern.fullmatch(path)),
            None,
        )
    return found


# The classed paths with a parameter, as patterns: a parameter is one path segment.
_TEMPLATES = [
    ((method, re.compile(re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(path)))), cls)
    for (method, path), cls in ROUTE_CLASSES.items()
    if "{" in path
]


class _Places:
    """The places of one class in this worker, and the requests waiting for one."""

    def __init__(self, route_class: RouteClass) -> None:
        self.route_class = route_class
        self._free = asyncio.Semaphore(route_class.limit)
        self._waiting = 0

    async def take(self) -> bool:
        """Whether a place was taken (then `give_back` it); False when none came in time."""
        if not self._free.locked():
            await self._free.acquire()  # free now: returns without waiting
            return True
        if self._waiting >= self.route_class.queue:
            return False
        self._waiting += 1
        try:
            await asyncio.wait_for(self._free.acquire(), self.route_class.wait_s)
        except TimeoutError:
            return False
        finally:
            self._waiting -= 1
        return True

    def give_back(self) -> None:
        self._free.release()


class DatabaseBudget:
    """ASGI middleware: admits each classed request into its class's places, or answers 429
    with Retry-After. Innermost: the host check, the key and the body limit come first, and
    the latest-ticks shortcut answers its hot case before a place is asked for."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._places = {cls.name: _Places(cls) for cls in (CHEAP, EXPENSIVE)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = route_class(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        places = self._places[found.name]
        if not await places.take():
            await _too_many(found)(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            places.give_back()


def _too_many(found: RouteClass) -> JSONResponse:
    retry_after = max(1, math.ceil(found.wait_s))
    detail = (
        f"too many {found.name} requests at once: this API worker serves {found.limit} at a"
        f" time and queues {found.queue}; retry in {retry_after} s"
    )
    return JSONResponse(
        {"detail": detail}, status_code=429, headers={"Retry-After": str(retry_after)}
    )


def document_budget(openapi: dict[str, Any]) -> None:
    """Add the 429 to every classed operation of the app's OpenAPI document; a KeyError for
    a class given to a path the document does not have."""
    for method, path in ROUTE_CLASSES:
        responses = openapi["paths"][path][method.lower()]["responses"]
        responses.setdefault("429", {"description": _DOCUMENTED})


_DOCUMENTED = (
    "Too many requests of this kind at once in this API worker: retry after the seconds the"
    " Retry-After header gives"
)
