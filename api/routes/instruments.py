"""Finding instruments in the master by symbol or name."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.context import Context
from api.error_responses import responses
from api.models import InstrumentOut
from api.params import SearchText
from store.instruments import search_instruments

router = APIRouter(prefix="/api/v1", tags=["instruments"])


@router.get("/instruments", response_model=list[InstrumentOut], responses=responses(503))
def instruments(
    context: Context,
    query: Annotated[
        SearchText | None,
        Query(description="Part of a trading symbol or name, any case; exact symbols first"),
    ] = None,
    segment: Annotated[
        SearchText | None, Query(description="Only this segment, e.g. NSE_EQ", examples=["NSE_EQ"])
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[dict[str, Any]]:
    with context.pool.connection() as conn:
        return search_instruments(conn, query, segment, limit)
