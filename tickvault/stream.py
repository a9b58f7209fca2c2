"""Ticks and 1-minute bars as they happen, from a notebook or a strategy:

    async for message in stream(["INFY", "TCS"]):
        if message["type"] == "tick": ...

The API's push stream (docs/api.md, "The stream") over one WebSocket. Each message is the
protocol's JSON as a dict ("snapshot", "tick", "bar", "heartbeat", "error"). The client asks
for batches (one frame per `ticks_ms` instead of one per symbol: the server's frames are what
cost) and yields their ticks and bars one by one, so a caller sees the same messages. A dropped
connection, a restarted API, a worker that is full (1013) or a client that fell behind (4000)
is followed by a new connection after a growing pause with jitter (1 s doubling to 30 s, back
to 1 s once messages flow), and a new snapshot; a refusal that a retry cannot mend (a bad
key, too many symbols) raises StreamRefused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tickvault.checkout import checkout_settings

log = logging.getLogger(__name__)

PATH = "/api/v1/stream"
FIRST_PAUSE_S, LONGEST_PAUSE_S = 1.0, 30.0
# Closes that the same request would get again: retrying them would only hammer the server.
FINAL_CLOSES = {1003: "binary frame", 1008: "policy", 1009: "message too big"}


class StreamRefused(RuntimeError):
    """The server closed the stream for a reason a retry cannot mend (its words say which)."""


async def stream(
    symbols: Sequence[str] | str,
    ticks_ms: int = 250,
    bars: bool = True,
    url: str | None = None,
    api_key: str | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Yield the stream's messages for `symbols` ("universe" for every instrument the ingest
    carries), reconnecting politely, until the caller stops iterating.

    `url`: the API's base (`http://host:8000`) or the stream's `ws://` address; by default the
    checkout's TICKVAULT_API_HOST and _PORT. `api_key`: by default TICKVAULT_API_KEY.
    """
    if url is None or api_key is None:
        settings = checkout_settings()
        url = url or f"http://{settings.api_host}:{settings.api_port}"
        api_key = api_key if api_key is not None else (settings.api_key or None)
    address = stream_url(url)
    request = {
        "action": "subscribe",
        "symbols": symbols if isinstance(symbols, str) else list(symbols),
        "ticks_ms": ticks_ms,
        "bars": bars,
        "batch": True,
    }
    headers = {"X-API-Key": api_key} if api_key else {}
    pause = FIRST_PAUSE_S
    while True:
        try:
            async with websockets.connect(address, additional_headers=headers) as socket:
                await socket.send(json.dumps(request))
                async for text in socket:
                    pause = FIRST_PAUSE_S
                    message = json.loads(text)
                    if message["type"] == "changes":
                        for change in (*message["ticks"], *message["bars"]):
                            yield change
                    else:
                        yield message
            why = "the server ended the stream"
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
            if code in FINAL_CLOSES:
                raise StreamRefused(
                    f"{code} ({FINAL_CLOSES[code]}): {closed.rcvd.reason}"
                ) from None
            why = f"closed ({code}: {closed.rcvd.reason if closed.rcvd else 'no reason'})"
        except (TimeoutError, OSError, InvalidHandshake) as error:
            why = f"cannot connect: {error}"
        wait = pause * random.uniform(0.5, 1.0)
        log.warning("stream %s: %s; connecting again in %.1f s", address, why, wait)
        await asyncio.sleep(wait)
        pause = min(pause * 2, LONGEST_PAUSE_S)


def stream_url(url: str) -> str:
    """The stream's ws:// (or wss://) address from the API's base URL or the address itself."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(f"not an http(s) or ws(s) URL: {url!r}")
    path = parts.path if parts.path.endswith(PATH) else parts.path.rstrip("/") + PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))
