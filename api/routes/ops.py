"""For operators and their tools: health for load balancers, /metrics for Prometheus."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.context import Context
from api.metrics import StatusCollector
from api.models import HealthOut, UnavailableOut

router = APIRouter(tags=["ops"])


@router.get("/health", response_model=HealthOut, responses={503: {"model": UnavailableOut}})
async def health(context: Context) -> Any:
    """200 when the database answers and the ingest, if this process runs it, is healthy.

    Answered from memory on the event loop (see api/liveness.py), so it stays fast while data
    requests hold every thread and pooled connection, and while the database hangs.
    """
    service = context.service
    problem = context.probe.problem() or (service.health_problem() if service else None)
    if problem is not None:
        return _unavailable(problem)
    ingest = "running" if service is not None else "not run by this process"
    return HealthOut(status="ok", database="ok", ingest=ingest)


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
    scrape.register(StatusCollector(service.status()))
    body = generate_latest(service.metrics.registry) + generate_latest(scrape)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
