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
    (license_,) = conn.execute("SHOW timescaledb.license").fetchone() or ("apache",)
    return Edition.COMMUNITY if license_ == "timescale" else Edition.APACHE
