"""`tickvault login`: Upstox's OAuth authorization-code flow, for the daily token.

It prints the dialog URL; the user logs in in a browser, and Upstox redirects to the app's
redirect URI with a code. When that URI is a loopback http:// address, a listener here
receives the redirect itself; otherwise the user pastes the URL the browser landed on (or the
code alone).

A redirect counts only with this run's `state` (random, compared in constant time): the
listener is a port anyone on the machine, or any page the browser visits, can send a request
to, and a code without the state may be someone else's, whose token would then be stored as
ours. The listener answers such a request 400 and keeps waiting for the real redirect.

The code is exchanged with a form POST for the token, which is stored as
`tickvault token set` stores it. The client secret is a Secret: it goes into the form body
and nowhere else.
"""

from __future__ import annotations

import argparse
import hmac
import html
import http.server
import secrets
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from core.config import Settings
from core.upstox_wire import LOGIN_DIALOG_PATH, LOGIN_TOKEN_PATH
from ingest.client.authorize import is_loopback, require_tls
from tickvault.token import store

_HTTP_TIMEOUT_S = 15.0
_PAGE = b"<!doctype html><title>tickvault</title><p>%s</p>"


class LoginError(ValueError):
    """The login failed for a reason the user can act on; never quotes a secret."""


class _Callback(http.server.BaseHTTPRequestHandler):
    """The redirect from Upstox: keeps the code of a GET on the expected path with this
    login's state; any other request is refused and the login waits on."""

    server: _CallbackServer

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != self.server.path:
            self.send_error(404)
            return
        try:
            self.server.code = code_from(_query(url.query), self.server.state)
        except LoginError as error:
            print(f"refused a request to the redirect URI: {error}", file=sys.stderr, flush=True)
            self._page(400, f"Not this login's redirect: {error}. tickvault is still waiting.")
            return
        self._page(200, "tickvault is logged in. You can close this tab.")

    def _page(self, status: int, text: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(_PAGE % html.escape(text, quote=False).encode())

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request line carries the code."""


class _CallbackServer(http.server.HTTPServer):
    def __init__(self, host: str, port: int, path: str, state: str) -> None:
        super().__init__((host, port), _Callback)
        self.path = path
        self.state = state
        self.code: str | None = None
        self.timeout = 0.5

    def wait(self, timeout_s: float) -> str:
        """The code of the first redirect with this login's state."""
        deadline = time.monotonic() + timeout_s
        while self.code is None:
            if time.monotonic() > deadline:
                raise LoginError(f"no redirect from Upstox within {timeout_s:.0f} s")
            self.handle_request()
        return self.code


def loopback_listener(redirect_uri: str, state: str) -> _CallbackServer | None:
    """A listener on the redirect URI when it is a loopback http:// URL, else None; it takes
    only a redirect that carries `state`."""
    parts = urlsplit(redirect_uri)
    if parts.scheme != "http" or not is_loopback(parts.hostname):
        return None
    host = "127.0.0.1" if parts.hostname == "localhost" else (parts.hostname or "")
    try:
        return _CallbackServer(host, parts.port or 80, parts.path or "/", state)
    except OSError as error:
        raise LoginError(f"cannot listen on {redirect_uri} for the redirect: {error}") from None


def dialog_url(base: str, client_id: str, redirect_uri: str, state: str) -> str:
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "state": state,
    }
    return f"{base}{LOGIN_DIALOG_PATH}?{urlencode(query)}"


def _query(query: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(query).items()}


def code_from(answer: dict[str, str], state: str) -> str:
    """The code of a redirect's query, which must carry the state this login sent."""
    given = answer.get("state")
    if given is None:
        raise LoginError("the redirect carried no state, so its code may be anyone's")
    # As bytes: compare_digest refuses a str with characters beyond ASCII.
    if not hmac.compare_digest(given.encode(), state.encode()):
        raise LoginError("the redirect's state is not this login's")
    code = answer.get("code")
    if not code:
        raise LoginError(f"the redirect carried no code ({', '.join(sorted(answer)) or 'empty'})")
    return code


def pasted_code(text: str, state: str) -> str:
    """The code from a pasted redirect URL, or the pasted code itself."""
    text = text.strip()
    if not text:
        raise LoginError("nothing was pasted")
    if "code=" in text:
        try:
            return code_from(_query(urlsplit(text).query if "?" in text else text), state)
        except LoginError as error:
            raise LoginError(f"{error}: start again") from None
    return text


def exchange(settings: Settings, base: str, code: str) -> str:
    """The access token for `code` (the form POST of the token endpoint)."""
    form = {
        "code": code,
        "client_id": settings.upstox_client_id,
        "client_secret": str(settings.upstox_client_secret),
        "redirect_uri": settings.upstox_redirect_uri,
        "grant_type": "authorization_code",
    }
    loopback = is_loopback(urlsplit(base).hostname)
    try:
        with httpx.Client(timeout=_HTTP_TIMEOUT_S, trust_env=not loopback) as client:
            response = client.post(
                base + LOGIN_TOKEN_PATH, data=form, headers={"Accept": "application/json"}
            )
    except httpx.HTTPError as error:
        raise LoginError(f"the token exchange failed: {type(error).__name__}") from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200:
        raise LoginError(f"the token exchange answered HTTP {response.status_code}{_detail(body)}")
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise LoginError("the token exchange answered without an access_token")
    return token


def _detail(body: Any) -> str:
    """An Upstox error body's first errorCode and message."""
    try:
        first = body["errors"][0]
        code = f"{first['errorCode']}: " if first.get("errorCode") else ""
        return f" ({code}{first['message']})"
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""


def login(settings: Settings, args: argparse.Namespace) -> int:
    missing = [
        name
        for name, value in (
            ("UPSTOX_CLIENT_ID", settings.upstox_client_id),
            ("UPSTOX_CLIENT_SECRET", settings.upstox_client_secret),
            ("UPSTOX_REDIRECT_URI", settings.upstox_redirect_uri),
        )
        if not value
    ]
    if missing:
        raise LoginError(f"tickvault login needs {', '.join(missing)} (your Upstox app's)")
    base = (settings.upstox_login_base or settings.upstox_api_base).rstrip("/")
    require_tls(base, "https", "http", "UPSTOX_LOGIN_BASE")
    state = secrets.token_urlsafe(16)
    listener = None if args.paste else loopback_listener(settings.upstox_redirect_uri, state)
    url = dialog_url(base, settings.upstox_client_id, settings.upstox_redirect_uri, state)
    print(f"Open this URL in a browser and log in to Upstox:\n\n    {url}\n", flush=True)
    if listener is not None:
        print(f"waiting for the redirect to {settings.upstox_redirect_uri} ...", flush=True)
        with listener:
            code = listener.wait(args.timeout)
    else:
        print("Then paste the URL the browser was sent to (or its code):", flush=True)
        code = pasted_code(sys.stdin.readline(), state)
    store(settings, exchange(settings, base, code), "daily")
    return 0


def register(commands: Any) -> None:
    """`tickvault login`."""
    parser = commands.add_parser(
        "login",
        help="get a daily token through Upstox's OAuth login and store it",
        description="Needs UPSTOX_CLIENT_ID, UPSTOX_CLIENT_SECRET and UPSTOX_REDIRECT_URI. "
        "With a loopback http:// redirect URI the redirect is received here; otherwise "
        "paste the URL the browser lands on.",
    )
    parser.add_argument(
        "--paste", action="store_true", help="paste the redirect, even for a loopback URI"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the redirect"
    )
    parser.set_defaults(handler=login)
