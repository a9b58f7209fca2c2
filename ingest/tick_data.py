"""TickData: one tick as your own handler sees it, typed and immutable.

Built only for custom handlers and the latest-tick accessors, never on the hot path: the
pipeline, the writer and the cache pass plain tuples (store.tick_row), and a TickData is made from
one when a handler or a caller asks.
"""

from __future__ import annotations

from dataclasses import make_dataclass
from typing import Any

from store.tick_row import TICK_FIELDS, Tick, as_dict

# Our column names under the names the Phase 2 guide uses, where they differ.
_GUIDE_NAMES = {column.name: column.guide_name or column.name for column in TICK_FIELDS}


def _from_tick(cls: type, tick: Tick, symbol: str) -> Any:
    return cls(
        symbol=symbol, **{_GUIDE_NAMES[name]: value for name, value in as_dict(tick).items()}
    )


def _price(self: Any) -> float:
    """The guide's other name for `last_price`."""
    return self.last_price


def _as_dict(self: Any) -> dict[str, Any]:
    """Every field, and `price` beside `last_price`: the keys the guide's users read from
    `get_latest_tick()`."""
    fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
    return {"price": self.last_price, **fields}


# A frozen dataclass of the symbol and every field of store.tick_row.TICK_FIELDS, under the guide's
# names: `last_price`, `last_quantity`, `volume` (the day's traded volume so far, Upstox's
# vtt), `timestamp`, `close_price`, `average_price`, `total_buy_quantity`,
# `total_sell_quantity`, and the table's own for the rest (`volume_delta` the part of volume
# this tick added). Prices are rupees; times are aware UTC datetimes.
TickData = make_dataclass(
    "TickData",
    [("symbol", str)] + [(_GUIDE_NAMES[column.name], column.python_type) for column in TICK_FIELDS],
    frozen=True,
    slots=True,
    namespace={
        "__doc__": "What the feed said of one instrument at one moment.",
        "from_tick": classmethod(_from_tick),
        "price": property(_price),
        "as_dict": _as_dict,
    },
)
TickData.__module__ = __name__  # where `TickData` is imported from, not dataclasses
