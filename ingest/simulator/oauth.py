"""Upstox's OAuth login, simulated: the authorization dialog and the code-for-token exchange.

The dialog (`GET /v2/login/authorization/dialog?response_type=code&client_id=..&redirect_uri=..`)
logs the user straight in and redirects to `redirect_uri?code=..` (and `&state=..` when given);
the code, good once for five minutes, is exchanged by a form POST to
`/v2/login/authorization/token` (code, client_id, client_secret, redirect_uri, grant_type) for a
new access token, which from then on is the one token the feed accepts: the old one is refused,
as when Upstox issues a new daily token.

It listens on a port of its own (`FeedSimulator.login_url`): the token exchange carries a
request body, and the feed's websockets server refuses every request that has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

import h11

from core.upstox_wire import LOGIN_DIALOG_PATH, LOGIN_TOKEN_PATH
from ingest.simulator.protocol import Gate

CODE_LIFETIME_S = 300.0
_MAX_BODY_BYTES = 16 * 1024
_READ_TIMEOUT_S = 10.0

_Answer = tuple[int, list[tuple[str, str]], bytes]


class _BadRequest(Exception):
    """A request the login refuses: HTTP status and a message for the error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class _Grant:
    """What a code was issued for: the exchange must repeat it."""

    client_id: str
    redirect_uri: str
    expires: float  # time.monotonic()


class LoginServer:
    """The dialog and the exchange, on loopback. `client_secret` is the one secret accepted
    (None: any non-empty one); `issued` counts the tokens handed out."""

    def __init__(self, gate: Gate, client_secret: str | None = None) -> None:
        self._gate = gate
        self._client_secret = client_secret
        self._grants: dict[str, _Grant] = {}
        self._server: asyncio.Server | None = None
        self._host = "127.0.0.1"
        self.issued = 0

    async def start(self, host: str) -> None:
        self._host = host
        self._server = await asyncio.start_server(self._serve, host, 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @property
    def url(self) -> str:
        """The base the login paths hang off, standing in for https://api.upstox.com."""
        if self._server is None:
            raise RuntimeError("the login server is not running")
        port = self._server.sockets[0].getsockname()[1]
        return f"http://{self._host}:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER)
        try:
            request, body = await asyncio.wait_for(
                _read_request(connection, reader), _READ_TIMEOUT_S
            )
            status, headers, payload = self._answer(request, body)
        except _BadRequest as error:
            status, headers, payload = _error(error.status, str(error))
        except (h11.RemoteProtocolError, TimeoutError, ConnectionError):
            status, headers, payload = _error(400, "not a valid HTTP request")
        try:
            headers = [*headers, ("Content-Length", str(len(payload))), ("Connection", "close")]
            writer.write(connection.send(h11.Response(status_code=status, headers=headers)))
            writer.write(connection.send(h11.Data(data=payload)))
            writer.write(connection.send(h11.EndOfMessage()))
            await writer.drain()
        except (h11.LocalProtocolError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, request: h11.Request, body: bytes) -> _Answer:
        url = urlsplit(request.target.decode("ascii", errors="replace"))
        if url.path == LOGIN_DIALOG_PATH and request.method == b"GET":
            return self._dialog(_single(parse_qs(url.query)))
        if url.path == LOGIN_TOKEN_PATH and request.method == b"POST":
            content_type = dict(request.headers).get(b"content-type", b"").split(b";")[0]
            if content_type.strip() != b"application/x-www-form-urlencoded":
                raise _BadRequest(415, "the token exchange is a form POST")
            form = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
            return self._exchange(_single(form))
        raise _BadRequest(404, "not found")

    def _dialog(self, query: dict[str, str]) -> _Answer:
        """Log in at once and send the browser back to redirect_uri with a code."""
        if query.get("response_type") != "code":
            raise _BadRequest(400, "response_type must be code")
        client_id, redirect_uri = query.get("client_id"), query.get("redirect_uri")
        if not client_id or not redirect_uri:
            raise _BadRequest(400, "client_id and redirect_uri are required")
        if urlsplit(redirect_uri).scheme not in ("http", "https"):
            raise _BadRequest(400, "redirect_uri must be an http(s) URL")
        now = time.monotonic()
        self._grants = {code: g for code, g in self._grants.items() if g.expires > now}
        code = secrets.token_urlsafe(12)
        self._grants[code] = _Grant(client_id, redirect_uri, now + CODE_LIFETIME_S)
        answer = {"code": code, **({"state": query["state"]} if "state" in query else {})}
        separator = "&" if urlsplit(redirect_uri).query else "?"
        return 302, [("Location", f"{redirect_uri}{separator}{urlencode(answer)}")], b""

    def _exchange(self, form: dict[str, str]) -> _Answer:
        """A fresh code, with the client and redirect it was issued for, buys a new token."""
        if form.get("grant_type") != "authorization_code":
            raise _BadRequest(400, "grant_type must be authorization_code")
        grant = self._grants.pop(form.get("code", ""), None)
        if grant is None or grant.expires <= time.monotonic():
            raise _BadRequest(401, "the authorization code is unknown, used or expired")
        if form.get("client_id") != grant.client_id:
            raise _BadRequest(401, "client_id differs from the dialog's")
        if form.get("redirect_uri") != grant.redirect_uri:
            raise _BadRequest(401, "redirect_uri differs from the dialog's")
        secret = form.get("client_secret", "")
        if not secret or (
            self._client_secret is not None
            and not secrets.compare_digest(secret.encode(), self._client_secret.encode())
        ):
            raise _BadRequest(401, "wrong client_secret")
        token = secrets.token_urlsafe(24)
        self._gate.accept(token)
        self.issued += 1
        profile = {
            "email": "simulator@example.com",
            "user_id": "SIM001",
            "user_name": "Simulated User",
            "user_type": "individual",
            "broker": "UPSTOX",
            "exchanges": ["NSE", "NFO", "BSE"],
            "products": ["D", "I"],
            "order_types": ["MARKET", "LIMIT"],
            "is_active": True,
            "access_token": token,
            "extended_token": None,
        }
        return 200, [("Content-Type", "application/json")], json.dumps(profile).encode()


async def _read_request(
    connection: h11.Connection, reader: asyncio.StreamReader
) -> tuple[h11.Request, bytes]:
    """One request and its body (at most _MAX_BODY_BYTES)."""
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > _MAX_BODY_BYTES:
                raise _BadRequest(413, "the body is too large")
        elif isinstance(event, h11.EndOfMessage) and request is not None:
            return request, bytes(body)
        else:
            raise h11.RemoteProtocolError("the connection closed mid-request")


def _single(values: dict[str, list[str]]) -> dict[str, str]:
    """The first value of each parameter."""
    return {name: items[0] for name, items in values.items()}


def _error(status: int, message: str) -> _Answer:
    body = json.dumps({"status": "error", "errors": [{"message": message}]}).encode()
    return status, [("Content-Type", "application/json")], body
