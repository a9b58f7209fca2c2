"""The FastAPI application: its lifespan owns the read pool and the readers of the ingest's
channels (its published table and its control socket)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.middleware.trustedhost import TrustedHostMiddleware

from api.auth import ApiKeyGate
from api.budget import POOL_SIZE, DatabaseBudget, document_budget
from api.chain_cache import ChainCache
from api.context import ApiContext
from api.db import read_pool
from api.error_responses import install_error_handlers
from api.ingest_control import IngestControl
from api.ingest_state import PublishedIngest
from api.latest_fast import PATH as HOT_PATH
from api.latest_fast import LatestTicks, LatestTicksShortcut
from api.limits import UVICORN_LIMITS, BodyLimit
from api.liveness import DatabaseProbe
from api.operations import Operations
from api.page import mount_page
from api.routes import (
    audit,
    coverage,
    feed,
    history,
    instruments,
    market_calendar,
    ops,
    option_chain,
    signals,
    stream,
    token,
)
from api.stream_hub import StreamHub
from api.symbol_resolver import SymbolResolver
from core.config import Settings


def server_options(settings: Settings) -> dict[str, Any]:
    """What uvicorn serves an app of `settings` with: the request limits (api/limits.py), the
    stream's compression (TICKVAULT_STREAM_DEFLATE), and no access log: uvicorn.access is
    held at WARNING (tickvault/logs.py), so its line for each request would be built and
    dropped, and the protocol answers the hot request only where no line is due."""
    return {
        **UVICORN_LIMITS,
        "ws_per_message_deflate": settings.stream_deflate,
        "access_log": False,
    }


def create_app(settings: Settings, database_url: str) -> FastAPI:
    """The API over `database_url`, beside a `tickvault ingest` on the same machine and
    `settings.data_dir`: one job per process, the ingest never runs in here.

    The latest ticks, the status and /health come from what that ingest publishes
    (ingest/channels/), and answer 503 with the reason while no ingest runs; subscription
    changes are sent to that ingest through its control socket (ingest/channels/control.py), and
    answer 503 while none listens; history, bars, instruments and the subscription list come
    from the database as ever.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = read_pool(database_url, max_size=POOL_SIZE)
        pool.open(wait=False)
        probe = DatabaseProbe(database_url)
        published = PublishedIngest(settings.data_dir)
        hub = StreamHub(settings, published, pool)
        try:
            await probe.start()
            await published.start()
            app.state.stream_hub = hub
            await hub.start()
            app.state.context = ApiContext(
                settings,
                pool,
                SymbolResolver(pool),
                probe,
                published,
                IngestControl(settings.data_dir),
                database_url,
                ChainCache(pool),
            )
            yield
        finally:
            await hub.stop()
            await published.stop()
            await probe.stop()
            await asyncio.to_thread(pool.close)

    # FastAPIOffline: FastAPI whose /docs and /redoc load Swagger UI and ReDoc from the
    # installed package, not from a CDN, so they render on a machine without internet.
    app = FastAPIOffline(
        title="tickvault",
        version="0.1.0",
        summary="Upstox market ticks and OHLC bars from TimescaleDB",
        lifespan=lifespan,
    )
    app.state.settings = settings  # what a server of this app reads (server_options)
    routes = (
        ops,
        feed,
        history,
        instruments,
        signals,
        token,
        market_calendar,
        audit,
        coverage,
        stream,
        option_chain,
    )
    for module in routes:
        app.include_router(module.router)
    mount_page(app)
    openapi = app.openapi()
    document_budget(openapi)
    operations = Operations(openapi)
    install_error_handlers(app, operations)
    # Outermost last: the Host is checked first, then the key, then the body is let in, then
    # the hot latest-ticks request is answered below FastAPI's routing, then a request that
    # reads the database waits for a place in its class's budget.
    app.add_middleware(DatabaseBudget)
    # The protocol finds the hot answer here (api/http_protocol.py), the middleware below it.
    app.state.latest_ticks = LatestTicks(
        app.state, settings.api_allowed_hosts, operations.needs_api_key("GET", HOT_PATH)
    )
    app.add_middleware(LatestTicksShortcut, answer=app.state.latest_ticks)
    app.add_middleware(BodyLimit)
    app.add_middleware(ApiKeyGate, settings=settings, operations=operations)
    app.add_middleware(
        TrustedHostMiddleware, allowed_hosts=list(settings.api_allowed_hosts), www_redirect=False
    )
    return app
