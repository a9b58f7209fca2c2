"""What every request handler needs, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from psycopg_pool import ConnectionPool

from api.symbols import SymbolResolver
from ingest.config import Settings
from ingest.service import WebSocketService


@dataclass(frozen=True)
class ApiContext:
    settings: Settings
    pool: ConnectionPool
    resolver: SymbolResolver
    service: WebSocketService | None  # None: the ingest runs elsewhere, if at all


def get_context(request: Request) -> ApiContext:
    return request.app.state.context


Context = Annotated[ApiContext, Depends(get_context)]


def get_service(context: Context) -> WebSocketService:
    if context.service is None:
        raise HTTPException(
            status_code=503,
            detail="the ingest service does not run in this API process (started without it)",
        )
    return context.service


Service = Annotated[WebSocketService, Depends(get_service)]
