"""The API's read-only connection pool.

Every connection carries a server-side statement timeout, so no request, however it is
phrased, can hold a backend longer than that; sessions are read-only and in UTC, so
timestamps come back as UTC datetimes whatever the server's TimeZone is.
"""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

STATEMENT_TIMEOUT_MS = 5000
CONNECTION_WAIT_S = 3.0  # how long a request waits for a pooled connection before a 503
_SESSION_OPTIONS = (
    f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c TimeZone=UTC"
    " -c default_transaction_read_only=on"
)


def session_conninfo(database_url: str, application_name: str = "tickvault-api") -> str:
    """`database_url` with the API's session settings added to whatever options it has."""
    params = conninfo_to_dict(database_url)
    params["options"] = f"{params.get('options') or ''} {_SESSION_OPTIONS}".strip()
    params.setdefault("connect_timeout", 5)
    params.setdefault("application_name", application_name)
    return make_conninfo(**params)


def read_pool(database_url: str, max_size: int = 8) -> ConnectionPool:
    """A closed pool for `database_url`; open it with `open(wait=False)`.

    Opening without waiting lets the API start while the database is down: /health then
    says 503 instead of the process failing to start.
    """
    return ConnectionPool(
        session_conninfo(database_url),
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=CONNECTION_WAIT_S,
        kwargs={"autocommit": True},
        check=ConnectionPool.check_connection,
        name="tickvault-api",
    )
