"""The market calendar: each exchange's sessions on a day, and the feed's segment statuses."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.context import Context
from api.error_responses import responses
from api.params import Date
from core.ist import IST
from store.calendar import DaySource, day_calendar, segment_statuses

router = APIRouter(prefix="/api/v1/market", tags=["market"])


class SessionOut(BaseModel):
    start: datetime  # inclusive, IST
    end: datetime  # exclusive


class ExchangeDayOut(BaseModel):
    exchange: str
    source: DaySource
    holiday_type: str | None
    description: str | None
    sessions: list[SessionOut]  # none: closed all day
    open_now: bool  # now falls in one of the sessions


class SegmentOut(BaseModel):
    segment: str
    status: str  # NORMAL_OPEN, NORMAL_CLOSE, ... as the feed's market_info last said
    since: datetime


class CalendarOut(BaseModel):
    date: date
    exchanges: list[ExchangeDayOut]
    segments: list[SegmentOut]  # the latest recorded live status of each segment


@router.get("/calendar", response_model=CalendarOut, responses=responses(503))
def calendar(
    context: Context,
    day: Annotated[
        Date | None,
        Query(alias="date", description="An IST trading date, YYYY-MM-DD; default: today (IST)"),
    ] = None,
) -> CalendarOut:
    """Every exchange's sessions on the day (Upstox's timings and holidays, refreshed daily
    by the ingest; the regular weekday hours where the calendar holds nothing for the day),
    and the session state of each feed segment now."""
    now = datetime.now(IST)
    day = day or now.date()
    with context.pool.connection() as conn:
        exchanges = day_calendar(conn, day)
        segments = segment_statuses(conn)
    return CalendarOut(
        date=day,
        exchanges=[
            ExchangeDayOut(
                exchange=entry.exchange,
                source=entry.source,
                holiday_type=entry.holiday_type,
                description=entry.description,
                sessions=[SessionOut(start=start, end=end) for start, end in entry.sessions],
                open_now=any(start <= now < end for start, end in entry.sessions),
            )
            for entry in exchanges
        ],
        segments=[
            SegmentOut(segment=segment, status=status, since=since)
            for segment, (status, since) in sorted(segments.items())
        ],
    )
