"""The shape of one tick as it flows from the decoder to every handler.

A tick is a plain tuple, not an object: the hot path has a few microseconds per tick and a
tuple is the one allocation it can afford. The column order is the `ticks` table's COPY
order, so the writer hands tuples to `copy.write_row` untouched.

Times are integers for the same reason: microseconds since 2000-01-01 UTC, PostgreSQL's
own epoch. That is what a binary timestamptz is on the wire, an 8-byte integer, so psycopg's
C dumper for int8 sends a tick's times as they are; a Python dumper converting from the Unix
epoch cost half of the writer's client time. No datetime is built per tick either; readers
that want one call `to_datetime`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

# Each column, in the `ticks` table's COPY order, with its PostgreSQL type (binary COPY
# applies no casts, so the type is what is sent).
TICK_COLUMN_TYPES: dict[str, str] = {
    "instrument_key": "text",
    "ts": "timestamptz",
    "ltp": "float8",
    "ltq": "int8",
    "vtt": "int8",
    "volume_delta": "int8",
    "cp": "float8",
    "atp": "float8",
    "oi": "float8",
    "iv": "float8",
    "tbq": "float8",
    "tsq": "float8",
    "bid_price": "float8",
    "bid_qty": "int8",
    "ask_price": "float8",
    "ask_qty": "int8",
    "delta": "float8",
    "theta": "float8",
    "gamma": "float8",
    "vega": "float8",
    "rho": "float8",
    "feed_ts": "timestamptz",
    "received_at": "timestamptz",
}
TICK_COLUMNS: tuple[str, ...] = tuple(TICK_COLUMN_TYPES)
TICK_PG_TYPES: tuple[str, ...] = tuple(TICK_COLUMN_TYPES.values())

Tick = tuple  # a row in TICK_COLUMNS order

KEY, TS, LTP, LTQ, VTT, VOLUME_DELTA = 0, 1, 2, 3, 4, 5
FEED_TS, RECEIVED_AT = 21, 22
TIME_COLUMNS = frozenset({TS, FEED_TS, RECEIVED_AT})

PG_EPOCH_UNIX_US = 946_684_800_000_000  # 2000-01-01T00:00Z in Unix-epoch microseconds
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def to_datetime(tick_time: int) -> datetime:
    """An aware UTC datetime from a tick time (exact, no float rounding)."""
    return _PG_EPOCH + timedelta(microseconds=tick_time)


def from_datetime(moment: datetime) -> int:
    """The tick time of an aware datetime."""
    return (moment - _PG_EPOCH) // timedelta(microseconds=1)


def to_unix_seconds(tick_time: int) -> float:
    """Unix-epoch seconds of a tick time, to compare with `time.time()`."""
    return (tick_time + PG_EPOCH_UNIX_US) / 1e6


def as_dict(tick: Tick) -> dict[str, object]:
    """A tick as a mapping with aware datetimes: for readers, never the hot path."""
    return {
        name: to_datetime(value) if index in TIME_COLUMNS and value is not None else value
        for index, (name, value) in enumerate(zip(TICK_COLUMNS, tick, strict=True))
    }
