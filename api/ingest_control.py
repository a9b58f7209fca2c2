"""Subscription changes sent to the ingest process over its control socket.

`tickvault api` does not hold the feed's connections: `tickvault ingest` does, and listens
for changes on `control.sock` in the data directory (ingest/channels/control.py, where the protocol
is). The answers become what the ingest's SubscriptionManager raises: a refusal of the feed's
limits is a SubscriptionLimitError (409, with the same detail), an invalid request 422, and an
ingest that is not there, does not answer in time or fails 503 with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from fastapi import HTTPException

from ingest.channels.control import (
    MAX_LINE_BYTES,
    InvalidMessage,
    Request,
    Subscribe,
    Unsubscribe,
    control_path,
    decode_answer,
    encode_request,
)
from ingest.client import SubscriptionLimitError

TIMEOUT_S = 5.0


class IngestControl:
    """The ingest on `data_dir`, as the routes change its subscriptions."""

    def __init__(self, data_dir: Path, timeout_s: float = TIMEOUT_S) -> None:
        self.path = control_path(data_dir)
        self.timeout_s = timeout_s

    async def subscribe_keys(self, keys: list[str], mode: str = "full") -> None:
        await self._ask(Subscribe(keys, mode))

    async def unsubscribe_keys(self, keys: list[str]) -> None:
        await self._ask(Unsubscribe(keys))

    async def _ask(self, request: Request) -> None:
        try:
            line = encode_request(request)
        except InvalidMessage as error:
            raise HTTPException(status_code=422, detail=str(error)) from None
        try:
            async with asyncio.timeout(self.timeout_s):
                answer_line = await self._exchange(line)
        except FileNotFoundError:
            raise _unavailable(
                f"no ingest listens for subscription changes here ({self.path} is absent):"
                " start tickvault ingest"
            ) from None
        except ConnectionRefusedError:
            raise _unavailable(
                f"no ingest listens for subscription changes on {self.path} (it has stopped)"
            ) from None
        except TimeoutError:
            raise _unavailable(
                f"the ingest did not answer within {self.timeout_s:g} s on {self.path};"
                " the change may still be made"
            ) from None
        except (OSError, ValueError) as error:  # ValueError: an answer over the line limit
            raise _unavailable(f"the ingest's control socket {self.path} failed: {error}") from None
        try:
            answer = decode_answer(answer_line)
        except InvalidMessage as error:
            raise _unavailable(f"the ingest's answer cannot be read: {error}") from None
        if answer.ok:
            return
        if answer.error == "limit":
            raise SubscriptionLimitError(answer.detail)
        if answer.error == "invalid":
            raise HTTPException(status_code=422, detail=answer.detail)
        raise _unavailable(f"the ingest could not make the change: {answer.detail}")

    async def _exchange(self, line: bytes) -> bytes:
        reader, writer = await asyncio.open_unix_connection(self.path, limit=MAX_LINE_BYTES)
        try:
            writer.write(line)
            await writer.drain()
            answer = await reader.readline()
            if not answer.endswith(b"\n"):
                raise ConnectionResetError("the ingest closed the connection without answering")
            return answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _unavailable(detail: str) -> HTTPException:
    return HTTPException(status_code=503, detail=detail)
