"""The ingest's control socket: subscription changes from the API's processes.

`tickvault api` runs beside `tickvault ingest`, and the ingest owns the feed's connections.
An API worker asks it for a change over a unix socket in the data directory
(`control.sock`, mode 0600), one JSON request per line and one JSON answer per line:

    {"op": "subscribe", "keys": ["NSE_EQ|INE009A01021"], "mode": "full"}
    {"op": "unsubscribe", "keys": ["NSE_EQ|INE009A01021"]}
    {"op": "refresh_instruments", "url": null, "max_bytes": null, "force": false}

    {"ok": true}
    {"ok": true, "report": {...}}    (ingest/jobs/instrument_refresh.py: its report)
    {"ok": false, "error": "limit" | "invalid" | "failed", "detail": "one line"}

`refresh_instruments` (from `tickvault instruments refresh`) refreshes the instrument master in
the ingest, which then subscribes the F&O stocks that joined and unsubscribes those that left;
a download that cannot be used, or that would remove too much without "force" (optional,
false when absent), answers "failed" with the reason, nothing changed.

"limit" is the feed's per-mode key limits refusing the change (SubscriptionLimitError),
"invalid" a request that is not one of the above or names an unknown mode, "failed" anything
else. The messages and their encoding are here, for both sides; the server too (the API's
client is api/ingest_control.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import psycopg

from ingest.client import SubscriptionLimitError
from store.instruments import InstrumentFileError

log = logging.getLogger(__name__)

CONTROL_SOCKET = "control.sock"
MAX_LINE_BYTES = 1 << 20  # a request or an answer, newline included
MAX_KEY_CHARS = 256
IDLE_TIMEOUT_S = 60.0  # a connection that sends nothing for this long is closed
MAX_DETAIL_CHARS = 500

ErrorKind = Literal["limit", "invalid", "failed"]
ERRORS: tuple[str, ...] = ("limit", "invalid", "failed")


def control_path(data_dir: Path) -> Path:
    """Where the ingest on `data_dir` listens for changes."""
    return Path(data_dir) / CONTROL_SOCKET


class InvalidMessage(ValueError):
    """A line that is not a message of this protocol."""


@dataclass(frozen=True)
class Subscribe:
    keys: list[str]
    mode: str


@dataclass(frozen=True)
class Unsubscribe:
    keys: list[str]


@dataclass(frozen=True)
class RefreshInstruments:
    url: str | None = None  # None: the ingest's instruments_url
    max_bytes: int | None = None
    force: bool = False  # take the file however much of the master it removes


Request = Subscribe | Unsubscribe | RefreshInstruments
# The ingest's refresh: (url, max_bytes, force) -> the report as JSON.
Refresh = Callable[[str | None, int | None, bool], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Answer:
    ok: bool
    error: ErrorKind | None = None
    detail: str | None = None
    report: dict[str, Any] | None = None


OK = Answer(ok=True)


def _line(message: dict[str, Any]) -> bytes:
    line = json.dumps(message, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
    if len(line) > MAX_LINE_BYTES:
        raise InvalidMessage(f"the message is over {MAX_LINE_BYTES} bytes")
    return line


def _object(line: bytes) -> dict[str, Any]:
    if len(line) > MAX_LINE_BYTES:
        raise InvalidMessage(f"the line is over {MAX_LINE_BYTES} bytes")
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        raise InvalidMessage("the line is not JSON text") from None
    if not isinstance(message, dict):
        raise InvalidMessage("the message is not a JSON object")
    return message


def _fields(
    message: dict[str, Any], required: set[str], optional: frozenset[str] = frozenset()
) -> None:
    missing = required - message.keys()
    extra = message.keys() - required - optional
    if missing:
        raise InvalidMessage(f"missing field(s): {', '.join(sorted(missing))}")
    if extra:
        raise InvalidMessage(f"unknown field(s): {', '.join(sorted(extra)[:5])}")


def _keys(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(key, str) for key in value):
        raise InvalidMessage("keys must be a list of strings")
    if any(not key or len(key) > MAX_KEY_CHARS for key in value):
        raise InvalidMessage(f"every key must have 1 to {MAX_KEY_CHARS} characters")
    return value


def encode_request(request: Request) -> bytes:
    if isinstance(request, RefreshInstruments):
        message = {
            "op": "refresh_instruments",
            "url": request.url,
            "max_bytes": request.max_bytes,
            "force": request.force,
        }
        return _line(message)
    if isinstance(request, Subscribe):
        return _line({"op": "subscribe", "keys": request.keys, "mode": request.mode})
    return _line({"op": "unsubscribe", "keys": request.keys})


def decode_request(line: bytes) -> Request:
    """The request on `line`, or InvalidMessage saying what is wrong with it."""
    message = _object(line)
    op = message.get("op")
    if op == "subscribe":
        _fields(message, {"op", "keys", "mode"})
        if not isinstance(message["mode"], str):
            raise InvalidMessage("mode must be a string")
        return Subscribe(_keys(message["keys"]), message["mode"])
    if op == "unsubscribe":
        _fields(message, {"op", "keys"})
        return Unsubscribe(_keys(message["keys"]))
    if op == "refresh_instruments":
        _fields(message, {"op"}, frozenset({"url", "max_bytes", "force"}))
        url, max_bytes = message.get("url"), message.get("max_bytes")
        force = message.get("force", False)
        if not isinstance(force, bool):
            raise InvalidMessage("force must be true or false")
        if url is not None and not isinstance(url, str):
            raise InvalidMessage("url must be a string or null")
        if max_bytes is not None and (type(max_bytes) is not int or max_bytes < 1):
            raise InvalidMessage("max_bytes must be a whole number above 0 or null")
        return RefreshInstruments(url, max_bytes, force)
    raise InvalidMessage("op must be 'subscribe', 'unsubscribe' or 'refresh_instruments'")


def encode_answer(answer: Answer) -> bytes:
    if answer.ok:
        report = {} if answer.report is None else {"report": answer.report}
        return _line({"ok": True, **report})
    return _line({"ok": False, "error": answer.error, "detail": answer.detail or ""})


def decode_answer(line: bytes) -> Answer:
    message = _object(line)
    ok = message.get("ok")
    if ok is True:
        _fields(message, {"ok"}, frozenset({"report"}))
        report = message.get("report")
        if report is not None and not isinstance(report, dict):
            raise InvalidMessage("report must be an object")
        return Answer(ok=True, report=report)
    if ok is not False:
        raise InvalidMessage("ok must be true or false")
    _fields(message, {"ok", "error"}, {"detail"})
    error, detail = message["error"], message.get("detail", "")
    if error not in ERRORS or not isinstance(detail, str):
        raise InvalidMessage("error must be 'limit', 'invalid' or 'failed', detail a string")
    return Answer(ok=False, error=error, detail=detail)


def refusal(error: ErrorKind, detail: object) -> Answer:
    text = " ".join(str(detail).split())  # one line
    if len(text) > MAX_DETAIL_CHARS:
        text = text[: MAX_DETAIL_CHARS - 3] + "..."
    return Answer(ok=False, error=error, detail=text)


# --- the server (the ingest) ---------------------------------------------------------------


class Subscriptions(Protocol):
    """What the server changes: the ingest's SubscriptionManager."""

    def subscribe_keys(self, keys: list[str], mode: str = ...) -> Awaitable[None]: ...

    def unsubscribe_keys(self, keys: list[str]) -> Awaitable[None]: ...


async def perform(
    subscriptions: Subscriptions, request: Request, refresh: Refresh | None = None
) -> Answer:
    """Run one request; every failure becomes an answer (never a traceback)."""
    if isinstance(request, RefreshInstruments):
        return await _refresh(refresh, request)
    try:
        if isinstance(request, Subscribe):
            await subscriptions.subscribe_keys(request.keys, mode=request.mode)
        else:
            await subscriptions.unsubscribe_keys(request.keys)
    except SubscriptionLimitError as error:  # a ValueError too: first
        return refusal("limit", error)
    except ValueError as error:  # an unknown mode
        return refusal("invalid", error)
    except Exception as error:
        log.exception("a subscription change from the control socket failed")
        return refusal("failed", f"{type(error).__name__}: {error}")
    return OK


async def _refresh(refresh: Refresh | None, request: RefreshInstruments) -> Answer:
    if refresh is None:
        return refusal("invalid", "this ingest does not refresh instruments")
    try:
        report = await refresh(request.url, request.max_bytes, request.force)
        return Answer(ok=True, report=report)
    except (InstrumentFileError, psycopg.Error) as error:  # a bad download, the database
        return refusal("failed", error)
    except Exception as error:
        log.exception("an instrument refresh from the control socket failed")
        return refusal("failed", f"{type(error).__name__}: {error}")


class ControlServer:
    """The ingest's end: listens on `path` while started, for `subscriptions` (and `refresh`,
    the instrument master's, when given)."""

    def __init__(
        self, path: Path, subscriptions: Subscriptions, refresh: Refresh | None = None
    ) -> None:
        self.path = path
        self._subscriptions = subscriptions
        self._refresh = refresh
        self._server: asyncio.Server | None = None
        self._inode: int | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Listen on `path` (mode 0600). A socket left by an ingest that is gone is replaced;
        one another live ingest listens on is left alone (OSError)."""
        if listening(self.path):
            raise OSError(f"another process listens on {self.path}")
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            sock.bind(str(temporary))
            os.chmod(temporary, 0o600)  # before the name clients use exists
            os.replace(temporary, self.path)
            self._inode = self.path.stat().st_ino
            self._server = await asyncio.start_unix_server(
                self._serve, sock=sock, limit=MAX_LINE_BYTES
            )
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                temporary.unlink()
            self._remove()
            raise

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        self._remove()

    def _remove(self) -> None:
        """Remove the socket file if it is still ours (not a later ingest's)."""
        inode, self._inode = self._inode, None
        if inode is None:
            return
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == inode:
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT_S)
                except ValueError:  # over the limit: the rest of the line cannot be skipped
                    writer.write(encode_answer(refusal("invalid", "the line is too long")))
                    await writer.drain()
                    return
                if not line:
                    return
                try:
                    answer = await perform(self._subscriptions, decode_request(line), self._refresh)
                except InvalidMessage as error:
                    answer = refusal("invalid", error)
                writer.write(encode_answer(answer))
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def ask(path: Path, request: Request, timeout_s: float) -> Answer:
    """One request to the ingest listening on `path`, and its answer, blocking (the CLI's
    client; the API's is api/ingest_control.py). OSError when no ingest listens there or it closes
    without answering; TimeoutError after `timeout_s`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(encode_request(request))
        with sock.makefile("rb") as answers:
            line = answers.readline(MAX_LINE_BYTES + 1)
    if not line.endswith(b"\n"):
        raise ConnectionResetError(f"the ingest on {path} closed the connection without answering")
    return decode_answer(line)


def listening(path: Path) -> bool:
    """Whether a process accepts connections on the socket at `path`."""
    if not path.exists():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True
