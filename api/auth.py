"""The API key that guards the endpoints which change what the feed carries.

A route asks for the key by declaring `API_KEY` among its dependencies, which puts the key in
its OpenAPI entry; `ApiKeyGate` enforces what that entry says. The gate runs before routing,
because FastAPI reads and parses a route's body before it solves the route's dependencies: a
check made as a dependency would let anyone without the key make the server read a body.
"""

from __future__ import annotations

import secrets

from fastapi import Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api.limits import CLOSE
from api.operations import Operations
from core.config import Settings

HEADER = "X-API-Key"
API_KEY = Security(
    APIKeyHeader(
        name=HEADER,
        auto_error=False,
        description="Must equal TICKVAULT_API_KEY; without one configured, changes are refused.",
    )
)


class ApiKeyGate:
    """403 while no key is configured (never open by default), 401 for a missing or wrong one,
    for every operation the OpenAPI document says needs the key, before its body is read."""

    def __init__(self, app: ASGIApp, settings: Settings, operations: Operations) -> None:
        self.app = app
        self._expected = settings.api_key.encode() if settings.api_key else None
        self._operations = operations

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._operations.needs_api_key(
            scope["method"], scope["path"]
        ):
            refusal = self._refusal(Headers(scope=scope).getlist(HEADER))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, given: list[str]) -> JSONResponse | None:
        if self._expected is None:
            detail = "subscription changes are disabled: set TICKVAULT_API_KEY to enable them"
            return JSONResponse({"detail": detail}, status_code=403, headers=CLOSE)
        # Latin-1 gives back the header's bytes: compare_digest refuses str with non-ASCII
        # characters, which a header can carry.
        if len(given) == 1 and secrets.compare_digest(given[0].encode("latin-1"), self._expected):
            return None
        return JSONResponse(
            {"detail": f"missing or wrong {HEADER} header"},
            status_code=401,
            headers={"WWW-Authenticate": "ApiKey", **CLOSE},
        )
