"""The Apache-edition bar rollup's server CPU beside a paced COPY writer:
`python -m bench.rollup_cpu --rate 90000 --seconds 70`.

In the ceiling run the rollup shares the 2 cores with the ingest and its COPY, and its cost
depends on the chunk's size and on whether a minute closes in the window, so the end-to-end
figure cannot show it. Here one connection COPYs the recorded ticks (the bench universe,
their times moved to the moment they are written) at `--rate`, and every 5 s a rollup pass
runs on a new connection, as `ingest/jobs/rollup.py` does; each pass's backend CPU is read
before it closes. Run it long enough to cross a minute's close (70 s does): the passes after
it are where a rollup that re-reads what it already rolled up shows. `bench.rollup_close`
measures the pass at the close alone, without the writer's noise.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from bench import offline
from bench.common import cpu_seconds, db_server, load_universe, write_universe
from store.bars import refresh_bars
from store.tick_row import PG_EPOCH_UNIX_US
from store.ticks import copy_ticks

PASS_INTERVAL_S = 5.0  # Settings().rollup_interval_s
BATCH_ROWS = 10_000


def _write(url: str, ticks: list[tuple], rate: float, stop: threading.Event) -> dict[str, Any]:
    """COPY the ticks in a loop at `rate` rows/s, times moved to now; rows and server CPU."""
    base = min(tick[offline.TIME_COLUMNS[2]] for tick in ticks)
    written, batch = 0, 0
    with psycopg.connect(url) as conn:
        pid, started = conn.info.backend_pid, time.perf_counter()
        before = cpu_seconds(pid)
        while not stop.is_set():
            start = batch * BATCH_ROWS % len(ticks)
            rows = ticks[start : start + BATCH_ROWS]
            shift = int(time.time() * 1e6) - PG_EPOCH_UNIX_US - base - 300_000
            shift -= start * 3_000_000 // len(ticks)  # the batch's place in the recording
            moved = offline.moved_on(rows, shift)
            with conn.cursor() as cur:
                copy_ticks(cur, moved)
            conn.commit()
            written, batch = written + len(moved), batch + 1
            ahead = started + written / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        return {"rows": written, "server_cpu_s": cpu_seconds(pid) - before}


def measure(rate: float, seconds: float, stocks: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tickvault-bench-rollup-") as scratch:
        instruments = Path(scratch) / "instruments.json"
        write_universe(instruments, stocks)
        ticks = offline.decode_all(offline.record_frames(instruments, 20_000, 3.0))
        with db_server() as server:
            url = server.create_database("bench_rollup")
            try:
                load_universe(url, instruments)
                stop, writer = threading.Event(), {}
                thread = threading.Thread(
                    target=lambda: writer.update(_write(url, ticks, rate, stop))
                )
                thread.start()
                started, passes = time.monotonic(), []
                while time.monotonic() - started < seconds:
                    time.sleep(PASS_INTERVAL_S)
                    with psycopg.connect(url, autocommit=True) as conn:
                        pid = conn.info.backend_pid
                        before = cpu_seconds(pid)
                        result = refresh_bars(conn)
                        passes.append(
                            {
                                "at_s": round(time.monotonic() - started, 1),
                                "cpu_s": round(cpu_seconds(pid) - before, 2),
                                "buckets": sum(result.buckets_written.values()),
                            }
                        )
                stop.set()
                thread.join()
                elapsed = time.monotonic() - started
            finally:
                server.drop_database(url)
    rollup = sum(p["cpu_s"] for p in passes)
    return {
        "rows": writer["rows"],
        "rows_per_s": round(writer["rows"] / elapsed),
        "copy_server_us_per_row": round(writer["server_cpu_s"] / writer["rows"] * 1e6, 2),
        "rollup_server_cpu_s": round(rollup, 2),
        "rollup_server_us_per_row": round(rollup / writer["rows"] * 1e6, 2),
        "passes": passes,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rollup_cpu", description=__doc__)
    parser.add_argument("--rate", type=float, default=90_000, help="ticks/s written")
    parser.add_argument("--seconds", type=float, default=70.0, help="how long; cross a minute")
    parser.add_argument("--stocks", type=int, default=1800, help="F&O stocks in the universe")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.rate, args.seconds, args.stocks)))


if __name__ == "__main__":
    main()
