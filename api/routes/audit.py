"""The parity audit over HTTP: GET reads each instrument's latest stored verdict for a
trading date (`tickvault audit` and the post-close audit write them; sql/013_audit.sql), POST
runs the audit now and answers its results. Running costs Upstox candle calls against the
account's rate limits, so POST needs the API key."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, BeforeValidator

from api.auth import API_KEY
from api.context import ApiContext, Context
from api.error_responses import responses
from api.ingest_state import StatusNotPublished
from api.params import SYMBOL_LIST_RULES, symbol_list
from core.config import Secret
from ingest.channels.latest_table import IngestNotRunning, SlotBusy
from ingest.jobs.audit import run_audit
from ingest.tokens import UpstoxAccess
from ingest.upstox.candles import CandleError
from store.audit import StoredResult, latest_results, report_json
from store.errors import StoreError

router = APIRouter(prefix="/api/v1", tags=["audit"])


class AuditOut(BaseModel):
    trading_date: date
    clean: bool
    instruments: list[StoredResult]


def _date_text(value: object) -> object:
    """A date as YYYY-MM-DD only: pydantic alone also takes a number as a Unix time."""
    if not (isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)):
        raise ValueError("must be a date YYYY-MM-DD, e.g. 2026-01-05")
    return value


TradingDate = Annotated[
    date,
    BeforeValidator(_date_text),
    Query(alias="date", description="IST trading date, YYYY-MM-DD"),
]


@router.get("/audit", response_model=AuditOut, responses=responses(404, 503))
def audit(context: Context, day: TradingDate) -> dict[str, Any]:
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


@router.post(
    "/audit",
    response_model=AuditOut,
    dependencies=[API_KEY],
    responses=responses(401, 403, 404, 502, 503),
)
async def run(
    context: Context,
    day: TradingDate,
    symbols: Annotated[
        str | None,
        Query(
            description=f"Comma-separated, {SYMBOL_LIST_RULES}; default: every instrument"
            " with bars that day",
        ),
    ] = None,
) -> dict[str, Any]:
    """Audit `date` now against Upstox's candles, store the results and answer them: 503
    without UPSTOX_ACCESS_TOKEN (while the ingest beside the API feeds on its built-in
    simulator, the simulator's candles stand in), 502 when Upstox refuses the token or keeps
    failing, 404 for an unknown symbol."""
    access = await run_in_threadpool(_candle_source, context)
    if access is None:
        raise HTTPException(
            status_code=503,
            detail="the audit compares with Upstox's candles: set UPSTOX_ACCESS_TOKEN"
            " or store a token (tickvault token set)",
        )
    names = symbol_list(symbols) if symbols is not None else []
    try:
        report = await run_audit(context.database_url, access, day, names)
    except StoreError as error:
        raise HTTPException(status_code=404, detail=str(error)) from None
    except CandleError as error:
        raise HTTPException(status_code=502, detail=str(error)) from None
    return report.as_json()


def _candle_source(context: ApiContext) -> UpstoxAccess | None:
    """Where to fetch candles: Upstox with a token (the environment's, else the stored one);
    without one, the simulator the ingest feeds on, as the ingest itself does (its status
    says where); else none."""
    access = UpstoxAccess.chosen(context.settings)
    if access.token:
        return access
    try:
        feed = context.published.status().feed
    except (IngestNotRunning, StatusNotPublished, SlotBusy):
        return None
    if feed.source != "simulator" or feed.api_base is None:
        return None
    return UpstoxAccess(feed.api_base, Secret("simulator"))
