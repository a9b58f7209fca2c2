"""The pools' quiet check (store/pool_check.py) on a real server: a healthy connection is
handed out without a statement, a session the server has ended is never handed out, and one
the server has only spoken to is checked and handed out working."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from store.pool_check import check_quietly


def _pool(db_url: str, check: Callable[[psycopg.Connection[Any]], None] | None) -> ConnectionPool:
    return ConnectionPool(db_url, min_size=1, max_size=1, open=True, check=check)


def _last_statement(db_url: str, pid: int) -> str:
    with psycopg.connect(db_url) as admin:
        row = admin.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    assert row is not None, f"backend {pid} is gone"
    return row[0]


def _terminate(db_url: str, pid: int) -> None:
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])


def _backend_pid(pool: ConnectionPool) -> int:
    with pool.connection() as conn:
        return conn.info.backend_pid


@pytest.mark.parametrize(
    ("check", "statements_seen"),
    [(check_quietly, "COMMIT"), (ConnectionPool.check_connection, "")],
)
def test_a_healthy_connection_is_handed_out_without_a_statement(
    db_url: str, check: Callable[[psycopg.Connection[Any]], None], statements_seen: str
) -> None:
    """The library's check leaves its empty query as the session's last statement (the
    round trip this check saves); the quiet one leaves the pool's COMMIT of the work
    before."""
    with _pool(db_url, check) as pool:
        with pool.connection() as conn:
            conn.execute("SELECT 'the last work'")
            pid = conn.info.backend_pid
        with pool.connection() as conn:
            assert conn.info.backend_pid == pid
            assert _last_statement(db_url, pid) == statements_seen


def test_a_session_the_server_ended_is_replaced_before_it_is_handed_out(db_url: str) -> None:
    with _pool(db_url, check_quietly) as pool:
        ended = _backend_pid(pool)
        _terminate(db_url, ended)
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.info.backend_pid != ended


def test_without_a_check_the_ended_session_reaches_the_caller(db_url: str) -> None:
    """What the check is for: the same ended session, handed out unchecked, fails the
    caller's first statement."""
    with _pool(db_url, None) as pool:
        _terminate(db_url, _backend_pid(pool))  # returns once the backend has exited
        with pytest.raises(psycopg.OperationalError), pool.connection() as conn:
            conn.execute("SELECT 1")


def test_a_session_the_server_spoke_to_is_checked_and_handed_out_working(db_url: str) -> None:
    """A notification to an idle session makes its socket readable: the full check runs,
    reads it, and the same session is handed out."""
    with _pool(db_url, check_quietly) as pool:
        with pool.connection() as conn:
            conn.autocommit = True
            conn.execute("LISTEN tickvault_pool_check")
            conn.autocommit = False
            pid = conn.info.backend_pid
        with psycopg.connect(db_url, autocommit=True) as other:
            other.execute("NOTIFY tickvault_pool_check, 'hello'")
        time.sleep(0.2)
        with pool.connection() as conn:
            assert conn.info.backend_pid == pid
            assert _last_statement(db_url, pid) == ""  # the full check ran
            assert conn.execute("SELECT 2").fetchone() == (2,)


@contextmanager
def _descriptors_past(number: int) -> Iterator[None]:
    """Hold open files until the next descriptor is past `number`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = number + 100
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard limit of open files ({hard}) is below {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(number)]
    try:
        yield
    finally:
        for descriptor in held:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_connection_past_selects_descriptor_limit_is_checked(db_url: str) -> None:
    """A process with many sockets (the push stream's clients) has descriptors past 1024,
    where `select` refuses to look: the check must still hand the connection out."""
    with _descriptors_past(1024), _pool(db_url, check_quietly) as pool:
        pid = _backend_pid(pool)
        with pool.connection() as conn:
            assert conn.fileno() > 1024
            assert conn.info.backend_pid == pid
