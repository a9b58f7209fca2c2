"""Stored history: ticks page by page, and OHLC bars as JSON or CSV."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from api.context import Context
from api.error_responses import responses
from api.models import BarsOut, TicksPage
from api.params import (
    CURSOR_PATTERN,
    SYMBOL_LIST_RULES,
    DateTime,
    Symbol,
    decode_cursor,
    encode_cursor,
    symbol_list,
    time_window,
)
from store.bars import (
    BAR_COLUMNS,
    BAR_INTERVALS,
    BarInterval,
    interval_bar_rows,
    many_bar_rows,
)
from store.ticks import tick_page

router = APIRouter(prefix="/api/v1", tags=["history"])

DEFAULT_WINDOW = timedelta(days=1)
# 5m bars are read from their own relation; every other interval from the 1-minute bars, so
# it gets their bound on the minutes read.
MAX_BAR_WINDOW: dict[BarInterval, timedelta] = {
    interval: timedelta(days=180 if interval == "5m" else 31) for interval in BAR_INTERVALS
}

_DATE_TIME = "an ISO 8601 date-time such as 2026-01-05T09:15:00+05:30, UTC when it has no offset"
Start = Annotated[
    DateTime | None,
    Query(description=f"Inclusive, {_DATE_TIME}; default: end - 24 h"),
]
End = Annotated[
    DateTime | None,
    Query(description=f"Exclusive, {_DATE_TIME}; default: now"),
]
BarStart = Annotated[
    DateTime | None,
    Query(
        description=f"Inclusive, {_DATE_TIME}; default: end - 24 h. The window may span at"
        f" most {MAX_BAR_WINDOW['5m'].days} days for 5m bars and"
        f" {MAX_BAR_WINDOW['1m'].days} days for every other interval"
    ),
]
BarIntervalParam = Annotated[
    BarInterval,
    Query(
        description=f"One of {', '.join(BAR_INTERVALS)}. Buckets are aligned to the NSE session:"
        " origin 09:15 IST, so 1h bars are 09:15-10:15, ..., 14:15-15:15, 15:15-15:30; 1d bars"
        " are IST trading dates, stamped at midnight IST. 1m and 5m are ohlc_1m and ohlc_5m;"
        " the others are built from ohlc_1m (open of the first minute, close of the last, high"
        " and low the extremes, volume and tick_count the sums), as the SQL function bars()"
        " builds them"
    ),
]


@router.get("/ticks/{symbol}", response_model=TicksPage, responses=responses(404, 503))
def ticks(
    symbol: Symbol,
    context: Context,
    start: Start = None,
    end: End = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None,
        Query(
            max_length=100,
            pattern=CURSOR_PATTERN,
            description="`next_cursor` of the previous page, as it was given",
        ),
    ] = None,
) -> TicksPage:
    """Ticks in [start, end), newest first, a page at a time."""
    window = time_window(start, end, default_span=DEFAULT_WINDOW)
    after = decode_cursor(cursor) if cursor is not None else None
    [key] = context.resolver.resolve([symbol])
    with context.pool.connection() as conn:
        rows = tick_page(conn, key, *window, limit=limit + 1, after=after)
    page = rows[:limit]
    more = len(rows) > limit
    return TicksPage(
        symbol=symbol,
        instrument_key=key,
        ticks=page,
        next_cursor=encode_cursor(page[-1]["ts"], page[-1]["received_at"]) if more else None,
    )


@router.get(
    "/bars/{symbol}",
    response_model=BarsOut,
    responses={
        **responses(404, 503),
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
    },
)
def bars(
    symbol: Symbol,
    context: Context,
    interval: BarIntervalParam = "1m",
    start: BarStart = None,
    end: End = None,
    output: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
) -> Any:
    """Bars whose bucket starts in [start, end), oldest first, each bar whole; a window of at
    most 180 days for 5m bars, 31 days for every other interval."""
    window = time_window(start, end, default_span=DEFAULT_WINDOW, max_span=MAX_BAR_WINDOW[interval])
    [key] = context.resolver.resolve([symbol])
    with context.pool.connection() as conn:
        rows = interval_bar_rows(conn, interval, key, *window)
    if output == "csv":
        return Response(_csv(rows), media_type="text/csv; charset=utf-8")
    return BarsOut(symbol=symbol, instrument_key=key, interval=interval, bars=rows)


@router.get(
    "/bars",
    response_model=list[BarsOut],
    responses={
        **responses(404, 503),
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
    },
)
def many_bars(
    context: Context,
    symbols: Annotated[
        str,
        Query(
            description="Comma-separated trading symbols, index names or instrument keys"
            f" ({SYMBOL_LIST_RULES})",
            examples=["INFY,TCS,NIFTY"],
        ),
    ],
    interval: BarIntervalParam = "1m",
    start: BarStart = None,
    end: End = None,
    output: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
) -> Any:
    """The bars of several symbols in one request, read in one query: as /bars/{symbol}
    gives each, in the order asked. CSV is one table, the symbol as its first column."""
    window = time_window(start, end, default_span=DEFAULT_WINDOW, max_span=MAX_BAR_WINDOW[interval])
    names = symbol_list(symbols)
    keys = context.resolver.resolve(names)
    with context.pool.connection() as conn:
        rows = many_bar_rows(conn, interval, dict(zip(names, keys, strict=True)), *window)
    if output == "csv":
        return Response(_csv(rows, ("symbol",)), media_type="text/csv; charset=utf-8")
    by_symbol: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for row in rows:
        by_symbol[row.pop("symbol")].append(row)
    return [
        BarsOut(symbol=name, instrument_key=key, interval=interval, bars=by_symbol[name])
        for name, key in zip(names, keys, strict=True)
    ]


def _csv(rows: list[dict[str, Any]], leading: tuple[str, ...] = ()) -> str:
    """`leading` columns (the symbol of a many-symbol read), then BAR_COLUMNS."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*leading, *BAR_COLUMNS])
    for row in rows:
        bucket = row["bucket"].isoformat().replace("+00:00", "Z")
        writer.writerow(
            [*(row[name] for name in leading), bucket, *(row[name] for name in BAR_COLUMNS[1:])]
        )
    return out.getvalue()
