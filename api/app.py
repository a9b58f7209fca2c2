"""The FastAPI application: its lifespan owns the read pool and, optionally, the ingest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.context import ApiContext
from api.db import read_pool
from api.errors import install_error_handlers
from api.routes import feed, history, instruments, ops
from api.symbols import SymbolResolver
from ingest.config import Settings
from ingest.service import WebSocketService


def create_app(settings: Settings, database_url: str, run_ingest: bool = True) -> FastAPI:
    """The API over `database_url`; with `run_ingest`, the ingest service runs inside it.

    Without the ingest (an API process beside a separate ingest), latest ticks come from the
    database and the feed's status and subscription endpoints answer 503.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = read_pool(database_url)
        pool.open(wait=False)
        service = WebSocketService(settings, database_url) if run_ingest else None
        try:
            if service is not None:
                await service.start()
            app.state.context = ApiContext(settings, pool, SymbolResolver(pool), service)
            yield
        finally:
            if service is not None:
                await service.stop()  # flushes every tick it delivered
            await asyncio.to_thread(pool.close)

    app = FastAPI(
        title="tickvault",
        version="0.1.0",
        summary="Upstox market ticks and OHLC bars from TimescaleDB",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for module in (ops, feed, history, instruments):
        app.include_router(module.router)
    return app
