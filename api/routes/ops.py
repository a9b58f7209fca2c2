"""For operators and their tools: health for load balancers, /metrics for Prometheus."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api import queries
from api.context import Context
from api.metrics import StatusCollector
from api.models import HealthOut, UnavailableOut

router = APIRouter(tags=["ops"])
log = logging.getLogger(__name__)

HEALTH_WAIT_S = 2.0


@router.get("/health", response_model=HealthOut, responses={503: {"model": UnavailableOut}})
def health(context: Context) -> Any:
    """200 when the database answers and the ingest, if this process runs it, is running."""
    try:
        with context.pool.connection(timeout=HEALTH_WAIT_S) as conn:
            queries.ping(conn)
    except psycopg.Error as exc:
        log.warning("health: the database does not answer: %s", exc)
        return _unavailable("the database does not answer")
    if context.service is None:
        return HealthOut(status="ok", database="ok", ingest="not run by this process")
    if not context.service.is_running:
        return _unavailable("the ingest service is not running")
    return HealthOut(status="ok", database="ok", ingest="running")


def _unavailable(reason: str) -> JSONResponse:
    body = UnavailableOut(status="unavailable", reason=reason)
    return JSONResponse(status_code=503, content=body.model_dump())


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(context: Context) -> Response:
    """The ingest's own instruments, then figures read from its status at this scrape."""
    service = context.service
    if service is None:
        return Response(b"", media_type=CONTENT_TYPE_LATEST)
    scrape = CollectorRegistry()
    scrape.register(StatusCollector(service.get_status()))
    body = generate_latest(service.metrics.registry) + generate_latest(scrape)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
