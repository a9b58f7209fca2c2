"""The feed simulator's rules of entry and of conversation, apart from the server around them.

Entry: the REST authorize call, the single-use codes in the URLs it hands out, and the
redirect that the bare feed endpoint answers with. Conversation: the JSON requests a client
sends and the per-connection subscription limits.
"""

from __future__ import annotations

import email.utils
import hmac
import http
import json
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from core.upstox_wire import MODES, REQUEST_METHODS

INVALID_TOKEN = {"errorCode": "UDAPI100050", "message": "Invalid token used to access API"}
CODE_LIFETIME = 300.0  # seconds an authorized URL stays usable, if nobody uses it


def json_response(status: int, payload: object) -> Response:
    body = json.dumps(payload).encode()
    return _response(status, body, [("Content-Type", "application/json")])


def binary_response(body: bytes, content_type: str) -> Response:
    return _response(http.HTTPStatus.OK, body, [("Content-Type", content_type)])


def redirect_response(location: str) -> Response:
    return _response(http.HTTPStatus.FOUND, b"", [("Location", location)])


def error_response(status: int, error: Mapping[str, str]) -> Response:
    return json_response(status, {"status": "error", "errors": [dict(error)]})


def _response(status: int, body: bytes, headers: list[tuple[str, str]]) -> Response:
    phrase = http.HTTPStatus(status).phrase
    headers = [
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Length", str(len(body))),
        *headers,
    ]
    return Response(status, phrase, Headers(headers), body)


class Gate:
    """Who may open a feed: the one accepted access token (None: any non-empty token) and
    the single-use codes of the URLs handed out. `rejecting` turns every token away."""

    def __init__(self, token: str | None) -> None:
        self._token = token
        self._codes: dict[str, float] = {}  # code -> expiry, time.monotonic()
        self.rejecting = False

    def token_accepted(self, request: Request) -> bool:
        values = request.headers.get_all("Authorization")
        if self.rejecting or len(values) != 1:
            return False
        scheme, _, token = values[0].partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        return self._token is None or hmac.compare_digest(token.encode(), self._token.encode())

    def accept(self, token: str | None) -> None:
        """From now on `token` is the one token accepted (None: any); the old one is refused."""
        self._token = token

    def authorized_url(self, feed_url: str) -> str:
        now = time.monotonic()
        self._codes = {code: expiry for code, expiry in self._codes.items() if expiry > now}
        code = secrets.token_urlsafe(12)
        self._codes[code] = now + CODE_LIFETIME
        return f"{feed_url}?requestId={uuid.uuid4()}&code={code}"

    def use_code(self, code: str) -> bool:
        """True once for a code this gate handed out, while it is fresh."""
        expiry = self._codes.pop(code, None)
        return expiry is not None and expiry > time.monotonic()


class RequestError(Exception):
    """A client request the server refuses, answered with a `failed` JSON frame."""

    def __init__(self, message: str, method: object = None) -> None:
        super().__init__(message)
        self.method = method if isinstance(method, str) else None

    def frame(self) -> str:
        return json.dumps({"status": "failed", "error": str(self), "method": self.method})


@dataclass(frozen=True)
class ClientRequest:
    method: str
    keys: list[str]  # without repeats, in the order given
    mode: str | None  # None for unsub


def parse_request(message: str | bytes) -> ClientRequest:
    """`{"guid", "method", "data": {"mode", "instrumentKeys"}}`, as JSON in a binary frame.
    `sub` without a mode means ltpc; `change_mode` needs one."""
    if isinstance(message, str):
        raise RequestError("requests must be JSON in a binary frame")
    try:
        request = json.loads(message)
    except ValueError:
        raise RequestError("request is not valid JSON") from None
    if not isinstance(request, dict):
        raise RequestError("request must be a JSON object")
    method = request.get("method")
    if method not in REQUEST_METHODS:
        raise RequestError(f"unknown method {method!r}", method)
    data = request.get("data")
    if not isinstance(data, dict):
        data = {}
    keys = data.get("instrumentKeys")
    if not keys or not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise RequestError("data.instrumentKeys must be a non-empty list of strings", method)
    if method == "unsub":
        return ClientRequest(method, list(dict.fromkeys(keys)), None)
    mode = data.get("mode") or ("ltpc" if method == "sub" else None)
    if mode not in MODES:
        raise RequestError(f"mode must be one of {', '.join(MODES)}, not {mode!r}", method)
    return ClientRequest(method, list(dict.fromkeys(keys)), mode)


def check_limits(
    modes: Mapping[str, str], limits: Mapping[str, tuple[int, int]], method: str
) -> None:
    """Refuse a connection's subscriptions (key -> mode) beyond the per-mode limits:
    (keys when the mode is the only one, keys when modes are combined)."""
    counts = Counter(modes.values())
    combined = len(counts) > 1
    for mode, count in counts.items():
        single, together = limits[mode]
        limit = together if combined else single
        if count > limit:
            scope = " when modes are combined" if combined else ""
            raise RequestError(
                f"{mode} allows {limit} instrument keys per connection{scope};"
                f" this request would make it {count}: not subscribed",
                method,
            )
