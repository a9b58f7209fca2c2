"""The push stream: ticks and 1-minute bars as they are published, over a WebSocket
(`/api/v1/stream`) or Server-Sent Events (`/api/v1/stream/sse`). The protocol and its limits
are in docs/api.md ("The stream"); the fan-out behind both is api/stream_hub.py.

Every bad input is answered here, in words, without a traceback: an error message for what
the session survives, a close code for what it does not. One client's mistake or slowness
never reaches the others: each has its own queue, and the fan-out only ever put_nowait()s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, WebSocket
from fastapi.responses import StreamingResponse
from starlette.websockets import WebSocketDisconnect

from api.auth import HEADER
from api.context import ApiContext, Context
from api.limits import MAX_WS_MESSAGE_BYTES
from api.params import MAX_SYMBOL_CHARS, checked_symbol_list
from api.stream_hub import MAX_TICKS_MS, MIN_TICKS_MS, StreamClient, StreamHub
from store.instruments import resolve_symbols

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/stream", tags=["stream"])

UNIVERSE = "universe"
POLICY, TOO_BIG, UNSUPPORTED, INTERNAL, TRY_LATER, BEHIND = 1008, 1009, 1003, 1011, 1013, 4000


class Refused(Exception):
    """Input the session survives: sent back as an error message."""


class Closing(Exception):
    """Input that ends the session with `code` and the reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# --- WebSocket -----------------------------------------------------------------------------


@router.websocket("")
async def stream(websocket: WebSocket) -> None:
    """Subscribe with {"action": "subscribe", "symbols": [...] | "universe", "ticks_ms": 250,
    "bars": true}; unsubscribe with {"action": "unsubscribe", "symbols": [...]}."""
    context: ApiContext = websocket.app.state.context
    hub: StreamHub = websocket.app.state.stream_hub
    await websocket.accept()
    given = websocket.headers.get(HEADER) or websocket.query_params.get("api_key")
    if not _key_ok(context, given):
        await _close(websocket, POLICY, f"missing or wrong API key ({HEADER} or api_key)")
        return
    client = hub.register()
    if client is None:
        await _close(websocket, TRY_LATER, f"too many clients on this worker ({hub.max_clients})")
        return
    tasks = [
        asyncio.create_task(_send(websocket, client)),
        asyncio.create_task(_receive(websocket, client, hub, context)),
        asyncio.create_task(client.behind.wait()),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        ending = next(iter(done))
        if ending is tasks[2]:
            await _close(websocket, BEHIND, hub.behind_reason)
        elif ending is tasks[1] and ending.exception() is not None:
            log.error("stream session failed", exc_info=ending.exception())
            await _close(websocket, INTERNAL, "internal error")
        elif ending is tasks[1] and ending.result() is not None:
            await _close(websocket, *ending.result())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        hub.unregister(client)


async def _send(websocket: WebSocket, client: StreamClient) -> None:
    while True:
        _, text = await client.next_message()
        await websocket.send_text(text)


async def _receive(
    websocket: WebSocket, client: StreamClient, hub: StreamHub, context: ApiContext
) -> tuple[int, str] | None:
    """Read the client's messages until it leaves (None) or must be closed (code, reason)."""
    while True:
        try:
            message = await websocket.receive()
        except WebSocketDisconnect:
            return None
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is None:
            return UNSUPPORTED, "binary frames are not accepted: send JSON text"
        if len(text) > MAX_WS_MESSAGE_BYTES:  # where the server's own limit is larger
            return TOO_BIG, f"a message is at most {MAX_WS_MESSAGE_BYTES} bytes"
        try:
            await _act(text, client, hub, context)
        except Refused as error:
            client.offer(("error", json.dumps({"type": "error", "message": str(error)})))
        except Closing as error:
            return error.code, error.reason


async def _act(text: str, client: StreamClient, hub: StreamHub, context: ApiContext) -> None:
    try:
        request = json.loads(text)
    except ValueError as error:
        raise Refused(f"malformed JSON: {error}") from None
    if not isinstance(request, dict):
        raise Refused("a message is a JSON object with an action")
    action = request.get("action")
    if action not in ("subscribe", "unsubscribe"):
        raise Refused(f'"action" must be "subscribe" or "unsubscribe", got {action!r}')
    symbols = request.get("symbols")
    if action == "unsubscribe":
        names = _names(symbols, universe=False)
        keys = await _resolve(context, names, client, hub, adding=False)
        hub.unsubscribe(client, keys)
        return
    ticks_ms = request.get("ticks_ms", 250)
    if type(ticks_ms) is not int or not MIN_TICKS_MS <= ticks_ms <= MAX_TICKS_MS:
        raise Refused(f'"ticks_ms" must be a whole number {MIN_TICKS_MS}..{MAX_TICKS_MS}')
    bars, batch = request.get("bars", True), request.get("batch", False)
    if not isinstance(bars, bool) or not isinstance(batch, bool):
        raise Refused('"bars" and "batch" must be true or false')
    if symbols == UNIVERSE:
        await hub.subscribe(client, None, ticks_ms, bars, batch)
        return
    names = _names(symbols, universe=True)
    keys = await _resolve(context, names, client, hub, adding=True)
    await hub.subscribe(client, keys, ticks_ms, bars, batch)


def _names(symbols: Any, *, universe: bool) -> list[str]:
    if not isinstance(symbols, list) or not all(isinstance(name, str) for name in symbols):
        also = ' or "universe"' if universe else ""
        raise Refused(f'"symbols" must be a list of symbol names{also}')
    names = list(dict.fromkeys(name.strip() for name in symbols if name.strip()))
    if not names:
        raise Refused('"symbols" names no symbol')
    bad = [name for name in names if len(name) > MAX_SYMBOL_CHARS or "\x00" in name]
    if bad:
        raise Refused(f"a symbol is longer than {MAX_SYMBOL_CHARS} characters or contains NUL")
    return names


async def _resolve(
    context: ApiContext, names: list[str], client: StreamClient, hub: StreamHub, *, adding: bool
) -> list[str]:
    """The instrument keys of `names`; Closing past the symbol limit, Refused for names the
    instrument master does not know (nothing is subscribed then)."""
    limit = context.settings.stream_max_symbols
    if adding and len(names) > limit:  # before any lookup: the limit bounds the query too
        raise Closing(POLICY, f"too many symbols: at most {limit} per client, got {len(names)}")
    try:
        found = await asyncio.to_thread(_lookup, context, names)
    except Exception as error:  # the database is down: the session goes on
        raise Refused(f"symbols cannot be looked up now: {type(error).__name__}") from None
    unknown = [name for name in names if name not in found]
    if unknown:
        raise Refused(f"unknown symbols: {', '.join(unknown)}")
    keys = list(dict.fromkeys(found[name] for name in names))
    if adding and len(client.keys | set(keys)) > limit:
        total = len(client.keys | set(keys))
        raise Closing(POLICY, f"too many symbols: at most {limit} per client, got {total}")
    return keys


def _lookup(context: ApiContext, names: list[str]) -> dict[str, str]:
    with context.pool.connection(timeout=5) as conn:
        return resolve_symbols(conn, names)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    """Close with `code`; a client that reads nothing cannot hold the handler past 2 s."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(websocket.close(code, reason[:120]), 2)


def _key_ok(context: ApiContext, given: str | None) -> bool:
    expected = context.settings.api_key
    if not expected:
        return True  # no key configured: the stream is read-only, like the other reads
    return given is not None and secrets.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode()
    )


# --- Server-Sent Events --------------------------------------------------------------------


# Out of the OpenAPI document: an endless response is no operation a schema-driven client
# (or the fuzz test) can call and check; docs/api.md describes it with the WebSocket.
@router.get("/sse", include_in_schema=False)
async def stream_sse(
    request: Request,
    context: Context,
    symbols: Annotated[str, Query(description='comma-separated, or "universe"')],
    ticks_ms: Annotated[int, Query(ge=MIN_TICKS_MS, le=MAX_TICKS_MS)] = 250,
    bars: bool = True,
) -> StreamingResponse:
    """The stream's messages as `event: <type>` + `data: <json>`, for the same symbols."""
    # The query parameter too: a browser's EventSource cannot set headers either.
    given = request.headers.get(HEADER) or request.query_params.get("api_key")
    if not _key_ok(context, given):
        raise HTTPException(401, f"missing or wrong API key ({HEADER} or api_key)")
    hub: StreamHub = request.app.state.stream_hub
    keys: list[str] | None = None
    if symbols.strip() != UNIVERSE:
        names, problem = checked_symbol_list(symbols)
        if problem:
            raise HTTPException(400, problem)
        limit = context.settings.stream_max_symbols
        if len(names) > limit:
            raise HTTPException(400, f"too many symbols: at most {limit}, got {len(names)}")
        try:
            found = await asyncio.to_thread(_lookup, context, names)
        except Exception as error:
            raise HTTPException(503, f"symbols cannot be looked up now: {error}") from None
        unknown = [name for name in names if name not in found]
        if unknown:
            raise HTTPException(400, f"unknown symbols: {', '.join(unknown)}")
        keys = list(dict.fromkeys(found[name] for name in names))
    if len(hub.clients) >= hub.max_clients:
        raise HTTPException(
            503, f"too many clients on this worker ({hub.max_clients})", {"Retry-After": "5"}
        )
    return StreamingResponse(
        _events(hub, keys, ticks_ms, bars),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    hub: StreamHub, keys: list[str] | None, ticks_ms: int, bars: bool
) -> AsyncIterator[str]:
    """The client is registered here, in the body: a response that never starts registers
    nothing, and whatever ends one that did (the client gone, the server stopping)
    unregisters it."""
    client = hub.register()
    if client is None:  # others took the last places since the check
        error = {"type": "error", "message": "too many clients on this worker, try again later"}
        yield f"event: error\ndata: {json.dumps(error)}\n\n"
        return
    behind = asyncio.ensure_future(client.behind.wait())
    try:
        await hub.subscribe(client, keys, ticks_ms, bars)
        while True:
            get = asyncio.ensure_future(client.next_message())
            await asyncio.wait([get, behind], return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                error = {"type": "error", "message": hub.behind_reason}
                yield f"event: error\ndata: {json.dumps(error)}\n\n"
                return
            kind, text = get.result()
            yield f"event: {kind}\ndata: {text}\n\n"
    finally:
        behind.cancel()
        hub.unregister(client)
