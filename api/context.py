"""What every request handler needs, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from psycopg_pool import ConnectionPool

from api.liveness import DatabaseProbe
from api.published import PublishedIngest
from api.symbols import SymbolResolver
from ingest.config import Settings
from ingest.service import WebSocketService

# What a subscription change answers in an API process without the ingest: the ingest owns
# the feed's connections. Sending changes to it (the subscriptions table with LISTEN/NOTIFY,
# or a control socket) is the next step of the process split.
CHANGES_ELSEWHERE = (
    "subscription changes are run by the ingest process (tickvault ingest); not available here yet"
)


@dataclass(frozen=True)
class ApiContext:
    settings: Settings
    pool: ConnectionPool
    resolver: SymbolResolver
    probe: DatabaseProbe
    service: WebSocketService | None  # None: the ingest runs elsewhere, if at all
    # What the ingest on settings.data_dir publishes, read when `service` is None.
    published: PublishedIngest | None = None


async def get_context(request: Request) -> ApiContext:
    """A coroutine, as every dependency here: FastAPI runs a plain function dependency in the
    thread pool, where /health and the cached latest ticks would queue behind data requests."""
    return request.app.state.context


Context = Annotated[ApiContext, Depends(get_context)]


async def get_service(context: Context) -> WebSocketService:
    """The ingest service of this process, for subscription changes; 503 without one."""
    if context.service is None:
        raise HTTPException(status_code=503, detail=CHANGES_ELSEWHERE)
    return context.service


Service = Annotated[WebSocketService, Depends(get_service)]
