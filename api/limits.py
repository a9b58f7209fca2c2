"""What one request may make the server hold: a bounded request head and a bounded body.

Without a bound, a single client can make the process buffer whatever it sends (105 MB once
took 2.7 s of the event loop and 860 MB of memory). The body is bounded here, as the bytes
arrive; the head is bounded by the HTTP server, which has parsed it before the app sees it.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.params import MAX_SYMBOL_LIST_CHARS

# The largest body the API takes: 1,000 symbols (SubscribeIn's limit) of 100 characters,
# each character JSON-escaped as \uXXXX, would be about 600 kB; real symbols are under 40
# plain characters, so 1,000 of them fit in 50 kB, and 256 kB leaves room for any real use.
MAX_BODY_BYTES = 256 * 1024
# The largest request head: request line and headers (and a chunked body's size lines and
# trailers, which the server also holds besides the body). The longest legitimate head is a
# latest-ticks query of MAX_SYMBOL_LIST_CHARS characters, each percent-encoded at worst (4
# bytes of UTF-8, 3 characters each: 12), beside the rest of the head (16 KiB).
MAX_HEAD_BYTES = MAX_SYMBOL_LIST_CHARS * 12 + 16 * 1024
# The largest WebSocket message a client may send (the stream's subscribe of its symbol limit
# is a few kB): uvicorn closes a larger one with 1009 before buffering it.
MAX_WS_MESSAGE_BYTES = 64 * 1024
# What `uvicorn.run` needs for these bounds: uvicorn's httptools protocol buffers a head of any
# size, so the API serves with its own subclass that counts the head (api/http_protocol.py;
# by import path, which the worker processes resolve for themselves).
UVICORN_LIMITS: dict[str, Any] = {
    "http": "api.http_protocol:BoundedHttpToolsProtocol",
    "ws_max_size": MAX_WS_MESSAGE_BYTES,
}

_TOO_LARGE = f"the request body is larger than {MAX_BODY_BYTES} bytes"
# The client may still be sending the rest: closing stops it instead of reading it for nothing.
CLOSE = {"Connection": "close"}


class BodyLimit:
    """Answers 413 to a body over MAX_BODY_BYTES, counted as it streams in.

    A declared Content-Length over the limit is refused before any of the body is read; a
    chunked body (no Content-Length) or one longer than declared is cut off at the byte that
    crosses the limit, so the server never holds more than the limit plus one read.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            response = JSONResponse({"detail": _TOO_LARGE}, status_code=413, headers=CLOSE)
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                # FastAPI lets an HTTPException from reading the body through to its handler.
                raise HTTPException(status_code=413, detail=_TOO_LARGE, headers=CLOSE)
            return message

        await self.app(scope, counted, send)
