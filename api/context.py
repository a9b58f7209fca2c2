"""What every request handler needs, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from psycopg_pool import ConnectionPool

from api.liveness import DatabaseProbe
from api.symbols import SymbolResolver
from ingest.config import Settings
from ingest.service import WebSocketService


@dataclass(frozen=True)
class ApiContext:
    settings: Settings
    pool: ConnectionPool
    resolver: SymbolResolver
    probe: DatabaseProbe
    service: WebSocketService | None  # None: the ingest runs elsewhere, if at all


async def get_context(request: Request) -> ApiContext:
    """A coroutine, as every dependency here: FastAPI runs a plain function dependency in the
    thread pool, where /health and the cached latest ticks would queue behind data requests."""
    return request.app.state.context


Context = Annotated[ApiContext, Depends(get_context)]


async def get_service(context: Context) -> WebSocketService:
    if context.service is None:
        raise HTTPException(
            status_code=503,
            detail="the ingest service does not run in this API process (started without it)",
        )
    return context.service


Service = Annotated[WebSocketService, Depends(get_service)]
