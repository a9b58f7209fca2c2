"""The live feed: service status, subscriptions, and the latest tick per symbol."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response
from starlette.concurrency import run_in_threadpool

from api.auth import API_KEY
from api.context import ApiContext, Changes, Context
from api.error_responses import ErrorOut, responses
from api.ingest_state import PublishedIngest, StatusNotPublished
from api.limits import MAX_BODY_BYTES
from api.models import (
    LatestTicksOut,
    SubscribedOut,
    SubscribeIn,
    SubscribeOut,
    SubscriptionOut,
    UnsubscribeOut,
)
from api.params import SYMBOL_LIST_RULES, Symbol, symbol_list
from ingest.channels.latest_table import IngestNotRunning, SlotBusy
from ingest.status import IngestStatus, OptionChainsStatus
from store.subscriptions import listing
from store.tick_row import Tick, as_dict

router = APIRouter(prefix="/api/v1/websocket", tags=["feed"])
_GUARDED = responses(401, 403, 404, 409, 503)
_BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The body cannot be read as JSON text"},
    413: {"model": ErrorOut, "description": f"The body is over {MAX_BODY_BYTES} bytes"},
}


@router.get("/status", response_model=IngestStatus, responses=responses(503))
async def status(context: Context) -> IngestStatus:
    """The ingest's status as it last published it (every half second); 503 while no ingest
    runs."""
    return await run_in_threadpool(_published_status, context.published)


def _published_status(published: PublishedIngest) -> IngestStatus:
    try:
        return published.status()
    except (IngestNotRunning, StatusNotPublished, SlotBusy) as error:
        raise HTTPException(status_code=503, detail=str(error)) from None


_SUBSCRIPTION_FIELDS = ("symbol", "instrument_key", "mode", "status", "error")


@router.get("/subscriptions", response_model=list[SubscriptionOut], responses=responses(503))
def subscriptions(context: Context) -> list[dict[str, Any]]:
    """Every subscription not unsubscribed, as the ingest keeps them in the database."""
    with context.pool.connection() as conn:
        rows = listing(conn)
    return [dict(zip(_SUBSCRIPTION_FIELDS, row, strict=True)) for row in rows]


@router.get("/option-windows", response_model=OptionChainsStatus | None, responses=responses(503))
async def chain_windows(context: Context) -> OptionChainsStatus | None:
    """The option chains the ingest follows (TICKVAULT_OPTION_CHAINS): for each underlying
    and expiry, the at-the-money strike, the strikes taken and how many contracts; null when
    it follows none. From the status the ingest publishes; 503 while no ingest runs."""
    status = await run_in_threadpool(_published_status, context.published)
    return status.option_chains


@router.post(
    "/subscriptions",
    response_model=SubscribeOut,
    dependencies=[API_KEY],
    responses={**_GUARDED, **_BODY_ERRORS},
)
async def subscribe(body: SubscribeIn, context: Context, changes: Changes) -> SubscribeOut:
    """Subscribe symbols in a mode (all or nothing); a subscribed symbol changes mode.

    Under `tickvault api`, the change is sent to the ingest process (its control socket)."""
    keys = await run_in_threadpool(context.resolver.resolve, body.symbols)
    await changes.subscribe_keys(keys, mode=body.mode)
    return SubscribeOut(
        mode=body.mode,
        subscribed=[
            SubscribedOut(symbol=symbol, instrument_key=key)
            for symbol, key in zip(body.symbols, keys, strict=True)
        ],
    )


@router.delete(
    "/subscriptions/{symbol}",
    response_model=UnsubscribeOut,
    dependencies=[API_KEY],
    responses=_GUARDED,
)
async def unsubscribe(symbol: Symbol, context: Context, changes: Changes) -> UnsubscribeOut:
    """Stop receiving a symbol; unsubscribing one that is not subscribed changes nothing."""
    [key] = await run_in_threadpool(context.resolver.resolve, [symbol])
    await changes.unsubscribe_keys([key])
    return UnsubscribeOut(symbol=symbol, instrument_key=key, status="unsubscribed")


@router.get("/latest-ticks", response_model=LatestTicksOut, responses=responses(404, 503))
async def latest_ticks(
    context: Context,
    symbols: Annotated[
        str | None,
        Query(
            description="Comma-separated trading symbols, index names or instrument keys"
            f" ({SYMBOL_LIST_RULES}); leave out for every instrument with a tick",
            examples=["INFY,TCS"],
        ),
    ] = None,
) -> Response:
    """From the table the ingest publishes (`tickvault api` beside `tickvault ingest`); 503
    while no ingest runs.

    The hot case (every symbol resolved before) stays on the event loop, where a published
    slot is read with a short busy budget. Anything that needs the database, or a slot still
    busy, goes to the threadpool.
    """
    names = symbol_list(symbols) if symbols is not None else None
    keys = context.resolver.remembered(names) if names is not None else None
    if names is not None and keys is not None:
        with contextlib.suppress(SlotBusy):
            return _latest_ticks_out(context, names, keys, _latest(context, keys, on_loop=True))
    return await run_in_threadpool(_latest_ticks_slow, context, names)


def _latest_ticks_slow(context: ApiContext, names: list[str] | None) -> Response:
    keys = context.resolver.resolve(names) if names is not None else None
    try:
        latest = _latest(context, keys, on_loop=False)
    except SlotBusy as error:
        raise HTTPException(status_code=503, detail=str(error)) from None
    return _latest_ticks_out(context, names, keys, latest)


def _latest(context: ApiContext, keys: list[str] | None, *, on_loop: bool) -> dict[str, Tick]:
    """ApiContext.latest, with 503 when no ingest runs; SlotBusy passes through."""
    try:
        return context.latest(keys, on_loop=on_loop)
    except IngestNotRunning as error:
        raise HTTPException(status_code=503, detail=str(error)) from None


def _latest_ticks_out(
    context: ApiContext,
    names: list[str] | None,
    keys: list[str] | None,
    latest: dict[str, Tick],
) -> Response:
    if names is None:
        by_key = context.resolver.trading_symbols(latest)
        wanted = sorted(by_key.items(), key=lambda item: (item[1], item[0]))
    else:
        wanted = list(zip(keys, names, strict=True))
    ticks = [{**as_dict(latest[key]), "symbol": name} for key, name in wanted if key in latest]
    missing = [name for key, name in wanted if key not in latest]
    # Serialized here: returned as a model, FastAPI would validate it a second time against
    # response_model, a third of this hot endpoint's cost. The schema stays documented.
    body = LatestTicksOut(source="cache", ticks=ticks, missing=missing).model_dump_json()
    return Response(body, media_type="application/json")
