"""The shape of one tick as it flows from the decoder to every handler.

A tick is a plain tuple, not an object: the hot path has a few microseconds per tick and a
tuple is the one allocation it can afford. The column order is the `ticks` table's COPY
order, so the writer hands tuples to `copy.write_row` untouched. Times are integer epoch
microseconds (UTC) for the same reason: no datetime is built per tick; readers that want
one call `to_datetime`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

TICK_COLUMNS: tuple[str, ...] = (
    "instrument_key",
    "ts",
    "ltp",
    "ltq",
    "vtt",
    "volume_delta",
    "cp",
    "atp",
    "oi",
    "iv",
    "tbq",
    "tsq",
    "bid_price",
    "bid_qty",
    "ask_price",
    "ask_qty",
    "delta",
    "theta",
    "gamma",
    "vega",
    "rho",
    "feed_ts",
    "received_at",
)

# PostgreSQL type of each column, in TICK_COLUMNS order (binary COPY applies no casts).
TICK_PG_TYPES: tuple[str, ...] = (
    "text",
    "timestamptz",
    "float8",
    "int8",
    "int8",
    "int8",
    "float8",
    "float8",
    "float8",
    "float8",
    "float8",
    "float8",
    "float8",
    "int8",
    "float8",
    "int8",
    "float8",
    "float8",
    "float8",
    "float8",
    "float8",
    "timestamptz",
    "timestamptz",
)

Tick = tuple  # a row in TICK_COLUMNS order

KEY, TS, LTP, LTQ, VTT, VOLUME_DELTA = 0, 1, 2, 3, 4, 5
FEED_TS, RECEIVED_AT = 21, 22
TIME_COLUMNS = frozenset({TS, FEED_TS, RECEIVED_AT})

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_datetime(epoch_us: int) -> datetime:
    """An aware UTC datetime from integer epoch microseconds (exact, no float rounding)."""
    return _EPOCH + timedelta(microseconds=epoch_us)


def to_epoch_us(moment: datetime) -> int:
    """Integer epoch microseconds from an aware datetime."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def as_dict(tick: Tick) -> dict[str, object]:
    """A tick as a mapping with aware datetimes: for readers, never the hot path."""
    return {
        name: to_datetime(value) if index in TIME_COLUMNS and value is not None else value
        for index, (name, value) in enumerate(zip(TICK_COLUMNS, tick, strict=True))
    }
