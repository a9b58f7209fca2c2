"""The API's read-only connection pool.

Every connection carries a server-side statement timeout, so no request, however it is
phrased, can hold a backend longer than that; sessions are read-only and in UTC, so
timestamps come back as UTC datetimes whatever the server's TimeZone is.

JIT compilation is off: the planner's estimates for the API's CTE-heavy reads (coverage)
ran into millions of rows, which bought 0.9-2 s of LLVM compilation for queries that run in
milliseconds; no API read is long enough for JIT to pay for itself.

A statement that loses a deadlock (SQLSTATE 40P01) or a serialization failure (40001) is
sent once more before the error reaches the caller: retention's drop_chunks locks a
hypertable's chunks in its own order, and a reader planning across the same chunks at that
moment is the victim, though nothing is wrong with either.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import Row
from psycopg_pool import ConnectionPool

from store.pool_check import check_quietly

log = logging.getLogger(__name__)

STATEMENT_TIMEOUT_MS = 5000
CONNECTION_WAIT_S = 3.0  # how long a request waits for a pooled connection before a 503
_SESSION_OPTIONS = (
    f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c TimeZone=UTC"
    " -c default_transaction_read_only=on -c jit=off"
)
# What another transaction's timing causes, not the statement: the same statement succeeds
# once the other has finished.
RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


def session_conninfo(database_url: str, application_name: str = "tickvault-api") -> str:
    """`database_url` with the API's session settings added to whatever options it has."""
    params = conninfo_to_dict(database_url)
    params["options"] = f"{params.get('options') or ''} {_SESSION_OPTIONS}".strip()
    params.setdefault("connect_timeout", 5)
    params.setdefault("application_name", application_name)
    return make_conninfo(**params)


class RetryingCursor(psycopg.Cursor[Row]):
    """Sends a statement a second time after a deadlock or a serialization failure.

    Only outside a transaction block: the pool's connections are autocommit, so the failed
    statement was its own transaction and is rolled back whole; inside a block the
    transaction is aborted and the error is the caller's. Once only: a second failure is
    answered as any other (503).
    """

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> RetryingCursor[Row]:
        try:
            return super().execute(query, params, **kwargs)
        except RETRYABLE as error:
            if self.connection.info.transaction_status != TransactionStatus.IDLE:
                raise
            log.info("retrying a read once after %s: %s", type(error).__name__, error)
            return super().execute(query, params, **kwargs)


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
        kwargs={"autocommit": True, "cursor_factory": RetryingCursor},
        check=check_quietly,
        name="tickvault-api",
    )
