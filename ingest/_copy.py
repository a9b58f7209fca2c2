"""Binary COPY of tick tuples, with their integer epoch-microsecond times as timestamptz.

psycopg picks a COPY dumper by PostgreSQL type once `set_types` is called, and its stock
timestamptz dumper wants a datetime. Registering ours for the type alone (`cls=None`, the
documented hook for COPY) lets tick tuples go to the wire as they are, without building a
datetime per time column per tick.
"""

from __future__ import annotations

import struct

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

from ingest.tick import TICK_COLUMNS, TICK_PG_TYPES

_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix epoch microseconds
_INT8 = struct.Struct(">q")

COPY_TICKS = f"COPY ticks ({', '.join(TICK_COLUMNS)}) FROM STDIN (FORMAT BINARY)"


class EpochMicrosTimestamptzDumper(Dumper):
    """Unix epoch microseconds (int) -> binary timestamptz (microseconds since 2000)."""

    format = Format.BINARY

    def dump(self, obj: int) -> bytes:
        return _INT8.pack(obj - _PG_EPOCH_US)


def configure_copy_connection(conn: psycopg.Connection) -> None:
    """psycopg_pool `configure` hook for the writer's connections."""
    conn.adapters.register_dumper(None, _bound_dumper(conn))


def _bound_dumper(conn: psycopg.Connection) -> type[Dumper]:
    oid = conn.adapters.types["timestamptz"].oid

    class _Dumper(EpochMicrosTimestamptzDumper):
        pass

    _Dumper.oid = oid
    return _Dumper


def copy_ticks(cursor: psycopg.Cursor, rows: list[tuple]) -> None:
    """Write `rows` (tick tuples) into `ticks` in the cursor's transaction."""
    with cursor.copy(COPY_TICKS) as copy:
        copy.set_types(list(TICK_PG_TYPES))
        write_row = copy.write_row
        for row in rows:
            write_row(row)
