"""TickData: one tick as your own handler sees it, typed and immutable.

Built only for custom handlers and the latest-tick accessors, never on the hot path: the
pipeline, the writer and the cache pass plain tuples (store.tick), and a TickData is made from
one when a handler or a caller asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from store.tick import Tick, as_dict

# Our column names under the names the Phase 2 guide uses.
_GUIDE_NAMES = {"ltp": "last_price", "ltq": "last_quantity", "vtt": "volume", "ts": "timestamp"}


@dataclass(frozen=True, slots=True)
class TickData:
    """What the feed said of one instrument at one moment.

    `volume` is the day's traded volume so far (Upstox's `vtt`); `volume_delta` the part of
    it this tick added. Prices are rupees; times are aware UTC datetimes.
    """

    symbol: str
    instrument_key: str
    last_price: float
    last_quantity: int | None
    volume: int | None
    timestamp: datetime
    volume_delta: int | None
    close_price: float | None
    average_price: float | None
    oi: float | None
    iv: float | None
    total_buy_quantity: float | None
    total_sell_quantity: float | None
    bid_price: float | None
    bid_qty: int | None
    ask_price: float | None
    ask_qty: int | None
    delta: float | None
    theta: float | None
    gamma: float | None
    vega: float | None
    rho: float | None
    feed_ts: datetime | None
    received_at: datetime

    @classmethod
    def from_tick(cls, tick: Tick, symbol: str) -> TickData:
        row = as_dict(tick)
        renamed = {_GUIDE_NAMES.get(name, name): value for name, value in row.items()}
        renamed["close_price"] = renamed.pop("cp")
        renamed["average_price"] = renamed.pop("atp")
        renamed["total_buy_quantity"] = renamed.pop("tbq")
        renamed["total_sell_quantity"] = renamed.pop("tsq")
        return cls(symbol=symbol, **renamed)

    @property
    def price(self) -> float:
        """The guide's other name for `last_price`."""
        return self.last_price

    def as_dict(self) -> dict[str, Any]:
        """Every field, and `price` beside `last_price`: the keys the guide's users read from
        `get_latest_tick()`."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return {"price": self.last_price, **fields}
