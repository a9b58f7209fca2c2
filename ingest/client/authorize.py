"""Getting onto the feed: the authorized URL, the socket's options and the access token.

Upstox's feed URL is single-use, so every connect, the reconnects included, authorizes again.
The token travels in headers only, over TLS; plain text is allowed for loopback alone, which
is where the simulator runs. A 401/403 means the token is bad, so it is reported apart
(`TokenRejected`): retrying it would only hammer the server until someone supplies a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from core.config import Secret
from core.upstox_wire import AUTHORIZE_PATH, FEED_PATH
from ingest.upstox.redact import RedactBearer

ENTRIES = ("authorize", "redirect")
REJECTED_STATUSES = (401, 403)
_MAX_FRAME_BYTES = 2**24  # a full-mode snapshot of thousands of keys exceeds websockets' 1 MiB
_HTTP_TIMEOUT_S = 10.0

# websockets logs the handshake headers at DEBUG, the Authorization one included.
_ws_log = logging.getLogger("ingest.client.websocket")
_ws_log.addFilter(RedactBearer())


class TokenRejected(Exception):
    """Upstox answered 401/403: the token is bad or expired, and only a new one helps."""


class AuthorizeFailed(Exception):
    """The authorize call failed for a reason a later retry may not share (5xx, network)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirect with the Authorization header, even to another host."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def is_loopback(host: str | None) -> bool:
    """Whether `host` (a name or an address) is this machine: the one place plain text is ok."""
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_tls(url: str, secure: str, plain: str, what: str) -> None:
    """Plain text is for the simulator on this machine only; everything else is TLS."""
    parts = urlsplit(url)
    if parts.scheme == secure or (parts.scheme == plain and is_loopback(parts.hostname)):
        return
    raise ValueError(
        f"{what} must be a {secure}:// URL ({plain}:// is accepted only for loopback hosts), "
        f"got {parts.scheme}://{parts.hostname}"
    )


class Authorizer:
    """The way onto the feed at `api_base`, by one of the two documented `entry` points.

    "authorize": a REST call returns a single-use wss:// URL. "redirect": the feed endpoint
    itself, called with the token, redirects to such a URL (websockets follows it).
    """

    def __init__(self, api_base: str, entry: str = "authorize") -> None:
        base = api_base.rstrip("/")
        require_tls(base, "https", "http", "UPSTOX_API_BASE")
        if entry not in ENTRIES:
            raise ValueError(f"entry must be one of {', '.join(ENTRIES)}, not {entry!r}")
        self._entry = entry
        self._authorize_url = base + AUTHORIZE_PATH
        self._feed_url = "ws" + base.removeprefix("http") + FEED_PATH  # https -> wss
        self._ssl = ssl.create_default_context()
        handlers: list[urllib.request.BaseHandler] = [
            urllib.request.HTTPSHandler(context=self._ssl),
            _NoRedirect(),
        ]
        if is_loopback(urlsplit(base).hostname):  # an environment proxy has no business there
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)

    async def feed_uri(self, token: Secret) -> str:
        """The URL to open now; the authorize call runs in a thread (urllib blocks)."""
        if self._entry == "authorize":
            return await asyncio.to_thread(self._authorize, token)
        return self._feed_url

    def connect_options(self, uri: str, token: Secret) -> dict[str, Any]:
        """Keyword arguments of websockets' `connect` for `uri`."""
        parts = urlsplit(uri)
        options: dict[str, Any] = {
            "additional_headers": {"Authorization": f"Bearer {token}"},
            "max_size": _MAX_FRAME_BYTES,
            "close_timeout": 2,
            "logger": _ws_log,
        }
        if parts.scheme == "wss":
            options["ssl"] = self._ssl
        if is_loopback(parts.hostname):
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
            if exc.code in REJECTED_STATUSES:
                raise TokenRejected(f"authorize answered HTTP {exc.code}{detail}") from None
            raise AuthorizeFailed(f"authorize answered HTTP {exc.code}{detail}") from None
        except urllib.error.URLError as exc:
            raise AuthorizeFailed(f"authorize failed: {exc.reason}") from None
        try:
            data = json.loads(body).get("data") or {}
            uri = data.get("authorized_redirect_uri") or data.get("authorizedRedirectUri")
        except (ValueError, AttributeError):
            uri = None
        if not isinstance(uri, str) or not uri:
            raise AuthorizeFailed("authorize answer carries no authorized_redirect_uri")
        try:
            require_tls(uri, "wss", "ws", "the authorized feed URL")
        except ValueError as exc:
            raise AuthorizeFailed(str(exc)) from None
        return uri


class Token:
    """The access token in use, and the news that a new one arrived.

    A rejected token is left alone until `update()` or a timeout, so that a wrong token costs
    one authorize call a minute rather than one per backoff step. `generation` tells a
    connection whether the token it was rejected with is still the current one.
    """

    def __init__(self, token: str) -> None:
        self.current = Secret(token)
        self.generation = 0
        self.state = "unchecked"  # then valid or rejected: what the feed made of it
        self._updated = asyncio.Event()

    def update(self, token: str) -> None:
        """Use `token` from the next authorize on; wakes every connection waiting for one."""
        if not token:
            raise ValueError("the access token is empty")
        self.current = Secret(token)
        self.generation += 1
        self.state = "unchecked"
        updated, self._updated = self._updated, asyncio.Event()
        updated.set()

    def accepted(self, generation: int) -> None:
        """A feed opened with the token of `generation`."""
        if generation == self.generation:
            self.state = "valid"

    def rejected(self, generation: int) -> bool:
        """The token of `generation` was refused; True the first time only, for one log line
        per token however many connections and retries hear it."""
        if generation != self.generation or self.state == "rejected":
            return False
        self.state = "rejected"
        return True

    async def wait_for_new(self, generation: int, at_most_s: float) -> None:
        """Return once the token is newer than `generation`, or after `at_most_s` seconds."""
        if generation != self.generation:
            return  # a new token arrived while the rejected one was in flight
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._updated.wait(), at_most_s)

    def scrub(self, text: str) -> str:
        """`text` with the current token masked, for anything that reaches a log or status."""
        return text.replace(self.current, "********") if self.current else text


def _error_detail(body: bytes) -> str:
    """The errorCode and message of an Upstox REST error body, if it has them."""
    try:
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return f" ({first.get('errorCode')}: {first.get('message')})"
    except (ValueError, AttributeError, IndexError, KeyError, TypeError):
        return ""
