"""Issue 20, items 6 and 7 (reader side): no anonymous route can take the database from
everyone else, and a reader that loses a deadlock to retention tries once more. Real
uvicorn, real TimescaleDB, real locks, as in test_api.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from api import create_app
from api.budget import EXPENSIVE, ROUTE_CLASSES, route_class
from api.db import read_pool
from core.config import Settings
from store.bars import refresh_bars
from tests.conftest import DbServer
from tests.test_api import BASE, INFY, client, infy_ticks, sample_database, serve, wait_for
from tests.test_api_process import stand_in_ingest

WINDOW = {"start": BASE.isoformat(), "end": (BASE + timedelta(hours=1)).isoformat()}


@pytest.fixture(scope="module")
def infy_url(apache_server: DbServer) -> Iterator[str]:
    """The sample master, INFY's ticks of test_api.py and their 1-minute bars."""
    with sample_database(apache_server) as url:
        with psycopg.connect(url) as conn:
            conn.cursor().executemany(
                "INSERT INTO ticks (instrument_key, ts, ltp, volume_delta, received_at)"
                " VALUES (%s, %s, %s, 1, %s)",
                [(INFY, ts, ltp, received) for ts, received, ltp in infy_ticks()],
            )
        with psycopg.connect(url, autocommit=True) as conn:
            refresh_bars(conn, BASE, BASE + timedelta(hours=1))
        yield url


@pytest.fixture
def api(infy_url: str, tmp_path: Path) -> Iterator[str]:
    """A fresh API (empty budgets) without its own ingest, beside a healthy stand-in one."""
    app = create_app(Settings(data_dir=tmp_path), infy_url)
    with stand_in_ingest(tmp_path), serve(app) as base:
        yield base


def test_read_sessions_never_compile_with_jit(infy_url: str) -> None:
    with read_pool(infy_url) as pool, pool.connection() as conn:
        assert conn.execute("SHOW jit").fetchone() == ("off",)


def test_a_flood_of_an_expensive_route_is_answered_429_while_health_and_bars_answer(
    api: str, infy_url: str
) -> None:
    """Coverage requests held by a lock fill the expensive class's places and its queue;
    the rest are refused at once, and the database never sees more than the limit."""
    flood = EXPENSIVE.limit + EXPENSIVE.queue + 6
    with (
        psycopg.connect(infy_url) as locker,
        psycopg.connect(infy_url, autocommit=True) as watcher,
        client(api) as http,
        ThreadPoolExecutor(flood) as pool,
    ):
        # subscriptions: coverage reads it, bars do not (they read coverage_spans: sql/018).
        locker.execute("LOCK TABLE subscriptions IN ACCESS EXCLUSIVE MODE")

        def coverage(_: int) -> httpx.Response:
            with client(api) as own:
                return own.get("/api/v1/coverage", params={"date": "2026-01-05"})

        answers = [pool.submit(coverage, i) for i in range(flood)]
        wait_for(lambda: lock_waiters(watcher) == EXPENSIVE.limit, 10)
        # Every request past the limit is answered while the first ones are still held...
        wait_for(lambda: sum(answer.done() for answer in answers) == flood - EXPENSIVE.limit)
        health = http.get("/health")
        bars = http.get("/api/v1/bars/INFY", params=WINDOW)
        seen = lock_waiters(watcher)
        locker.rollback()
        # ...and the held ones finish once the lock is gone.
        responses = [answer.result() for answer in answers]
    assert Counter(response.status_code for response in responses) == {
        200: EXPENSIVE.limit,
        429: flood - EXPENSIVE.limit,
    }
    for response in responses[EXPENSIVE.limit :]:
        if response.status_code == 429:
            assert response.headers["Retry-After"] == "1"
            assert response.json()["detail"].startswith("too many expensive requests at once")
    assert seen == EXPENSIVE.limit  # the database never saw more of them at once
    assert health.status_code == 200, health.text
    assert bars.status_code == 200, bars.text
    assert len(bars.json()["bars"]) == 3  # INFY's 250 ticks span three minutes


def lock_waiters(watcher: psycopg.Connection) -> int:
    """API backends of this database waiting for a lock."""
    row = watcher.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'tickvault-api' AND wait_event_type = 'Lock'"
    ).fetchone()
    assert row is not None
    return row[0]


def test_a_reader_that_loses_a_deadlock_tries_once_more(api: str, infy_url: str) -> None:
    """What drop_chunks did to readers during a soak: it locks a chunk, then the hypertable,
    while a reader holds the hypertable and waits for the chunk. The reader is the victim
    (its deadlock_timeout fires first) and answered 503; now it sends its query again."""
    with (
        psycopg.connect(infy_url) as retention,
        psycopg.connect(infy_url, autocommit=True) as watcher,
        client(api) as http,
        ThreadPoolExecutor(1) as pool,
    ):
        deadlocks = _deadlocks(watcher)
        [chunk] = retention.execute("SELECT show_chunks('ticks')").fetchone() or [None]
        retention.execute("SET deadlock_timeout = '60s'")  # the reader detects it, not we
        retention.execute(f"LOCK TABLE {chunk} IN ACCESS EXCLUSIVE MODE")
        page = pool.submit(http.get, "/api/v1/ticks/INFY", params={**WINDOW, "limit": 5})
        wait_for(lambda: lock_waiters(watcher) == 1, 10)
        # Returns once the reader has lost the deadlock and let go of the hypertable.
        retention.execute("LOCK TABLE ticks IN ACCESS EXCLUSIVE MODE")
        wait_for(lambda: _deadlocks(watcher) > deadlocks, 10)
        retention.rollback()
        response = page.result()
    assert response.status_code == 200, response.text
    assert len(response.json()["ticks"]) == 5


def _deadlocks(watcher: psycopg.Connection) -> int:
    watcher.execute("SELECT pg_stat_clear_snapshot()")
    row = watcher.execute(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()
    assert row is not None
    return row[0]


# Routes that read no database, or only behind the API key.
OUTSIDE_THE_BUDGET = {
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/websocket/status"),
    ("GET", "/api/v1/websocket/option-windows"),  # the status's chains: no database
    ("POST", "/api/v1/websocket/subscriptions"),
    ("DELETE", "/api/v1/websocket/subscriptions/{symbol}"),
    ("POST", "/api/v1/audit"),
    ("POST", "/api/v1/token"),
}


def test_every_route_is_in_a_class_or_named_outside_the_budget(tmp_path: Path) -> None:
    """A new route must be placed on purpose: in a class, or above with its reason."""
    app = create_app(Settings(data_dir=tmp_path), "postgresql://unused")
    paths = app.openapi()["paths"]
    operations = {(method.upper(), path) for path, item in paths.items() for method in item}
    assert operations == set(ROUTE_CLASSES) | OUTSIDE_THE_BUDGET
    for method, path in ROUTE_CLASSES:
        assert "Retry-After" in paths[path][method.lower()]["responses"]["429"]["description"]
    assert route_class("GET", "/api/v1/ticks/INFY") is EXPENSIVE
    assert route_class("HEAD", "/api/v1/coverage") is EXPENSIVE
    assert route_class("GET", "/api/v1/ticks") is None
