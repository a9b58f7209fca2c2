"""The live feed: service status, subscriptions, and the latest tick per symbol."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from api.auth import API_KEY
from api.context import ApiContext, Context, Service
from api.errors import ErrorOut, responses
from api.limits import MAX_BODY_BYTES
from api.models import (
    LatestTicksOut,
    SubscribedOut,
    SubscribeIn,
    SubscribeOut,
    SubscriptionOut,
    UnsubscribeOut,
)
from api.params import MAX_SYMBOL_LIST_CHARS, SYMBOL_LIST_RULES, Symbol, symbol_list
from ingest.status import IngestStatus
from store.tick import as_dict
from store.ticks import newest_ticks

router = APIRouter(prefix="/api/v1/websocket", tags=["feed"])
_GUARDED = responses(401, 403, 404, 409, 503)
_BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The body cannot be read as JSON text"},
    413: {"model": ErrorOut, "description": f"The body is over {MAX_BODY_BYTES} bytes"},
}


@router.get("/status", response_model=IngestStatus, responses=responses(503))
async def status(service: Service) -> IngestStatus:
    return service.status()


@router.get("/subscriptions", response_model=list[SubscriptionOut], responses=responses(503))
def subscriptions(service: Service) -> list[dict[str, Any]]:
    return service.subscriptions.get_subscription_status()["subscriptions"]


@router.post(
    "/subscriptions",
    response_model=SubscribeOut,
    dependencies=[API_KEY],
    responses={**_GUARDED, **_BODY_ERRORS},
)
async def subscribe(body: SubscribeIn, context: Context, service: Service) -> SubscribeOut:
    """Subscribe symbols in a mode (all or nothing); a subscribed symbol changes mode."""
    keys = await run_in_threadpool(context.resolver.resolve, body.symbols)
    await service.subscribe_keys(keys, mode=body.mode)
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
async def unsubscribe(symbol: Symbol, context: Context, service: Service) -> UnsubscribeOut:
    """Stop receiving a symbol; unsubscribing one that is not subscribed changes nothing."""
    [key] = await run_in_threadpool(context.resolver.resolve, [symbol])
    await service.unsubscribe_keys([key])
    return UnsubscribeOut(symbol=symbol, instrument_key=key, status="unsubscribed")


@router.get("/latest-ticks", response_model=LatestTicksOut, responses=responses(404, 503))
async def latest_ticks(
    context: Context,
    symbols: Annotated[
        str | None,
        Query(
            max_length=MAX_SYMBOL_LIST_CHARS,
            description="Comma-separated trading symbols, index names or instrument keys"
            f" ({SYMBOL_LIST_RULES}); leave out for every instrument with a tick (every"
            " subscription without ingest)",
            examples=["INFY,TCS"],
        ),
    ] = None,
) -> Response:
    """From the ingest's memory when it runs in this process, else from the database.

    The hot case (the ingest here, every symbol resolved before) stays on the event loop,
    which is also where the cache is written; anything that needs the database goes to the
    threadpool.
    """
    names = symbol_list(symbols) if symbols is not None else None
    keys = context.resolver.remembered(names) if names is not None else None
    if context.service is not None and names is not None and keys is not None:
        return _latest_ticks_out(context, names, keys)
    return await run_in_threadpool(_latest_ticks_slow, context, names)


def _latest_ticks_slow(context: ApiContext, names: list[str] | None) -> Response:
    keys = context.resolver.resolve(names) if names is not None else None
    return _latest_ticks_out(context, names, keys)


def _latest_ticks_out(
    context: ApiContext, names: list[str] | None, keys: list[str] | None
) -> Response:
    if context.service is not None:
        source = "cache"
        latest = context.service.cache.latest_many(keys)
    else:
        source = "database"
        with context.pool.connection() as conn:
            latest = {row["instrument_key"]: row for row in newest_ticks(conn, keys)}
    if names is None:
        by_key = context.resolver.trading_symbols(latest)
        wanted = sorted(by_key.items(), key=lambda item: (item[1], item[0]))
    else:
        wanted = list(zip(keys, names, strict=True))
    ticks = [{**_fields(latest[key]), "symbol": name} for key, name in wanted if key in latest]
    missing = [name for key, name in wanted if key not in latest]
    # Serialized here: returned as a model, FastAPI would validate it a second time against
    # response_model, a third of this hot endpoint's cost. The schema stays documented.
    body = LatestTicksOut(source=source, ticks=ticks, missing=missing).model_dump_json()
    return Response(body, media_type="application/json")


def _fields(tick: tuple | dict[str, Any]) -> dict[str, Any]:
    """A cached tick is a tuple with integer times; a stored one is already a row."""
    return as_dict(tick) if isinstance(tick, tuple) else tick
