"""What every request handler needs, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, HTTPException, Request
from psycopg_pool import ConnectionPool

from api.ingest_control import IngestControl
from api.ingest_state import PublishedIngest
from api.liveness import DatabaseProbe
from api.symbol_resolver import SymbolResolver
from ingest.config import Settings
from ingest.published import IngestNotRunning
from ingest.service import WebSocketService
from store.tick import Tick

# What a subscription change answers in an app with neither the ingest nor a way to it.
NO_INGEST = "no ingest runs in this API process and none is reachable from it"


@dataclass(frozen=True)
class ApiContext:
    settings: Settings
    pool: ConnectionPool
    resolver: SymbolResolver
    probe: DatabaseProbe
    service: WebSocketService | None  # None: the ingest runs elsewhere, if at all
    # What the ingest on settings.data_dir publishes, read when `service` is None.
    published: PublishedIngest | None = None
    # Its control socket, which subscription changes go through when `service` is None.
    control: IngestControl | None = None
    # For the few writes the API makes itself (POST /api/v1/audit); reads go through `pool`.
    database_url: str | None = None

    def latest(self, keys: list[str] | None, *, on_loop: bool) -> dict[str, Tick]:
        """The latest tick of each key that has one (every instrument's for None): from the
        ingest's memory in this process, else from what it publishes. IngestNotRunning without
        either; SlotBusy passes through (`on_loop`: the event loop's short busy budget)."""
        if self.service is not None:
            return self.service.cache.latest_many(keys)
        if self.published is None:
            raise IngestNotRunning("no ingest state in this API process")
        return self.published.latest(keys, on_loop=on_loop)


async def get_context(request: Request) -> ApiContext:
    """A coroutine, as every dependency here: FastAPI runs a plain function dependency in the
    thread pool, where /health and the cached latest ticks would queue behind data requests."""
    return request.app.state.context


Context = Annotated[ApiContext, Depends(get_context)]


class SubscriptionChanges(Protocol):
    """What the routes change subscriptions through: the ingest's SubscriptionManager in
    this process, or the ingest process's control socket (IngestControl)."""

    async def subscribe_keys(self, keys: list[str], mode: str = "full") -> None: ...

    async def unsubscribe_keys(self, keys: list[str]) -> None: ...


async def get_changes(context: Context) -> SubscriptionChanges:
    """The ingest of this process, else the ingest process beside it; 503 without either."""
    if context.service is not None:
        return context.service.subscriptions
    if context.control is None:
        raise HTTPException(status_code=503, detail=NO_INGEST)
    return context.control


Changes = Annotated[SubscriptionChanges, Depends(get_changes)]
