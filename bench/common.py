"""What every benchmark shares: a private database server, a synthetic market, the simulator
process, CPU accounting and percentiles."""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
import psycopg

from core.config import Settings
from store.instruments import load_instruments
from store.local.cluster import LocalCluster
from store.local.postgres import PgInstall, find_bindir
from store.local.url import create_database, drop_database
from store.migrations import migrate

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
INDEX_KEYS = ("NSE_INDEX|Nifty 50", "NSE_INDEX|Nifty Bank")  # Settings.index_keys' default


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def api_env(url: str, data_dir: Path, port: int, workers: int, log_level: str) -> dict[str, str]:
    """The environment of a `tickvault api` under test: none of a developer's own variables."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TICKVAULT_", "UPSTOX_"))},
        "TICKVAULT_DATABASE_URL": url,
        "TICKVAULT_DATA_DIR": str(data_dir),
        "TICKVAULT_API_PORT": str(port),
        "TICKVAULT_API_WORKERS": str(workers),
        "TICKVAULT_LOG_LEVEL": log_level,
    }


@contextmanager
def tickvault_run(
    url: str, data_dir: Path, feed_url: str
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """`tickvault run` (ingest and API) on `feed_url`'s simulator: the process, the API's base
    URL and its log; terminated on leaving."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = os.environ | {
        "TICKVAULT_DATABASE_URL": url,
        "TICKVAULT_DATA_DIR": str(data_dir),
        "TICKVAULT_API_PORT": str(port),
        "TICKVAULT_LOG_LEVEL": "WARNING",
        "UPSTOX_ACCESS_TOKEN": "bench-token",  # 8 characters at least, as a real one
        "UPSTOX_API_BASE": feed_url,
    }
    log = data_dir / "run.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "tickvault", "run"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        yield process, f"http://127.0.0.1:{port}", log
    finally:
        process.terminate()
        process.wait(60)


def percentiles(values: Sequence[float], points: Sequence[float] = (50, 99)) -> dict[str, float]:
    """Nearest-rank percentiles, keyed "p50", "p99"...; empty input gives NaN."""
    ordered = sorted(values)
    out = {}
    for point in points:
        if not ordered:
            out[f"p{point:g}"] = float("nan")
            continue
        rank = max(1, -(-len(ordered) * point // 100))  # ceil without floats
        out[f"p{point:g}"] = ordered[int(rank) - 1]
    return out


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, object]:
    """The facts BENCHMARKS.md must state about where the numbers came from."""
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


# --- the database -------------------------------------------------------------------------


@dataclass
class DbServer:
    """A TimescaleDB server the benchmarks may create databases on.

    `postmaster_pid` is known for our own cluster only: then the server's CPU is measured.
    """

    admin_url: str
    postmaster_pid: int | None = None
    version: str = ""

    def create_database(self, prefix: str) -> str:
        """A fresh database with tickvault's schema."""
        url = create_database(self.admin_url, f"{prefix}_{uuid.uuid4().hex[:8]}")
        migrate(url)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")  # the previous benchmark's WAL is not this one's work
        return url

    def drop_database(self, url: str) -> None:
        drop_database(self.admin_url, url)


@contextmanager
def db_server() -> Iterator[DbServer]:
    """TICKVAULT_DATABASE_URL's server, or a private cluster in /tmp with tickvault's settings
    (from TICKVAULT_PG_BINDIR's PostgreSQL where that is set).

    /tmp because the server runs as a service user when we are root, and it must reach its
    data directory; the cluster gets `tickvault db start`'s settings (INGEST_SETTINGS), so
    the numbers are those of the embedded default.
    """
    external = os.environ.get("TICKVAULT_DATABASE_URL")
    if external:
        yield DbServer(external, None, _server_version(external))
        return
    root = Path(tempfile.mkdtemp(prefix="tickvault-bench-"))
    root.chmod(0o755)
    # TICKVAULT_PG_BINDIR as `tickvault db start` reads it: a Community build there measures
    # the edition production runs.
    install = PgInstall(find_bindir(Settings.from_env().pg_bindir))
    # The license is not set, so it is the build's own: Community's where its module is.
    edition = "Community" if install.has_community_module() else "Apache"
    cluster = LocalCluster(install, root / "pg", free_port())
    try:
        cluster.start()
        pid = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
        url = cluster.url("postgres")
        yield DbServer(url, pid, f"{_server_version(url)} ({edition} edition)")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _server_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'),"
            " (SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb')"
        ).fetchone()
    return f"PostgreSQL {row[0]}, TimescaleDB {row[1]}" if row else ""


# --- the market ---------------------------------------------------------------------------


def write_universe(path: Path, stocks: int, seed: int = 1) -> list[str]:
    """An Upstox instrument file of `stocks` F&O stocks (an NSE_EQ record and one FUT each)
    plus the two default indices; returns the stocks' trading symbols.

    NSE lists about 200 F&O stocks; the benchmark takes up to one full-mode connection's
    2000 keys, so that frames carry as many instruments as the feed allows.
    """
    rng = random.Random(seed)
    expiry = int(datetime(2030, 1, 31, 18, 29, 59, tzinfo=UTC).timestamp() * 1000)
    records: list[dict[str, object]] = [
        {"instrument_key": INDEX_KEYS[0], "segment": "NSE_INDEX", "instrument_type": "INDEX",
         "trading_symbol": "NIFTY", "name": "Nifty 50", "exchange": "NSE", "last_price": 24300.0},
        {"instrument_key": INDEX_KEYS[1], "segment": "NSE_INDEX", "instrument_type": "INDEX",
         "trading_symbol": "BANKNIFTY", "name": "Nifty Bank", "exchange": "NSE",
         "last_price": 52100.0},
    ]  # fmt: skip
    symbols = []
    for i in range(stocks):
        symbol = f"STK{i:04d}"
        key = f"NSE_EQ|INE{i:06d}B01"
        price = round(rng.uniform(50, 5000), 1)
        symbols.append(symbol)
        records.append(
            {"instrument_key": key, "segment": "NSE_EQ", "instrument_type": "EQ",
             "trading_symbol": symbol, "name": f"Stock {i}", "exchange": "NSE",
             "isin": key.split("|")[1], "exchange_token": str(10_000 + i), "lot_size": 1,
             "tick_size": 5.0, "last_price": price}
        )  # fmt: skip
        records.append(
            {"instrument_key": f"NSE_FO|{200_000 + i}", "segment": "NSE_FO",
             "instrument_type": "FUT", "trading_symbol": f"{symbol} FUT 31 JAN 30",
             "name": f"Stock {i}", "exchange": "NSE", "exchange_token": str(200_000 + i),
             "lot_size": rng.choice((250, 500, 1000)), "tick_size": 10.0, "expiry": expiry,
             "underlying_key": key, "underlying_symbol": symbol, "underlying_type": "EQUITY"}
        )  # fmt: skip
    path.write_text(json.dumps(records))
    return symbols


def load_universe(url: str, path: Path) -> None:
    with psycopg.connect(url) as conn:
        load_instruments(conn, path)


# --- processes ----------------------------------------------------------------------------


class FeedProcess:
    """A feed server in its own process, started by `simulator()` or `replay_feed()`."""

    def __init__(self, command: list[str], args: list[str], rate: float) -> None:
        self.port = free_port()
        self.rate = rate
        self.process = subprocess.Popen(
            [sys.executable, "-m", *command, "--port", str(self.port), "--rate", str(rate), *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening" not in line:
            self.stop()
            raise RuntimeError(f"{' '.join(command)} did not start: {line!r}")

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> FeedProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def simulator(
    instruments: Path, rate: float, frame_interval_ms: float | None = None
) -> FeedProcess:
    """`python -m ingest.simulator`, recording off (the default: a long run's memory).

    `frame_interval_ms` is the time between its frames (None: the simulator's 100 ms, frames
    of about 900 ticks at 20,000/s over the bench's universe); how much a tick costs the
    ingest depends on how many share a frame, and Upstox's own cadence is not documented."""
    interval = [] if frame_interval_ms is None else ["--interval-ms", str(frame_interval_ms)]
    return FeedProcess(
        ["tickvault", "simulator"],
        ["--seed", "1", "--instruments", str(instruments), *interval],
        rate,
    )


def replay_feed(frames: Path, rate: float) -> FeedProcess:
    """`python -m bench.replay_feed`: recorded frames in a loop, next to no CPU per tick."""
    return FeedProcess(["bench.replay_feed"], [str(frames)], rate)


def cpu_seconds(pid: int, with_children: bool = False) -> float:
    """User + system CPU of a process; with_children adds its live and reaped descendants
    (`tickvault run` is a supervisor whose api child has uvicorn workers of its own).

    A PostgreSQL server is a postmaster and a backend per connection: backends that exit
    are reaped by the postmaster, so their time moves into its children_* counters and a
    difference between two readings counts every backend once.
    """
    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        total = times.user + times.system
        if with_children:
            total += times.children_user + times.children_system
            for child in process.children(recursive=True):
                try:
                    child_times = child.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                total += child_times.user + child_times.system
        return total
    except psutil.NoSuchProcess:
        return float("nan")


class CpuMeter:
    """CPU seconds used by named processes between start() and stop(), as cores busy."""

    def __init__(self, pids: Mapping[str, tuple[int | None, bool]]) -> None:
        self._pids = {name: spec for name, spec in pids.items() if spec[0] is not None}
        self._start: dict[str, float] = {}
        self._started = 0.0
        self._machine_start: float = 0.0

    def _read(self) -> dict[str, float]:
        return {
            name: cpu_seconds(pid, children)  # type: ignore[arg-type]
            for name, (pid, children) in self._pids.items()
        }

    def start(self) -> None:
        self._start = self._read()
        self._machine_start = _machine_busy()
        self._started = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Cores each process kept busy on average (1.0 = one core all the time)."""
        end = self._read()
        elapsed = max(time.monotonic() - self._started, 1e-9)
        cores = {name: round((end[name] - self._start[name]) / elapsed, 3) for name in end}
        cores["machine"] = round((_machine_busy() - self._machine_start) / elapsed, 3)
        return cores


def _machine_busy() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)
