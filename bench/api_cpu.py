"""CPU of the API per latest-ticks request, alone: `python -m bench.api_cpu`.

The load benchmark (bench/api.py) measures latency beside a 20k ticks/s ingest, which on a
shared 2-core machine mostly measures the other tenants. This one measures what a request
costs: `tickvault api` with one worker serves over a table this process publishes (the 10
requested instruments' ticks changed every 25 ms, as an ingest publishes them), and
`bench.load` sends requests one after another on one keep-alive connection; the worker's
CPU seconds over the requests is the figure, which other tenants disturb far less than
wall time. No ingest, no simulator: only the API's own work is counted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from bench.common import REPO, api_env, cpu_seconds, db_server, free_port, median
from bench.load import closed_loop_process
from ingest.channels.latest_publisher import LatestTickPublisher
from ingest.channels.latest_table import published_path
from store.instruments import default_sample_path, load_instruments, resolve_symbols
from store.tick_row import TICK_PG_TYPES

SYMBOLS = 10
PUBLISH_INTERVAL_S = 0.025


def _tick(key: str, round_: int) -> tuple[Any, ...]:
    return (key, *(1.5 + round_ if t == "float8" else 7 + round_ for t in TICK_PG_TYPES[1:]))


@contextmanager
def _publishing(data_dir: Path, keys: list[str]) -> Iterator[None]:
    """The keys' ticks, published as an ingest would, a new one each round."""
    publisher = LatestTickPublisher(published_path(data_dir), capacity=64)
    publisher.publish([_tick(key, 0) for key in keys])
    done = threading.Event()

    def rounds() -> None:  # the publisher is this thread's alone from here on
        round_ = 0
        while not done.wait(PUBLISH_INTERVAL_S):
            round_ += 1
            publisher.publish([_tick(key, round_) for key in keys])

    thread = threading.Thread(target=rounds, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(10)
        publisher.close()


def _wait_for_ticks(target: str, api: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and api.poll() is None:
        try:
            with urllib.request.urlopen(target) as response:
                if len(json.loads(response.read())["ticks"]) == SYMBOLS:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise RuntimeError("the API did not answer with every tick")


def measure(requests: int, repeats: int) -> dict[str, Any]:
    with db_server() as server, tempfile.TemporaryDirectory(prefix="tickvault-api-cpu-") as tmp:
        url = server.create_database("bench_api_cpu")
        try:
            with psycopg.connect(url) as conn:
                load_instruments(conn, default_sample_path())
                symbols = [
                    row[0]
                    for row in conn.execute(
                        "SELECT trading_symbol FROM instruments WHERE segment = 'NSE_EQ'"
                        " ORDER BY trading_symbol LIMIT %s",
                        [SYMBOLS],
                    )
                ]
                keys = resolve_symbols(conn, symbols)
            data_dir = Path(tmp) / "data"
            port = free_port()
            env = api_env(url, data_dir, port, workers=1, log_level="WARNING")
            target = (
                f"http://127.0.0.1:{port}/api/v1/websocket/latest-ticks?symbols={','.join(symbols)}"
            )
            with _publishing(data_dir, [keys[symbol] for symbol in symbols]):
                api = subprocess.Popen(
                    [sys.executable, "-m", "tickvault", "api"],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    _wait_for_ticks(target, api)
                    closed_loop_process(target, 500)  # warm-up
                    runs = []
                    for _ in range(repeats):
                        before = cpu_seconds(api.pid, with_children=True)
                        report = closed_loop_process(target, requests)
                        cpu = cpu_seconds(api.pid, with_children=True) - before
                        runs.append({"cpu_us_per_request": cpu / requests * 1e6, **report})
                finally:
                    api.terminate()
                    api.wait(60)
        finally:
            server.drop_database(url)
    return {
        "requests": requests,
        "symbols_per_request": SYMBOLS,
        "cpu_us_per_request_median": round(median([r["cpu_us_per_request"] for r in runs]), 1),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.api_cpu", description=__doc__)
    parser.add_argument("--requests", type=int, default=5000, help="requests per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs, on the same server")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.requests, args.repeats)))


if __name__ == "__main__":
    main()
