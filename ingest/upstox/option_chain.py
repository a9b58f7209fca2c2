"""Upstox's option chain over REST (`GET /v2/option/chain`): what the chain audit compares
our stored chain with (shared/specs/upstox-rest.md, "Option chain").

The call goes through the candle client (`CandleClient.get_json`), so it keeps the same rate
limits, retries and token handling; this module only names the path and reads the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import urlencode

from ingest.upstox.candles import CandleClient, CandleError

CHAIN_PATH = "/v2/option/chain"


@dataclass(frozen=True)
class QuotedSide:
    """One contract of Upstox's answer: what the audit compares."""

    instrument_key: str
    ltp: float | None
    oi: float | None
    iv: float | None


@dataclass(frozen=True)
class QuotedStrike:
    strike: float
    underlying_price: float | None
    call: QuotedSide | None
    put: QuotedSide | None


async def quoted_chain(
    client: CandleClient, underlying_key: str, expiry: date
) -> list[QuotedStrike]:
    """Upstox's chain of `underlying_key`'s `expiry` now, one row per strike (an empty list
    when Upstox lists no such chain)."""
    query = urlencode({"instrument_key": underlying_key, "expiry_date": expiry.isoformat()})
    path = f"{CHAIN_PATH}?{query}"
    body = await client.get_json(path)
    rows = body.get("data") if isinstance(body, dict) else None
    if not isinstance(rows, list):
        raise CandleError(f"GET {path}: no data list in the answer")
    try:
        return [_strike(row) for row in rows]
    except (KeyError, TypeError, ValueError) as error:
        raise CandleError(f"GET {path}: a strike row is not as documented ({error!r})") from None


def _strike(row: dict[str, Any]) -> QuotedStrike:
    spot = row.get("underlying_spot_price")
    return QuotedStrike(
        float(row["strike_price"]),
        float(spot) if spot is not None else None,
        _side(row.get("call_options")),
        _side(row.get("put_options")),
    )


def _side(side: dict[str, Any] | None) -> QuotedSide | None:
    if not side:
        return None
    market = side.get("market_data") or {}
    greeks = side.get("option_greeks") or {}
    return QuotedSide(
        str(side["instrument_key"]),
        _number(market.get("ltp")),
        _number(market.get("oi")),
        _number(greeks.get("iv")),
    )


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
