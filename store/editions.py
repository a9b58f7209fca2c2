"""Which TimescaleDB edition a server runs, decided once from its license setting.

Community (`timescale`) has continuous aggregates, compression and policies; the Apache-2
edition (`apache`: Debian's build, Azure) has none of them and raises SQLSTATE 0A000 when
they are used. We ask the server instead of discovering it by catching errors.
"""

from __future__ import annotations

from enum import Enum

import psycopg


class Edition(Enum):
    COMMUNITY = "timescale"
    APACHE = "apache"


def server_edition(conn: psycopg.Connection) -> Edition:
    """The edition of the timescaledb loaded in this database.

    The license setting exists only once the extension is loaded (created in the database),
    so this is asked after the first migration, never before.
    """
    row = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
    license_ = row[0] if row else None
    if license_ is None:
        raise RuntimeError(
            "timescaledb is not loaded in this database: run `tickvault db migrate` first"
        )
    return Edition.COMMUNITY if license_ == "timescale" else Edition.APACHE
