"""A stream client that reads nothing: `python -m bench.stream_idle`.

`tickvault run` on the simulator at 20,000 ticks/s; one client subscribes and then never
reads again (a small receive buffer, the websockets library's queue of one message), once as
a batch client of the whole universe every 50 ms (the largest messages the stream sends) and
once as a tick-per-message client of 50 symbols. The figure is the resident memory of the API
worker that serves it: its growth over the 60 s, against the queue's byte bound
(`TICKVAULT_STREAM_QUEUE_MAX_BYTES`), beside the same worker's growth over the 60 s before the
client came. Key `stream_idle_growth_mib`, the larger of the two runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import websockets

from bench.common import (
    RESULTS_DIR,
    DbServer,
    db_server,
    load_universe,
    tickvault_run,
    write_universe,
)
from bench.common import simulator as feed_simulator
from bench.stream_fanout import INGEST_RATE, STOCKS, _wait_until_serving
from core.config import Settings

MIB = 1024 * 1024
SUBSCRIPTIONS = {
    "universe_batch_50ms": {"symbols": "universe", "batch": True, "ticks_ms": 50},
    "ticks_50_symbols": {"batch": False, "ticks_ms": 50},
}


def _worker_serving(run_pid: int, port: int) -> psutil.Process:
    """The API worker (a descendant of `tickvault run`) holding the connection from `port`."""
    for process in psutil.Process(run_pid).children(recursive=True):
        try:
            if any(c.raddr and c.raddr.port == port for c in process.net_connections("tcp")):
                return process
        except psutil.NoSuchProcess:
            continue
    raise RuntimeError(f"no API worker holds the connection from port {port}")


def _peak_growths(processes: list[psutil.Process], seconds: float) -> dict[int, float]:
    """Each process's highest resident memory over `seconds` (sampled every 0.2 s) minus its
    first, in MiB, by pid."""
    first = {p.pid: p.memory_info().rss for p in processes}
    peak = dict(first)
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        time.sleep(0.2)
        for process in processes:
            peak[process.pid] = max(peak[process.pid], process.memory_info().rss)
    return {pid: round((peak[pid] - first[pid]) / MIB, 2) for pid in first}


async def _idle_client(
    url: str, request: dict[str, Any], run_pid: int, seconds: float
) -> dict[str, Any]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = url.removeprefix("ws://").split("/")[0].split(":")
    sock.connect((host, int(port)))
    async with websockets.connect(url, sock=sock, max_queue=1, max_size=None) as ws:
        await ws.send(json.dumps({"action": "subscribe", **request}))
        await asyncio.sleep(2)  # the snapshot sent, the worker's steady state before
        worker = _worker_serving(run_pid, sock.getsockname()[1])
        growths = await asyncio.to_thread(_peak_growths, [worker], seconds)
        still_held = any(
            c.raddr and c.raddr.port == sock.getsockname()[1]
            for c in worker.net_connections("tcp")
            if c.status == psutil.CONN_ESTABLISHED
        )
        return {"worker_pid": worker.pid, "growth_mib": growths[worker.pid], "open": still_held}


def run(server: DbServer, seconds: float) -> dict[str, Any]:
    bound = Settings().stream_queue_max_bytes / MIB
    report: dict[str, Any] = {"seconds": seconds, "queue_max_bytes_mib": bound}
    with tempfile.TemporaryDirectory(prefix="tickvault-bench-idle-") as tmp:
        url = server.create_database("bench_idle")
        instruments = Path(tmp) / "instruments.json"
        symbols = write_universe(instruments, STOCKS)
        load_universe(url, instruments)
        with (
            feed_simulator(instruments, INGEST_RATE) as feed,
            tickvault_run(url, Path(tmp) / "data", feed.url) as (process, base, _log),
        ):
            _wait_until_serving(base, process)
            stream_url = base.replace("http://", "ws://") + "/api/v1/stream"
            # Every process of `tickvault run` alike before the client: its worker is
            # known only once it connects.
            quiet = _peak_growths(psutil.Process(process.pid).children(recursive=True), seconds)
            for name, request in SUBSCRIPTIONS.items():
                request = {"symbols": symbols[:50], **request}
                served = asyncio.run(_idle_client(stream_url, request, process.pid, seconds))
                served["growth_before_client_mib"] = quiet.get(served["worker_pid"])
                report[name] = served
        server.drop_database(url)
    report["stream_idle_growth_mib"] = max(report[name]["growth_mib"] for name in SUBSCRIPTIONS)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    with db_server() as server:
        report = run(server, args.seconds)
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (RESULTS_DIR / f"stream-idle-{stamp}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
