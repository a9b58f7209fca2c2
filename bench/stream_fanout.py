"""The push stream under load beside a 20k ticks/s ingest: `python -m bench.stream_fanout`.

`tickvault run` (its default two API workers) is fed by a simulator process at the ingest
rate over 200 F&O stocks. First the ingest's committed rate with no stream client, then the
same with CLIENTS WebSocket clients (a process of their own) each following SYMBOLS stocks
at the default ticks_ms, one "changes" message per window ("batch": true). The figures:
tick-to-client latency, a client's receive time minus the moment the tick was due there,
the later of its `received_at` (the ingest's arrival stamp, the same machine's clock) and the
opening of the client's `ticks_ms` window (the previous message's `ts` plus `ticks_ms`); the
tick's whole age at arrival beside it (it also holds what the client's conflation held
back); and the committed rate with clients over the rate without. Keys
`stream_p99_ms_200_clients`, `stream_age_p99_ms_200_clients` and `stream_ingest_rate_ratio`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import websockets

from bench.common import (
    REPO,
    RESULTS_DIR,
    CpuMeter,
    DbServer,
    db_server,
    load_universe,
    percentiles,
    tickvault_run,
    write_universe,
)
from bench.common import simulator as feed_simulator
from core.heap import settle_startup_heap

CLIENTS = 200
SYMBOLS = 50
STOCKS = 200
INGEST_RATE = 20_000
TICKS_MS = 250  # the stream's default
RECEIVED_AT = '"received_at":"'
CHANGES_TS = '{"type":"changes","ts":"'


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _rows_written(base: str) -> int:
    return _get_json(f"{base}/api/v1/websocket/status")["writer"]["rows_written"]


def _committed_rate(
    base: str, seconds: float, pids: dict[str, tuple[int | None, bool]]
) -> tuple[float, dict[str, float]]:
    """Rows committed per second over `seconds`, and the cores each process kept busy."""
    meter = CpuMeter(pids)
    meter.start()
    first, started = _rows_written(base), time.monotonic()
    time.sleep(seconds)
    rate = (_rows_written(base) - first) / (time.monotonic() - started)
    return rate, meter.stop()


def _wait_until_serving(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tickvault run exited with {process.returncode}")
        try:
            if _rows_written(base) > 0:
                return
        except (OSError, KeyError, ValueError, TypeError):
            pass
        time.sleep(0.5)
    raise RuntimeError("tickvault run did not start writing ticks in time")


# --- the clients' process ------------------------------------------------------------------


async def _client(
    url: str, symbols: list[str], until: float, lags: dict[str, list[float]], batch: bool
) -> int:
    """One client: subscribe, then the lag of every tick until `until`; its close code.

    Two lags per tick: its age at arrival (now minus `received_at`), and, for a batch client,
    what the stream added beyond the hold-back the client asked for: now minus the later of
    `received_at` and the moment the client's `ticks_ms` window opened, the previous
    message's `ts` (when the server made it) plus `ticks_ms`. A tick that came while the
    window was shut is due when it opens, not when it came: holding it is the conflation the
    client asked for, and so is the age of a symbol's newest tick when the window opens."""
    async with websockets.connect(url, max_size=None) as ws:
        request = {"action": "subscribe", "symbols": symbols, "batch": batch, "ticks_ms": TICKS_MS}
        await ws.send(json.dumps(request))
        opens = -math.inf  # when its window opened again: the first changes are not held
        window_s = TICKS_MS / 1000
        while time.time() < until:
            try:
                async with asyncio.timeout(max(0.01, until - time.time())):
                    text = await ws.recv()
            except TimeoutError:
                break
            now = time.time()
            if not text.startswith(('{"type":"tick"', CHANGES_TS)):
                continue
            lags["frames"].append(now)
            # No json.loads: the clients' own CPU would be measured too.
            at = text.find(RECEIVED_AT)
            while at >= 0:
                stamp = text[at + len(RECEIVED_AT) : text.index('"', at + len(RECEIVED_AT))]
                received = datetime.fromisoformat(stamp).timestamp()
                lags["age"].append((now - received) * 1000)
                lags["tick_times"].append(now)
                if batch:
                    lags["added"].append((now - max(received, opens)) * 1000)
                at = text.find(RECEIVED_AT, at + 1)
            if batch:
                made = text[len(CHANGES_TS) : text.index('"', len(CHANGES_TS))]
                opens = datetime.fromisoformat(made).timestamp() + window_s
        return ws.close_code or 0


async def _clients(
    url: str, symbols: list[str], clients: int, per: int, seconds: float, batch: bool
) -> dict:
    lags: dict[str, list[float]] = {"age": [], "added": [], "frames": [], "tick_times": []}
    begun = time.time()
    until = begun + seconds
    tasks = []
    for i in range(clients):
        chosen = [symbols[(i * 7 + j) % len(symbols)] for j in range(per)]
        tasks.append(asyncio.create_task(_client(url, chosen, until, lags, batch)))
        await asyncio.sleep(0.005)  # not all 200 handshakes in one instant
    settle_startup_heap()  # a full collection's pause would be measured as the stream's lag
    codes = await asyncio.gather(*tasks, return_exceptions=True)
    # The first tenth includes the connection storm.
    warm = {name: values[len(values) // 10 :] for name, values in lags.items()}
    # Rates over the parent's window with clients: from 6 s after the start to the end.
    window = (begun + 6, until - 2)
    span = window[1] - window[0]
    return {
        "clients": clients,
        "symbols_per_client": per,
        "batch": batch,
        "ticks_ms": TICKS_MS,
        "ticks_received": len(lags["age"]),
        "lag_ms": percentiles(warm["age"], (50, 90, 99)),
        "added_lag_ms": percentiles(warm["added"], (50, 90, 99)) if batch else None,
        "closed_early": sum(1 for code in codes if code not in (0, 1000)),
        "frames_per_s": round(sum(window[0] <= t < window[1] for t in lags["frames"]) / span),
        "ticks_per_s": round(sum(window[0] <= t < window[1] for t in lags["tick_times"]) / span),
    }


# --- the run -------------------------------------------------------------------------------


def run(
    server: DbServer, seconds: float, clients: int, per: int, rate: float, batch: bool = True
) -> dict[str, Any]:
    """The committed rate over `seconds` without, then with, `clients` stream clients (each
    following `per` stocks; `batch`: one "changes" message per round, or one per tick), and
    the ticks' lag at those clients."""
    with tempfile.TemporaryDirectory(prefix="tickvault-bench-stream-") as tmp:
        url = server.create_database("bench_stream")
        instruments = Path(tmp) / "instruments.json"
        symbols = write_universe(instruments, STOCKS)
        load_universe(url, instruments)
        data_dir = Path(tmp) / "data"
        with (
            feed_simulator(instruments, rate) as feed,
            tickvault_run(url, data_dir, feed.url) as (process, base, _log),
        ):
            _wait_until_serving(base, process)
            time.sleep(3)
            pids = {
                "tickvault_run": (process.pid, True),
                "simulator": (feed.pid, False),
                "postgres": (server.postmaster_pid, True),
            }
            without, cores_without = _committed_rate(base, seconds, pids)
            loader = subprocess.Popen(
                [
                    *(sys.executable, "-m", "bench.stream_fanout", "--as-clients", base),
                    *(() if batch else ("--one-per-frame",)),
                    *("--clients", str(clients), "--symbols", str(per)),
                    *("--seconds", str(seconds + 8), "--names", ",".join(symbols)),
                ],
                cwd=REPO,
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(6)  # the clients connected and subscribed
            pids["stream_clients"] = (loader.pid, False)
            with_clients, cores_with = _committed_rate(base, seconds, pids)
            out, _ = loader.communicate(timeout=seconds + 60)
            report = json.loads(out.strip().splitlines()[-1])
        server.drop_database(url)
    stream_cpu = cores_with["tickvault_run"] - cores_without["tickvault_run"]
    # Tick-to-client: what the stream added to a tick from when it was due (a batch client's
    # window opening), not the conflation the client asked for; and the tick's whole age.
    due_lag = report["added_lag_ms"] or report["lag_ms"]
    report.update(
        ingest_rate_offered=rate,
        committed_per_s_without_clients=round(without),
        committed_per_s_with_clients=round(with_clients),
        **{f"stream_p99_ms_{clients}_clients": round(due_lag["p99"], 1)},
        **{f"stream_age_p99_ms_{clients}_clients": round(report["lag_ms"]["p99"], 1)},
        stream_ingest_rate_ratio=round(with_clients / without, 3),
        # What the clients cost `tickvault run` (the API's workers: the ingest's share is
        # the same in both windows), per frame and per tick it pushed.
        api_cpu_us_per_frame=round(stream_cpu * 1e6 / max(report["frames_per_s"], 1), 1),
        api_cpu_us_per_tick_pushed=round(stream_cpu * 1e6 / max(report["ticks_per_s"], 1), 2),
        cores_without_clients=cores_without,
        cores_with_clients=cores_with,
    )
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--symbols", type=int, default=SYMBOLS)
    parser.add_argument("--rate", type=float, default=INGEST_RATE)
    parser.add_argument(
        "--one-per-frame", action="store_true", help='a message per tick, not "batch": true'
    )
    parser.add_argument("--as-clients", metavar="BASE", help=argparse.SUPPRESS)
    parser.add_argument("--names", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_clients:
        url = args.as_clients.replace("http://", "ws://") + "/api/v1/stream"
        names = args.names.split(",")
        batch = not args.one_per_frame
        report = asyncio.run(_clients(url, names, args.clients, args.symbols, args.seconds, batch))
        print(json.dumps(report))
        return 0
    with db_server() as server:
        batch = not args.one_per_frame
        report = run(server, args.seconds, args.clients, args.symbols, args.rate, batch)
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (RESULTS_DIR / f"stream-{stamp}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
