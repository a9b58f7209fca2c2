"""Upstox's option-chain endpoint, answered from the instruments the feed trades.

`GET /v2/option/chain?instrument_key=<underlying>&expiry_date=YYYY-MM-DD` (token checked
like the candle calls) answers one object per strike of that expiry with the call and the put
side by side, in the fields of Upstox's answer (shared/specs/upstox-rest.md, "Option chain").
Each contract's figures are its instrument's state as the feed last sent it (a contract nobody
followed yet is made, priced at the underlying's last price, as a first subscriber would
see it), so an audit comparing a stored chain with this answer compares like with like. An
underlying or expiry the master does not list answers an empty list, as Upstox does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from websockets.http11 import Request, Response

from core.ist import IST
from ingest.simulator.following import Following
from ingest.simulator.market import Instrument
from ingest.simulator.protocol import INVALID_TOKEN, Gate, error_response, json_response

CHAIN_PATH = "/v2/option/chain"
BAD_REQUEST = "UDAPI1011"


def _side(instrument: Instrument) -> dict[str, object]:
    bid_qty, ask_qty = instrument.pattern.quantities[0]
    delta, theta, gamma, vega, _rho = instrument.greeks
    return {
        "instrument_key": instrument.key,
        "market_data": {
            "ltp": instrument.ltp,
            "close_price": instrument.close,
            "volume": instrument.vtt,
            "oi": instrument.oi,
            "bid_price": instrument.bid_units / 10_000,
            "bid_qty": bid_qty,
            "ask_price": instrument.ask_units / 10_000,
            "ask_qty": ask_qty,
            "prev_oi": instrument.oi_open,
        },
        "option_greeks": {"vega": vega, "theta": theta, "gamma": gamma, "delta": delta,
                          "iv": instrument.iv},
    }  # fmt: skip


def _expiry_date(record: Mapping[str, object]) -> str:
    expiry = record.get("expiry")
    if not isinstance(expiry, int | float):
        return ""
    return datetime.fromtimestamp(expiry / 1000, IST).date().isoformat()


class ChainEndpoint:
    """The option-chain path of the simulator's REST side."""

    def __init__(self, following: Following, gate: Gate, clock: Callable[[], int]) -> None:
        self._following = following
        self._gate = gate
        self._clock = clock

    def answer(self, request: Request, query: Mapping[str, list[str]]) -> Response:
        if not self._gate.token_accepted(request):
            return error_response(401, INVALID_TOKEN)
        underlying = query.get("instrument_key", [""])[0]
        expiry = query.get("expiry_date", [""])[0]
        for name, value in (("instrument_key", underlying), ("expiry_date", expiry)):
            if not value:
                message = f"{name} is required"
                return error_response(400, {"errorCode": BAD_REQUEST, "message": message})
        now_ms = self._clock()
        strikes: dict[float, dict[str, Instrument]] = {}
        for record in self._following.universe.listing(now_ms):
            kind = record.get("instrument_type")
            if (
                kind in ("CE", "PE")
                and record.get("underlying_key") == underlying
                and _expiry_date(record) == expiry
            ):
                instrument = self._following.know(str(record["instrument_key"]), now_ms)
                strikes.setdefault(instrument.strike, {})[str(kind)] = instrument
        spot = self._following.know(underlying, now_ms).ltp if strikes else 0.0
        data = []
        for strike, sides in sorted(strikes.items()):
            call, put = sides.get("CE"), sides.get("PE")
            row: dict[str, object] = {
                "expiry": expiry,
                "pcr": round(put.oi / call.oi, 4) if call and put and call.oi else 0.0,
                "strike_price": strike,
                "underlying_key": underlying,
                "underlying_spot_price": spot,
            }
            if call is not None:
                row["call_options"] = _side(call)
            if put is not None:
                row["put_options"] = _side(put)
            data.append(row)
        return json_response(200, {"status": "success", "data": data})
