"""Request and response bodies: what OpenAPI documents and responses are checked against.

The status body is not here: it is `ingest.status.IngestStatus`, defined once beside the
service that fills it.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, create_model

from api.params import Symbol
from core.upstox_wire import Mode
from store.bars import BarInterval
from store.tick_row import TICK_FIELDS


class HealthOut(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]
    # A `tickvault ingest` that publishes on this data directory: never one in the API.
    ingest: Literal["running in another process"]


class UnavailableOut(BaseModel):
    status: Literal["unavailable"]
    reason: str


class SubscriptionOut(BaseModel):
    symbol: str
    instrument_key: str
    mode: str
    status: Literal["pending", "subscribed", "failed", "unsubscribed"]
    error: str | None


class SubscribeIn(BaseModel):
    symbols: list[Symbol] = Field(min_length=1, max_length=1000, examples=[["INFY", "TCS"]])
    mode: Mode = "full"


class SubscribedOut(BaseModel):
    symbol: str
    instrument_key: str


class SubscribeOut(BaseModel):
    mode: Mode
    subscribed: list[SubscribedOut]


class UnsubscribeOut(BaseModel):
    symbol: str
    instrument_key: str
    status: Literal["unsubscribed"]


# One row of `ticks`, its fields from store.tick_row.TICK_FIELDS; times are ISO 8601 UTC.
TickOut = create_model(
    "TickOut",
    __doc__="One row of `ticks`; times are ISO 8601 UTC.",
    **{column.name: (column.python_type, ...) for column in TICK_FIELDS},
)


class LatestTickOut(TickOut):
    symbol: str


class LatestTicksOut(BaseModel):
    source: Literal["cache"]
    ticks: list[LatestTickOut]
    missing: list[str] = Field(description="Requested symbols that have no tick yet")


class TicksPage(BaseModel):
    symbol: str
    instrument_key: str
    ticks: list[TickOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next, older page")


class BarOut(BaseModel):
    bucket: datetime
    open: float
    high: float
    low: float
    close: float
    volume: int | None
    tick_count: int


class BarsOut(BaseModel):
    symbol: str
    instrument_key: str
    interval: BarInterval
    bars: list[BarOut]


class SignalOut(BaseModel):
    ts: datetime = Field(description="The time of the tick that caused it")
    symbol: str
    instrument_key: str
    name: str
    value: float
    side: str | None
    fields: dict[str, Any]
    handler: str = Field(description="The custom handler that emitted it")


class SignalsOut(BaseModel):
    symbol: str | None
    instrument_key: str | None
    signals: list[SignalOut]


class InstrumentOut(BaseModel):
    instrument_key: str
    trading_symbol: str
    name: str | None
    segment: str
    exchange: str | None
    instrument_type: str
    expiry: datetime | None
    strike_price: float | None
    lot_size: int | None
    tick_size: float | None
    underlying_symbol: str | None
    active: bool = Field(
        description="false: expired or gone from Upstox's master, kept for its history"
    )


class OptionSideOut(BaseModel):
    """A contract's last tick at or before the moment; every value null while it has none
    that day."""

    model_config = ConfigDict(from_attributes=True)

    instrument_key: str
    ts: datetime | None = Field(description="The time of the tick the values come from")
    ltp: float | None
    bid_price: float | None
    bid_qty: int | None
    ask_price: float | None
    ask_qty: int | None
    volume: int | None = Field(description="The day's volume so far (the tick's vtt)")
    oi: float | None
    oi_change: float | None = Field(
        description="OI now minus the contract's first OI of the IST day"
    )
    iv: float | None
    delta: float | None
    theta: float | None
    gamma: float | None
    vega: float | None
    rho: float | None


class OptionStrikeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    strike: float
    call: OptionSideOut | None
    put: OptionSideOut | None


class OptionChainOut(BaseModel):
    underlying: str
    underlying_key: str
    expiry: date = Field(description="The expiry's IST date")
    at: datetime | None = Field(description="The moment asked; null: the latest ticks")
    underlying_price: float | None = Field(description="The underlying's last price by then")
    atm_strike: float | None = Field(description="The strike nearest the underlying's price")
    pcr: float | None = Field(description="Put/call ratio by OI: total put OI / total call OI")
    max_pain: float | None = Field(
        description="The strike at which the OI-weighted payout to option holders is least"
    )
    strikes: list[OptionStrikeOut]

    model_config = ConfigDict(from_attributes=True)  # read from store.option_chain's result

    @computed_field(  # type: ignore[prop-decorator]
        description="ticks: stored ticks as of `at`; cache: the latest ticks the ingest publishes"
    )
    @property
    def source(self) -> Literal["ticks", "cache"]:
        return "cache" if self.at is None else "ticks"


class ExpiriesOut(BaseModel):
    underlying: str
    underlying_key: str
    expiries: list[date] = Field(description="IST dates, expired ones included (kept for history)")
