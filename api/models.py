"""Request and response bodies: what OpenAPI documents and responses are checked against."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.params import Symbol
from ingest.upstox.wire import Mode
from store.bars import Interval


class HealthOut(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]
    ingest: Literal["running", "not run by this process"]


class UnavailableOut(BaseModel):
    status: Literal["unavailable"]
    reason: str


# Status sections name the fields operators rely on and keep whatever else the service reports.
class _Section(BaseModel):
    model_config = ConfigDict(extra="allow")


class FeedStatus(_Section):
    source: str
    state: str | None = None
    reconnects: int | None = None
    malformed_frames: int | None = None
    last_error: str | None = None


class SubscriptionSummary(_Section):
    total_symbols: int
    subscribed_count: int
    failed_count: int
    subscription_rate: str = Field(examples=["100.00%"])


class WriterStatus(_Section):
    rows_written: int
    queue_depth: int
    oldest_unwritten_tick_age_s: float


class JournalStatus(_Section):
    backlog_frames: int
    bytes_on_disk: int


class StatusOut(BaseModel):
    is_running: bool
    websocket_connected: bool
    feed: FeedStatus
    subscriptions: SubscriptionSummary | None
    writer: WriterStatus | None
    journal: JournalStatus | None
    pipeline: dict[str, Any]
    cache: dict[str, Any]
    bars: dict[str, Any]


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


class TickOut(BaseModel):
    """One row of `ticks`; times are ISO 8601 UTC."""

    instrument_key: str
    ts: datetime
    ltp: float
    ltq: int | None
    vtt: int | None
    volume_delta: int | None
    cp: float | None
    atp: float | None
    oi: float | None
    iv: float | None
    tbq: float | None
    tsq: float | None
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


class LatestTickOut(TickOut):
    symbol: str


class LatestTicksOut(BaseModel):
    source: Literal["cache", "database"]
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
    interval: Interval
    bars: list[BarOut]


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
