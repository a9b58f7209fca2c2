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

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True, slots=True)
class TickColumn:
    """One field of a tick, the one place it is written: the `ticks` table's column and COPY
    type (binary COPY applies no casts, so the type is what is sent), whether it is ever
    NULL, and its name in the Phase 2 guide's `TickData` where that differs. The writer's COPY
    columns, the archive's Parquet schema, `TickData` and the API's tick model derive from it.
    """

    name: str
    pg_type: str  # text, timestamptz, float8 or int8
    required: bool = False  # never NULL
    guide_name: str | None = None

    @property
    def python_type(self) -> type | object:
        """What a reader gets for it: a datetime for a time, None where it may be NULL."""
        base = _PYTHON_TYPES[self.pg_type]
        return base if self.required else base | None


_PYTHON_TYPES: dict[str, type] = {
    "text": str,
    "timestamptz": datetime,
    "float8": float,
    "int8": int,
}

# In the `ticks` table's COPY order.
TICK_FIELDS: tuple[TickColumn, ...] = (
    TickColumn("instrument_key", "text", required=True),
    TickColumn("ts", "timestamptz", required=True, guide_name="timestamp"),
    TickColumn("ltp", "float8", required=True, guide_name="last_price"),
    TickColumn("ltq", "int8", guide_name="last_quantity"),
    TickColumn("vtt", "int8", guide_name="volume"),  # the day's volume so far
    TickColumn("volume_delta", "int8"),  # the part of vtt this tick added
    TickColumn("cp", "float8", guide_name="close_price"),
    TickColumn("atp", "float8", guide_name="average_price"),
    TickColumn("oi", "float8"),
    TickColumn("iv", "float8"),
    TickColumn("tbq", "float8", guide_name="total_buy_quantity"),
    TickColumn("tsq", "float8", guide_name="total_sell_quantity"),
    TickColumn("bid_price", "float8"),
    TickColumn("bid_qty", "int8"),
    TickColumn("ask_price", "float8"),
    TickColumn("ask_qty", "int8"),
    TickColumn("delta", "float8"),
    TickColumn("theta", "float8"),
    TickColumn("gamma", "float8"),
    TickColumn("vega", "float8"),
    TickColumn("rho", "float8"),
    TickColumn("feed_ts", "timestamptz"),
    TickColumn("received_at", "timestamptz", required=True),
)
TICK_COLUMN_TYPES: dict[str, str] = {column.name: column.pg_type for column in TICK_FIELDS}
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
