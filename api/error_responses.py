"""How failures become HTTP answers: bad input 4xx with a message, a sick database 503."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from api.operations import Operations
from ingest.client import SubscriptionLimitError
from store.instruments import UnknownSymbol

log = logging.getLogger(__name__)


class ErrorOut(BaseModel):
    detail: str


def invalid(location: str, name: str, message: str, value: object) -> RequestValidationError:
    """A 422 shaped like FastAPI's own, for checks a parameter's type cannot express."""
    return RequestValidationError(
        [{"type": "value_error", "loc": (location, name), "msg": message, "input": value}]
    )


async def _unknown_symbol(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=404, content={"detail": str(exc)})


async def _over_limit(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=409, content={"detail": str(exc)})


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # Connection failures, pool timeouts and statement timeouts (QueryCanceled) all land here.
    log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
    return JSONResponse(
        status_code=503,
        content={"detail": "the database is unavailable or did not answer in time"},
    )


class _EchoingJSONResponse(JSONResponse):
    """JSON that may quote what a client sent, whatever it sent.

    A JSON body can carry a lone surrogate (`"\\ud800"`), which is a Python str but not
    encodable as UTF-8; such a character comes out as `?` instead of failing the answer.
    """

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8", errors="replace")


# Quoted input that JSON cannot carry as it is: bytes (a body sent as something other than
# JSON) need not be UTF-8, and Python's JSON parser reads 1e999 and NaN as non-finite floats.
_QUOTABLE: dict[Any, Callable[[Any], Any]] = {
    bytes: lambda raw: raw.decode("utf-8", errors="replace"),
    float: lambda number: number if math.isfinite(number) else str(number),
}


async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
    errors = jsonable_encoder(exc.errors(), custom_encoder=_QUOTABLE)
    return _EchoingJSONResponse(status_code=422, content={"detail": errors})


def _http_error(operations: Operations) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(request: Request, exc: Exception) -> Response:
        """FastAPI's answer, except that a 405 names every method of the path in Allow.

        Starlette names only those of the first route that matches the path, and a path
        served by several routes (GET and POST /subscriptions) would seem to allow only one.
        """
        assert isinstance(exc, HTTPException)
        allowed = operations.allowed(request.scope["path"]) if exc.status_code == 405 else None
        if allowed:
            exc = HTTPException(405, exc.detail, headers={"Allow": ", ".join(sorted(allowed))})
        return await http_exception_handler(request, exc)

    return handle


def install_error_handlers(app: FastAPI, operations: Operations) -> None:
    """Every handler is a coroutine: Starlette runs a plain function one in the thread pool."""
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error(operations))
    app.add_exception_handler(UnknownSymbol, _unknown_symbol)
    app.add_exception_handler(SubscriptionLimitError, _over_limit)
    app.add_exception_handler(psycopg.OperationalError, _database_unavailable)


def responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI entries for the error answers a route can give."""
    return {code: {"model": ErrorOut} for code in codes}
