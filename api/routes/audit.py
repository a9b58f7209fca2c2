"""The parity audit's stored results: each instrument's latest verdict for a trading date
(`tickvault audit` and the post-close audit write them; sql/013_audit.sql)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from api.context import Context
from api.errors import responses
from store.audit import latest_results, report_json

router = APIRouter(prefix="/api/v1", tags=["audit"])


class InstrumentAuditOut(BaseModel):
    instrument_key: str
    run_id: str
    run_at: str
    bars_verdict: str
    volume_verdict: str
    buckets_equal: int
    buckets_differing: int
    missing_ours: int
    missing_theirs: int
    details: dict[str, Any]


class AuditOut(BaseModel):
    trading_date: str
    clean: bool
    instruments: list[InstrumentAuditOut]


@router.get("/audit", response_model=AuditOut, responses=responses(404, 503))
def audit(
    context: Context,
    day: Annotated[date, Query(alias="date", description="IST trading date, YYYY-MM-DD")],
) -> dict[str, Any]:
    """Our 1-minute bars against Upstox's candles on `date`: per instrument, the buckets
    equal and differing (field, ticks of tick_size or percent of volume), missing on either
    side, and volume conservation. `clean` when every instrument agrees."""
    with context.pool.connection() as conn:
        results = latest_results(conn, day)
    if not results:
        raise HTTPException(
            status_code=404,
            detail=f"no audit of {day} is stored: run `tickvault audit --date {day}`",
        )
    return report_json(day, results)
