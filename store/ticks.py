"""Binary COPY of tick tuples into `ticks`.

`set_types` picks psycopg's C dumper for every column, so no Python code runs per value.
The time columns are declared int8 here: a tick time is already the integer a binary
timestamptz is on the wire (microseconds since 2000-01-01 UTC; see store.tick), and binary
COPY carries no type tags, so the server reads those 8 bytes as the timestamptz its column is.
"""

from __future__ import annotations

import psycopg

from store.tick import TICK_COLUMNS, TICK_PG_TYPES

COPY_TICKS = f"COPY ticks ({', '.join(TICK_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_WIRE_TYPES = ["int8" if pg_type == "timestamptz" else pg_type for pg_type in TICK_PG_TYPES]


def copy_ticks(cursor: psycopg.Cursor, rows: list[tuple]) -> None:
    """Write `rows` (tick tuples) into `ticks` in the cursor's transaction."""
    with cursor.copy(COPY_TICKS) as copy:
        copy.set_types(_WIRE_TYPES)
        write_row = copy.write_row
        for row in rows:
            write_row(row)
