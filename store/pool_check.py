"""The pools' check of a connection before it is handed out, without a round trip while
it is healthy.

psycopg_pool's `ConnectionPool.check_connection` sends an empty query every time a pool
hands a connection out: one round trip per write batch of the ingest and per database read
of the API, paid by both processes (2.8% of the ingest's samples at 20,000 ticks/s, issue
21). An idle session's server sends nothing unasked, save when the session ends: a backend
that is terminated or shut down sends its FATAL message and closes, one that is killed
leaves the kernel to close its socket. Either way the socket has something to read. So a
connection whose socket is silent is handed out as it is, and only one with something
waiting gets the library's full check, which raises for a dead session and reads whatever
else (a notice, a changed parameter) a live one was sent.

What neither check finds is a server gone without a word (a host powered off, a cable cut):
the empty query would wait for TCP to give up too, and the caller's own statement meets the
same error the check would have raised, which every caller already handles.
"""

from __future__ import annotations

import select
from typing import Any

from psycopg import Connection
from psycopg_pool import ConnectionPool


def check_quietly(conn: Connection[Any]) -> None:
    """Raise if `conn` is not usable; a round trip only when its socket is not silent.

    `poll`, not `select`: a process serving many sockets (the push stream's clients) can
    hold descriptors past select's limit of 1024."""
    probe = select.poll()
    probe.register(conn.fileno(), select.POLLIN)
    if probe.poll(0):
        ConnectionPool.check_connection(conn)
