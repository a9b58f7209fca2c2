"""How failures become HTTP answers: bad input 4xx with a message, a sick database 503."""

from __future__ import annotations

import logging

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ingest.client import SubscriptionLimitError
from ingest.store.instruments import UnknownSymbol

log = logging.getLogger(__name__)


class ErrorOut(BaseModel):
    detail: str


def invalid(location: str, name: str, message: str, value: object) -> RequestValidationError:
    """A 422 shaped like FastAPI's own, for checks a parameter's type cannot express."""
    return RequestValidationError(
        [{"type": "value_error", "loc": (location, name), "msg": message, "input": value}]
    )


def _unknown_symbol(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=404, content={"detail": str(exc)})


def _over_limit(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=409, content={"detail": str(exc)})


def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # Connection failures, pool timeouts and statement timeouts (QueryCanceled) all land here.
    log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
    return JSONResponse(
        status_code=503,
        content={"detail": "the database is unavailable or did not answer in time"},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(UnknownSymbol, _unknown_symbol)
    app.add_exception_handler(SubscriptionLimitError, _over_limit)
    app.add_exception_handler(psycopg.OperationalError, _database_unavailable)


def responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI entries for the error answers a route can give."""
    return {code: {"model": ErrorOut} for code in codes}
