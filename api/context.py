"""What every request handler needs, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from psycopg_pool import ConnectionPool

from api.chain_cache import ChainCache
from api.ingest_control import IngestControl
from api.ingest_state import PublishedIngest
from api.liveness import DatabaseProbe
from api.symbol_resolver import SymbolResolver
from core.config import Settings
from store.tick_row import Tick


@dataclass(frozen=True)
class ApiContext:
    settings: Settings
    pool: ConnectionPool
    resolver: SymbolResolver
    probe: DatabaseProbe
    published: PublishedIngest  # what the ingest on settings.data_dir publishes
    control: IngestControl  # its control socket, which subscription changes go through
    # For the few writes the API makes itself (POST /api/v1/audit); reads go through `pool`.
    database_url: str
    chains: ChainCache  # what the option chain "now" keeps of the database

    def latest(self, keys: list[str] | None, *, on_loop: bool) -> dict[str, Tick]:
        """The latest tick of each key that has one (every instrument's for None), as the
        ingest publishes it. IngestNotRunning while none runs; SlotBusy passes through
        (`on_loop`: the event loop's short busy budget)."""
        return self.published.latest(keys, on_loop=on_loop)


async def get_context(request: Request) -> ApiContext:
    """A coroutine, as every dependency here: FastAPI runs a plain function dependency in the
    thread pool, where /health and the cached latest ticks would queue behind data requests."""
    return request.app.state.context


Context = Annotated[ApiContext, Depends(get_context)]


async def get_changes(context: Context) -> IngestControl:
    """The control socket of the ingest process beside the API."""
    return context.control


Changes = Annotated[IngestControl, Depends(get_changes)]
