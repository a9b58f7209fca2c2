"""The gaps of a trading day: session minutes the store was not receiving (store/coverage.py)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.context import Context
from api.error_responses import responses
from api.params import IsoDate, Symbol
from core.ist import ist_today
from store.calendar import trading_sessions
from store.coverage import gaps

router = APIRouter(prefix="/api/v1", tags=["coverage"])


class GapOut(BaseModel):
    symbol: str
    instrument_key: str
    start: datetime
    end: datetime
    minutes: int
    backfilled: int
    heard: int


class CoverageOut(BaseModel):
    date: date
    sessions: list[tuple[datetime, datetime]]
    gaps: list[GapOut]


@router.get("/coverage", response_model=CoverageOut, responses=responses(404, 503))
def coverage(
    context: Context,
    day: Annotated[
        IsoDate | None,
        Query(alias="date", description="IST trading date, YYYY-MM-DD; default: today"),
    ] = None,
    symbol: Annotated[
        Symbol | None,
        Query(description="one trading symbol, index name or instrument key; default: all"),
    ] = None,
) -> CoverageOut:
    """Gaps of `date`: runs of session minutes (NSE sessions of the market calendar, up to
    now) that no span of the feed's connections covers whole, for each instrument that was
    subscribed then; `end` is exclusive. A minute without trades while the feed was receiving
    is no gap. `backfilled` counts the gap minutes whose 1-minute bar now comes from Upstox's
    candles (`tickvault backfill`), `heard` those the feed was heard in for part of the
    minute (the ingest stopped or started in it): their bars hold those ticks only."""
    day = day or ist_today()
    keys = None if symbol is None else context.resolver.resolve([symbol])
    with context.pool.connection() as conn:
        sessions = trading_sessions(conn, day)
        found = gaps(conn, sessions, keys)
    return CoverageOut(date=day, sessions=sessions, gaps=[GapOut(**asdict(gap)) for gap in found])
