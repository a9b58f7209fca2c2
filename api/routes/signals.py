"""Signals the custom handlers emitted (ingest/signals.py), newest first."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.context import Context
from api.error_responses import responses
from api.models import SignalsOut
from api.params import DateTime, SearchText, Symbol, time_window
from store.signals import signal_page

router = APIRouter(prefix="/api/v1", tags=["signals"])

DEFAULT_WINDOW = timedelta(days=1)
MAX_WINDOW = timedelta(days=31)
_DATE_TIME = "an ISO 8601 date-time such as 2026-01-05T09:15:00+05:30, UTC when it has no offset"


@router.get("/signals", response_model=SignalsOut, responses=responses(404, 503))
def signals(
    context: Context,
    symbol: Annotated[
        Symbol | None,
        Query(description="Only this instrument: a trading symbol, index name or key"),
    ] = None,
    name: Annotated[
        SearchText | None, Query(description="Only signals of this name, e.g. volume_spike")
    ] = None,
    start: Annotated[
        DateTime | None,
        Query(description=f"Inclusive, {_DATE_TIME}; default: end - 24 h; at most 31 days"),
    ] = None,
    end: Annotated[
        DateTime | None, Query(description=f"Exclusive, {_DATE_TIME}; default: now")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> dict[str, Any]:
    """Signals whose causing tick's time is in [start, end), newest first, at most `limit`."""
    window = time_window(start, end, default_span=DEFAULT_WINDOW, max_span=MAX_WINDOW)
    key = context.resolver.resolve([symbol])[0] if symbol is not None else None
    with context.pool.connection() as conn:
        rows = signal_page(conn, key=key, name=name, start=window[0], end=window[1], limit=limit)
    return {"symbol": symbol, "instrument_key": key, "signals": rows}
