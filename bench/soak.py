"""Soak: `tickvault run` on the built-in simulator for N minutes, each process's RSS sampled.

`.venv/bin/python -m bench.soak --minutes 10` runs `python -m tickvault run` with no token
(the ingest then embeds the simulator, as on a fresh machine) at a fast simulator rate, on a
fresh database of the benchmarks' server and a private data directory, and samples the RSS
of the supervisor, the ingest (the simulator is inside it) and the api every few seconds.
What it prints per process is the slope of a least-squares line through the samples after
the warm-up, in kB/s: a long-running process whose memory is bounded shows a slope near 0
however long it runs; one that keeps something per tick shows the tick rate times the bytes
kept.

`--also PYTHON` runs a second `tickvault run` beside the first, from another checkout's
interpreter (e.g. /work/main/.venv/bin/python), on its own database and data directory, so
that code before and after a change is measured side by side on the same machine and load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench.common import REPO, DbServer, db_server, free_port, machine

ROLES = ("run", "ingest", "api")  # `python -m tickvault <role>`; uvicorn workers count as api
KB = 1024


@dataclass
class Run:
    """One `tickvault run` and its RSS samples: role -> [(seconds since start, bytes, pid)]
    (the pid of the role's main process: a restarted child starts its slope afresh)."""

    name: str
    process: subprocess.Popen[bytes]
    workdir: Path
    database_url: str
    samples: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)

    def sample(self, now: float) -> None:
        """RSS of each role's processes now (an api's uvicorn workers add to `api`)."""
        totals: dict[str, int] = {}
        pids: dict[str, int] = {}
        try:
            tree = [psutil.Process(self.process.pid)]
            tree += tree[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for proc in tree:
            try:
                role = _role(proc.cmdline())
                if role is not None:
                    totals[role] = totals.get(role, 0) + proc.memory_info().rss
                    pids.setdefault(role, proc.pid)  # the parent comes before its workers
            except psutil.NoSuchProcess:
                continue
        for role, rss in totals.items():
            self.samples.setdefault(role, []).append((now, rss, pids[role]))

    def ticks(self) -> int:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM ticks").fetchone()
        return int(row[0]) if row else 0

    def log_tail(self, lines: int = 20) -> str:
        text = (self.workdir / "run.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _role(cmdline: Sequence[str]) -> str | None:
    if "tickvault" in cmdline:
        after = cmdline[cmdline.index("tickvault") + 1 :]
        return after[0] if after and after[0] in ROLES else None
    # uvicorn's workers are multiprocessing children of the api
    return "api" if any("multiprocessing" in part for part in cmdline) else None


def slope_kb_s(points: Sequence[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time, in kB/s."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_r = sum(r for _, r in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (r - mean_r) for t, r in points)
    return cov / var / KB if var else float("nan")


@contextmanager
def tickvault_run(
    server: DbServer, name: str, python: str, rate: int, extra_env: dict[str, str]
) -> Iterator[Run]:
    """`python -m tickvault run` on a fresh database, stopped with SIGTERM as on Ctrl-C."""
    url = server.create_database(f"soak_{name}")
    workdir = Path(tempfile.mkdtemp(prefix=f"tickvault-soak-{name}-"))
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TICKVAULT_", "UPSTOX_"))
    }
    env.update(
        {
            "TICKVAULT_DATABASE_URL": url,
            "TICKVAULT_DATA_DIR": str(workdir / "data"),
            "TICKVAULT_API_PORT": str(free_port()),
            "TICKVAULT_API_WORKERS": "1",
            "TICKVAULT_SIMULATOR_RATE": str(rate),
            "TICKVAULT_LOG_LEVEL": "WARNING",
            "UPSTOX_ACCESS_TOKEN": "",  # the built-in simulator, whatever the environment says
            **extra_env,
        }
    )
    log = (workdir / "run.log").open("wb")
    # cwd: a directory without .env, so the run sees this environment only.
    process = subprocess.Popen(
        [python, "-m", "tickvault", "run"], cwd=workdir, env=env, stdout=log, stderr=log
    )
    try:
        yield Run(name, process, workdir, url)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        server.drop_database(url)
        shutil.rmtree(workdir, ignore_errors=True)


def soak(
    runs: Sequence[tuple[str, str]], minutes: float, warmup_s: float, every_s: float, rate: int
) -> dict[str, dict[str, Any]]:
    """Each (name, python) runs side by side for `minutes`; per run: ticks stored per second
    and, per role, the RSS after the warm-up, at the end, and the slope after the warm-up."""
    with db_server() as server, ExitStack() as stack:
        started = [
            stack.enter_context(tickvault_run(server, name, python, rate, {}))
            for name, python in runs
        ]
        start = time.monotonic()
        end = start + minutes * 60
        while (now := time.monotonic()) < end:
            for run in started:
                if run.process.poll() is not None:
                    raise SystemExit(
                        f"{run.name}: tickvault run exited {run.process.returncode}; see"
                        f" {run.workdir / 'run.log'}"
                    )
                run.sample(now - start)
            time.sleep(max(0.0, every_s - (time.monotonic() - now)))
        elapsed = time.monotonic() - start
        return {run.name: _summary(run, warmup_s, elapsed) for run in started}


def _summary(run: Run, warmup_s: float, elapsed: float) -> dict[str, Any]:
    """The slope of each role's last process, from `warmup_s` after it first showed."""
    roles: dict[str, dict[str, float]] = {}
    restarted = False
    for role, points in sorted(run.samples.items()):
        last_pid = points[-1][2]
        own = [(t, rss) for t, rss, pid in points if pid == last_pid]
        after = [(t, rss) for t, rss in own if t >= own[0][0] + warmup_s]
        processes = len(dict.fromkeys(pid for _, _, pid in points))
        restarted = restarted or processes > 1
        roles[role] = {
            "rss_after_warmup_mb": round(after[0][1] / KB**2, 1) if after else float("nan"),
            "rss_end_mb": round(points[-1][1] / KB**2, 1),
            "slope_kb_s": round(slope_kb_s(after), 1),
            "samples": len(after),
            "processes": processes,
        }
    return {
        "ticks_per_s": round(run.ticks() / elapsed),
        "roles": roles,
        "log_tail": run.log_tail() if restarted else "",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=60.0, help="left out of the slope")
    parser.add_argument("--every-s", type=float, default=2.0, help="between RSS samples")
    parser.add_argument("--rate", type=int, default=5000, help="simulator ticks per second")
    parser.add_argument(
        "--also", metavar="PYTHON", help="another checkout's python, run side by side"
    )
    args = parser.parse_args(argv)
    runs = [("this", sys.executable)]
    if args.also:
        runs.append(("also", args.also))
    results = soak(runs, args.minutes, args.warmup_s, args.every_s, args.rate)
    print(json.dumps({"machine": machine(), "args": vars(args), "repo": str(REPO)}, indent=1))
    for name, result in results.items():
        python = dict(runs)[name]
        print(f"{name} ({python}): {result['ticks_per_s']} ticks stored per second")
        for role, summary in result["roles"].items():
            restarts = summary["processes"] - 1
            print(
                f"  {role:6} RSS {summary['rss_after_warmup_mb']:7.1f} ->"
                f" {summary['rss_end_mb']:7.1f} MB, slope after warm-up"
                f" {summary['slope_kb_s']:8.1f} kB/s ({summary['samples']} samples"
                + (f"; restarted {restarts}x, slope of the last" if restarts else "")
                + ")"
            )
        if result["log_tail"]:
            print(f"  a child restarted; the end of its run.log:\n{result['log_tail']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
