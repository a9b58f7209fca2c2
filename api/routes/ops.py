"""For operators and their tools: health for load balancers, /metrics for Prometheus."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.concurrency import run_in_threadpool

from api.context import Context
from api.ingest_state import PublishedIngest, StatusNotPublished
from api.models import HealthOut, UnavailableOut
from api.status_metrics import StatusCollector
from ingest.channels.latest_table import IngestNotRunning, SlotBusy

router = APIRouter(tags=["ops"])


@router.get("/health", response_model=HealthOut, responses={503: {"model": UnavailableOut}})
async def health(context: Context) -> Any:
    """200 when the database answers and the ingest is healthy: the `tickvault ingest`
    publishing on the same data directory.

    Answered from memory on the event loop (see api/liveness.py and api/ingest_state.py), so it
    stays fast while data requests hold every thread and pooled connection, and while the
    database hangs.
    """
    problem = context.probe.problem() or context.published.problem()
    if problem is not None:
        return _unavailable(problem)
    return HealthOut(status="ok", database="ok", ingest="running in another process")


def _unavailable(reason: str) -> JSONResponse:
    body = UnavailableOut(status="unavailable", reason=reason)
    return JSONResponse(status_code=503, content=body.model_dump())


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(context: Context) -> Response:
    """The figures of the status the ingest last published, or `tickvault_ingest_running 0`
    while none publishes."""
    body = await run_in_threadpool(_published_metrics, context.published)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class _NotRunning:
    """The one figure there is while no ingest publishes."""

    def collect(self) -> Any:
        yield GaugeMetricFamily("tickvault_ingest_running", "1 while the ingest service runs", 0)


def _published_metrics(published: PublishedIngest) -> bytes:
    scrape = CollectorRegistry()
    try:
        scrape.register(StatusCollector(published.status()))
    except (IngestNotRunning, StatusNotPublished, SlotBusy):
        scrape.register(_NotRunning())
    return generate_latest(scrape)
