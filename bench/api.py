"""The HTTP API under load while it ingests: `tickvault run` as a user starts it.

`python -m tickvault run` (API and ingest in one process) is fed by a simulator process at
the ingest rate. A day of ticks for one symbol is stored and rolled up first, so the bars
endpoint returns a full trading day of 1-minute bars. Then `bench.load`, in its own
process, drives the latest-ticks endpoint open loop at the offered rate, and afterwards
asks for the day's bars one request after another.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

from bench.common import REPO, CpuMeter, DbServer, load_universe, simulator, tickvault_run
from store.bars import refresh_bars
from store.tick_row import TICK_COLUMNS, from_datetime
from store.ticks import copy_ticks

IST = timedelta(hours=5, minutes=30)
SESSION = (timedelta(hours=9, minutes=15), timedelta(hours=15, minutes=30))
DAY_TICKS_PER_S = 4  # one liquid stock's conflated updates
# The max-rate search: offered latest-ticks req/s, stepped up until p99 reaches the bound.
SEARCH_RPS = (500, 1000, 2000, 3000, 4000, 6000, 8000)
SEARCH_P99_MS = 50.0


def _last_weekday_before(today: date) -> date:
    day = today - timedelta(days=1)
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return day


def store_trading_day(url: str, key: str, day: date) -> tuple[datetime, datetime, int]:
    """A random walk of ticks for `key` over NSE's session on `day`, rolled up into bars."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC) - IST
    start, end = midnight + SESSION[0], midnight + SESSION[1]
    start_time = from_datetime(start)
    count = int((end - start).total_seconds()) * DAY_TICKS_PER_S
    rng = random.Random(1)
    price, vtt, rows = 1000.0, 0, []
    for i in range(count):
        price = round(max(1.0, price + rng.choice((-0.05, 0.0, 0.05))), 2)
        ltq = rng.randint(1, 500)
        vtt += ltq
        ts = start_time + i * 1_000_000 // DAY_TICKS_PER_S
        row = [None] * len(TICK_COLUMNS)
        row[:7] = [key, ts, price, ltq, vtt, ltq if i else 0, 995.0]
        row[-2:] = [ts, ts + 1000]
        rows.append(tuple(row))
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        copy_ticks(cur, rows)
    with psycopg.connect(url, autocommit=True) as conn:
        refresh_bars(conn, start, end)
    return start, end, count


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _wait_until_serving(base: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Until /health answers 200 and the cache holds ticks (the feed is flowing)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tickvault run exited with {process.returncode}")
        try:
            if _get_json(f"{base}/api/v1/websocket/status")["cache"]["ticks_processed"] > 0:
                return
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError("tickvault run did not start serving ticks in time")


def _load(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.load", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _latest_ticks_load(
    target: str, rate: float, seconds: float, run_pid: int, feed_pid: int, server: DbServer
) -> dict[str, Any]:
    meter = CpuMeter(
        {
            "tickvault_run": (run_pid, True),
            "simulator": (feed_pid, False),
            "postgres": (server.postmaster_pid, True),
        }
    )
    meter.start()
    report = _load(target, "--rate", str(rate), "--seconds", str(seconds))
    cores = meter.stop()
    cores["load_generator"] = report.pop("cpu_cores")
    report["cpu_cores"] = cores
    return report


def max_rps_search(
    target: str, seconds: float, run_pid: int, feed_pid: int, server: DbServer
) -> dict[str, Any]:
    """The highest offered rate of SEARCH_RPS served in full with p99 < SEARCH_P99_MS; the
    steps stop at the first that fails (at most len(SEARCH_RPS) * seconds)."""
    steps: list[dict[str, Any]] = []
    best = 0.0
    for rate in SEARCH_RPS:
        load = _latest_ticks_load(target, rate, seconds, run_pid, feed_pid, server)
        steps.append(load)
        served = load["errors"] == 0 and load["achieved_rps"] >= 0.99 * rate
        if not (served and load["latency_ms"]["p99"] < SEARCH_P99_MS):
            break
        best = rate
    return {"p99_bound_ms": SEARCH_P99_MS, "max_rps": best, "steps": steps}


def run_api(
    server: DbServer,
    instruments: Path,
    symbols: list[str],
    ingest_rate: float,
    loads: Sequence[tuple[float, float]],
    bar_requests: int,
    warmup_s: float,
    search_step_s: float = 4.0,
    frame_interval_ms: float | None = None,
) -> dict[str, Any]:
    """`loads`: (requests/s, seconds) of each open-loop run of the latest-ticks endpoint;
    `frame_interval_ms`: the simulator's time between frames."""
    url = server.create_database("bench_api")
    keys = {r["trading_symbol"]: r["instrument_key"] for r in json.loads(instruments.read_text())}
    try:
        load_universe(url, instruments)
        day = _last_weekday_before(datetime.now(UTC).date())
        start, end, day_ticks = store_trading_day(url, keys[symbols[0]], day)
        with (
            tempfile.TemporaryDirectory(prefix="tickvault-bench-api-") as data_dir,
            simulator(instruments, ingest_rate, frame_interval_ms) as feed,
        ):
            with tickvault_run(url, Path(data_dir), feed.url) as (process, base, log):
                _wait_until_serving(base, process, 120)
                time.sleep(warmup_s)
                target = f"{base}/api/v1/websocket/latest-ticks?symbols={','.join(symbols[1:11])}"
                latest = [
                    _latest_ticks_load(target, rate, seconds, process.pid, feed.pid, server)
                    for rate, seconds in loads
                ]
                search = max_rps_search(target, search_step_s, process.pid, feed.pid, server)
                window = f"start={quote(start.isoformat())}&end={quote(end.isoformat())}"
                bars_url = f"{base}/api/v1/bars/{symbols[0]}?interval=1m&{window}"
                bars = _load(bars_url, "--requests", str(bar_requests))
                bars["bars_per_response"] = len(_get_json(bars_url)["bars"])
                bars["day_ticks"] = day_ticks
                status = _get_json(f"{base}/api/v1/websocket/status")
            log_tail = log.read_text(errors="replace")[-500:]
        return {
            "ingest_rate": ingest_rate,
            "symbols_per_request": len(symbols[1:11]),
            "latest_ticks": latest,
            "max_rps_search": search,
            "bars_1m": bars,
            "ingest_rows_written": status["writer"]["rows_written"],
            "log_tail": log_tail,
        }
    finally:
        server.drop_database(url)
