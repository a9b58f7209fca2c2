"""A small HTTP/1.1 load generator: `python -m bench.load URL --rate R --seconds S` or
`python -m bench.load URL --requests N`.

With `--rate` it is open loop: requests are due at a fixed rate whatever the server does,
spread over keep-alive connections, and each latency counts from when the request was due,
so a server that falls behind shows it in the percentiles (no coordinated omission). With
`--requests` it sends N requests one after another on one connection. It speaks just enough
HTTP (GET, Content-Length bodies) to stay cheap: httpx would spend more CPU than the server
under test on a 2-core machine. The result is one JSON line, latencies in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from bench.common import percentiles


class _Client:
    """One keep-alive connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, target: str) -> int:
        """The response's status; reconnects when the server closed the connection."""
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        self._writer.write(f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await self._reader.readuntil(b"\r\n\r\n")
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        await self._reader.readexactly(length)
        if close:
            self._writer.close()
        return int(head[9:12])


async def open_loop(url: str, rate: float, seconds: float, connections: int) -> dict[str, object]:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    due: asyncio.Queue[float] = asyncio.Queue()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0

    async def worker() -> None:
        nonlocal errors
        client = _Client(parts.hostname or "127.0.0.1", parts.port or 80)
        while True:
            scheduled = await due.get()
            try:
                status = await client.get(target)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                client = _Client(client.host, client.port)
                continue
            finally:
                due.task_done()
            latencies.append((time.perf_counter() - scheduled) * 1000)
            statuses[status] = statuses.get(status, 0) + 1

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    cpu_started, started = time.process_time(), time.perf_counter()
    issued = 0
    while (now := time.perf_counter()) - started < seconds:
        wanted = int((now - started) * rate)
        while issued < wanted:
            issued += 1
            due.put_nowait(started + issued / rate)
        await asyncio.sleep(0.001)
    await due.join()
    elapsed = time.perf_counter() - started
    for task in workers:
        task.cancel()
    cpu_s = time.process_time() - cpu_started
    return _report(latencies, statuses, errors, elapsed, cpu_s, rate)


async def closed_loop(url: str, requests: int) -> dict[str, object]:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    client = _Client(parts.hostname or "127.0.0.1", parts.port or 80)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    cpu_started, started = time.process_time(), time.perf_counter()
    for _ in range(requests):
        before = time.perf_counter()
        status = await client.get(target)
        latencies.append((time.perf_counter() - before) * 1000)
        statuses[status] = statuses.get(status, 0) + 1
    elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    return _report(latencies, statuses, 0, elapsed, cpu_s, None)


def _report(
    latencies: list[float],
    statuses: dict[int, int],
    errors: int,
    elapsed: float,
    cpu_s: float,
    rate: float | None,
) -> dict[str, object]:
    return {
        "offered_rps": rate,
        "cpu_cores": round(cpu_s / elapsed, 3),  # the generator's own CPU
        "requests": len(latencies),
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "statuses": {str(k): v for k, v in statuses.items()},
        "errors": errors,
        "latency_ms": {k: round(v, 2) for k, v in percentiles(latencies, (50, 99, 99.9)).items()},
    }


def closed_loop_process(url: str, requests: int) -> dict[str, object]:
    """`closed_loop` in a process of its own, so the client's CPU is not the measured one's."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.load", url, "--requests", str(requests)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, help="requests per second (open loop)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--requests", type=int, help="this many, one after another")
    args = parser.parse_args(argv)
    if args.rate:
        report = asyncio.run(open_loop(args.url, args.rate, args.seconds, args.connections))
    else:
        report = asyncio.run(closed_loop(args.url, args.requests or 100))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
