"""The option chain's read path: `python -m bench.option_chain` (and bench.run_all --only
option_chain).

One fresh database: NIFTY with three expiries of STRIKES strikes each (CE and PE: 2 x STRIKES
contracts per chain, 6 x STRIKES in all) and the index, and `--ticks` option ticks (default
5M) spread over one session day, written by binary COPY as the ingest writes them (plus a
tenth as many the day before, so that the day's bound has chunks to exclude). Then:

- `option_chain(conn, "NIFTY", nearest expiry, at)` at random moments of the day, on one kept
  connection (as the API's pool keeps them): p50/p99 (`option_chain_p99_ms`, target < 50 ms);
- the chain now (`ChainCache.now`, what the route runs without `at`) over a latest-tick
  table published as the ingest publishes it: p50/p99 once warm (`option_chain_now_p99_ms`,
  target < 5 ms), and the CPU time of each call (`option_chain_now_cpu_p99_ms`): on a shared
  machine the wall-time tail is mostly waiting for a core;
- both through HTTP, `tickvault api` with one worker, requests one after another
  (bench.load): what a client sees, serialization of the ~80-contract answer included.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg.types.json import Jsonb

from api.chain_cache import ChainCache
from api.ingest_state import PublishedIngest
from bench.common import REPO, DbServer, api_env, db_server, free_port, percentiles
from bench.load import closed_loop_process
from core.ist import IST
from ingest.channels.latest_publisher import LatestTickPublisher
from ingest.channels.latest_table import published_path
from store.option_chain import option_chain
from store.tick_row import from_datetime
from store.ticks import copy_ticks

INDEX = "NSE_INDEX|Nifty 50"
DAY = date(2026, 1, 5)
EXPIRIES = (date(2026, 1, 8), date(2026, 1, 15), date(2026, 1, 29))
STRIKES = 41  # 20 each side of the money, 50 points apart: 82 contracts in a chain
SPOT = 24000.0
SESSION_S = 22_500  # 09:15-15:30
COPY_ROWS = 100_000


def _open(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 9, 15, tzinfo=IST)


def contracts() -> list[tuple[str, date, float, str]]:
    """(key, expiry, strike, CE/PE) of every contract."""
    low = SPOT - 50 * (STRIKES // 2)
    return [
        (f"NSE_FO|NIFTY{expiry:%y%m%d}{int(strike)}{kind}", expiry, strike, kind)
        for expiry in EXPIRIES
        for strike in (low + 50 * n for n in range(STRIKES))
        for kind in ("CE", "PE")
    ]


def _instruments(conn: psycopg.Connection) -> None:
    rows = [(INDEX, "NIFTY", "NSE_INDEX", "INDEX", None, None, None, None)]
    for key, expiry, strike, kind in contracts():
        close = datetime(expiry.year, expiry.month, expiry.day, 15, 30, tzinfo=IST)
        rows.append((key, key.split("|")[1], "NSE_FO", kind, close, strike, INDEX, "NIFTY"))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO instruments (instrument_key, trading_symbol, segment, instrument_type,"
            " expiry, strike_price, underlying_key, underlying_symbol, raw)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(*row, Jsonb({"instrument_key": row[0]})) for row in rows],
        )


def _day_ticks(day: date, count: int, rng: random.Random) -> Iterator[list[tuple]]:
    """`count` ticks of the day in batches of COPY_ROWS: every contract's in turn through
    the session, and the index once a second beside them. Batches, not one list: 5M tick
    tuples would take gigabytes."""
    keys = contracts()
    start = from_datetime(_open(day))
    step_us = SESSION_S * 1_000_000 // max(1, count // len(keys))
    yield [
        (INDEX, ts, SPOT + 100 * ((second % 3600) / 3600 - 0.5), *(None,) * 18, ts, ts)
        for second in range(SESSION_S)
        for ts in (start + second * 1_000_000,)
    ]
    for first in range(0, count, COPY_ROWS):
        rows = []
        for n in range(first, min(count, first + COPY_ROWS)):
            key, _, strike, kind = keys[n % len(keys)]
            ts = start + (n // len(keys)) * step_us + n % len(keys) * 1_000
            moneyness = (SPOT - strike) if kind == "CE" else (strike - SPOT)
            ltp = max(0.05, moneyness) + 80 + rng.random() * 10
            oi = 100_000.0 + (n // len(keys)) * 5 + rng.randrange(1000)
            rows.append(
                (key, ts, ltp, 75, 75 * (n // len(keys)), 75, ltp, None, oi,
                 0.12 + rng.random() / 50, None, None, ltp - 0.05, 150, ltp + 0.05, 225, 0.5,
                 -4.0, 0.001, 12.0, 3.0, ts, ts)
            )  # fmt: skip
        yield rows


def fill(url: str, ticks: int) -> float:
    """Instruments and ticks, by COPY; the seconds it took."""
    started = time.perf_counter()
    rng = random.Random(19)
    with psycopg.connect(url, autocommit=True) as conn:
        _instruments(conn)
        for day, count in ((DAY - timedelta(days=1), ticks // 10), (DAY, ticks)):
            with conn.cursor() as cur:
                for rows in _day_ticks(day, count, rng):
                    with conn.transaction():
                        copy_ticks(cur, rows)
        conn.execute("VACUUM ANALYZE ticks")
        conn.execute("ANALYZE instruments")
    return time.perf_counter() - started


def _moments(count: int, rng: random.Random) -> list[datetime]:
    start = _open(DAY)
    return [start + timedelta(seconds=rng.uniform(60, SESSION_S)) for _ in range(count)]


def _ms(seconds: list[float]) -> dict[str, float]:
    return {k: round(v * 1000, 2) for k, v in percentiles(seconds).items()}


def at_moments(url: str, moments: list[datetime]) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        option_chain(conn, "NIFTY", EXPIRIES[0], moments[0])  # plans and catalog warm
        times = []
        filled = 0
        for moment in moments:
            started = time.perf_counter()
            chain = option_chain(conn, "NIFTY", EXPIRIES[0], moment)
            times.append(time.perf_counter() - started)
            filled += sum(1 for row in chain.strikes for side in (row.call, row.put) if side.ltp)
    return {
        "requests": len(moments),
        "contracts": 2 * STRIKES,
        "sides_with_a_tick": round(filled / len(moments)),
        "latency_ms": _ms(times),
    }


def _latest(url: str) -> list[tuple]:
    """Each key's newest tick, as an ingest would publish it."""
    keys = [INDEX, *(key for key, *_ in contracts())]
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT last.* FROM unnest(%s::text[]) AS k(key) CROSS JOIN LATERAL"
            " (SELECT * FROM ticks WHERE instrument_key = k.key ORDER BY ts DESC LIMIT 1) AS last",
            [keys],
        )
        rows = cur.fetchall()
    return [
        tuple(from_datetime(v) if isinstance(v, datetime) else v for v in row[:-1]) for row in rows
    ]


def now_in_process(url: str, data_dir: Path, requests: int) -> dict[str, Any]:
    from psycopg_pool import ConnectionPool

    published = PublishedIngest(data_dir)
    with ConnectionPool(url, min_size=1, max_size=1, open=True) as pool:
        cache = ChainCache(pool)
        now = datetime.now(UTC)
        cold_started = time.perf_counter()
        cache.now(published, "NIFTY", EXPIRIES[0], now)
        cold = time.perf_counter() - cold_started
        times, cpu = [], []
        for _ in range(requests):
            started, cpu_started = time.perf_counter(), time.thread_time()
            cache.now(published, "NIFTY", EXPIRIES[0], now)
            times.append(time.perf_counter() - started)
            cpu.append(time.thread_time() - cpu_started)
    return {
        "requests": requests,
        "first_ms": round(cold * 1000, 2),
        "latency_ms": _ms(times),
        # All of its work is in this thread: wall time beyond this is waiting for a core.
        "cpu_ms": _ms(cpu),
    }


def through_http(url: str, data_dir: Path, moment: datetime, requests: int) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v1/option-chain/NIFTY?expiry={EXPIRIES[0]}"
    api = subprocess.Popen(
        [sys.executable, "-m", "tickvault", "api"],
        cwd=REPO,
        env=api_env(url, data_dir, port, workers=1, log_level="WARNING"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base) as response:
                    response.read()
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or api.poll() is not None:
                    raise RuntimeError("the API did not answer the chain") from None
                time.sleep(0.2)
        at_target = f"{base}&at={quote(moment.isoformat())}"
        closed_loop_process(at_target, 20)  # warm-up
        return {
            "now": closed_loop_process(base, requests),
            "at": closed_loop_process(at_target, requests),
        }
    finally:
        api.terminate()
        api.wait(60)


def run(server: DbServer, ticks: int = 5_000_000, requests: int = 500) -> dict[str, Any]:
    url = server.create_database("bench_chain")
    rng = random.Random(7)
    try:
        fill_s = fill(url, ticks)
        at = at_moments(url, _moments(requests, rng))
        with tempfile.TemporaryDirectory(prefix="tickvault-chain-") as scratch:
            data_dir = Path(scratch) / "data"
            with LatestTickPublisher(published_path(data_dir), capacity=1024) as publisher:
                publisher.publish(_latest(url))
                now = now_in_process(url, data_dir, requests)
                http = through_http(url, data_dir, _moments(1, rng)[0], requests)
    finally:
        server.drop_database(url)
    return {
        "ticks": ticks,
        "contracts": len(contracts()),
        "fill_s": round(fill_s, 1),
        "option_chain": at,
        "option_chain_now": now,
        "http": http,
        "option_chain_p99_ms": at["latency_ms"]["p99"],
        "option_chain_now_p99_ms": now["latency_ms"]["p99"],
        "option_chain_now_cpu_p99_ms": now["cpu_ms"]["p99"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.option_chain", description=__doc__)
    parser.add_argument("--ticks", type=int, default=5_000_000, help="option ticks of the day")
    parser.add_argument("--requests", type=int, default=500, help="chains asked, each way")
    args = parser.parse_args(argv)
    with db_server() as server:
        print(json.dumps(run(server, args.ticks, args.requests), indent=2))


if __name__ == "__main__":
    main()
