"""Anonymous routes beside a flood of the most expensive one: `python -m bench.api_flood`.

`tickvault api` (two workers, the default) serves a store of DAYS trading days of a
universe of STOCKS F&O stocks (an NSE_EQ and a FUT each, every key subscribed, a tick of
each every TICK_EVERY_S: 1.8 million ticks and one chunk a day). The ingest's coverage
spans cover every day but a three-minute stall, except the first day, which has none (ticks
stored before coverage was recorded): each of its minutes is a gap full of ticks. Latest
ticks come from a table this process publishes, as in bench/api_cpu.py, so no ingest or
simulator competes for the two cores.

The normal load, each part open loop from its own `bench.load` process: latest ticks of 10
symbols at LATEST_RPS and one symbol's 1-minute bars of the last day at BARS_RPS. It runs
alone, then beside FLOOD_RPS of each flood route in turn, for `--seconds` each; the report
gives each part's p50 and p99 per phase, the flood's statuses, the database's CPU, and the
ratio of each p99 under a flood to its p99 alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg

from bench.api_cpu import SYMBOLS, _publishing, _wait_for_ticks
from bench.common import REPO, CpuMeter, DbServer, api_env, db_server, free_port, write_universe
from bench.common import load_universe as load_master
from store.bars import refresh_bars
from store.calendar import regular_sessions
from store.instruments import resolve_symbols

STOCKS = 200
DAYS = 3
FIRST_DAY = date(2026, 11, 24)  # a Tuesday: DAYS weekdays follow
TICK_EVERY_S = 5
LATEST_RPS = 100.0
BARS_RPS = 10.0
FLOOD_RPS = 10.0


def _store_days(url: str) -> list[date]:
    """Every key subscribed; DAYS sessions of ticks; spans of all but the first day."""
    days = [FIRST_DAY + timedelta(days=i) for i in range(DAYS)]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO subscriptions (instrument_key, status, subscribed_at, updated_at)"
            " SELECT instrument_key, 'subscribed', %(since)s, %(since)s FROM instruments",
            {"since": datetime(2026, 11, 1, tzinfo=UTC)},
        )
        for index, day in enumerate(days):
            [(opens, closes)] = regular_sessions(day)
            conn.execute(
                "INSERT INTO ticks (instrument_key, ts, ltp, ltq, vtt, volume_delta, received_at)"
                " SELECT k.key, t, 100 + s %% 50, 1, s, 1, t"
                " FROM (SELECT instrument_key, row_number() OVER () FROM instruments)"
                "      AS k(key, n),"
                "      generate_series(0, %(ticks)s - 1) AS s,"
                "      LATERAL (SELECT %(opens)s + s * %(every)s + k.n * INTERVAL '7 ms') AS x(t)",
                {
                    "opens": opens,
                    "every": timedelta(seconds=TICK_EVERY_S),
                    "ticks": int((closes - opens).total_seconds()) // TICK_EVERY_S,
                },
            )
            if index:  # heard from before the open to the close, but for 10:02-10:05
                stall = opens + timedelta(minutes=47, seconds=40)
                conn.execute(
                    "INSERT INTO coverage_spans (connection, started_at, ended_at)"
                    " VALUES (0, %s, %s), (0, %s, %s)",
                    [opens - timedelta(minutes=1), stall, stall + timedelta(minutes=2, seconds=30),
                     closes + timedelta(minutes=1)],
                )  # fmt: skip
        [(opens, closes)] = regular_sessions(days[-1])
        refresh_bars(conn, opens, closes)
        conn.execute("VACUUM ANALYZE")
    return days


def _routes(days: list[date], symbol: str) -> dict[str, str]:
    """The flood routes: the review's (one symbol's coverage of a recorded day), and the
    costliest anonymous request there is (every instrument's coverage of a day of gaps)."""
    return {
        "coverage_one_symbol": "/api/v1/coverage?"
        + urlencode({"date": days[-1], "symbol": symbol}),
        "coverage_every_symbol_unrecorded_day": f"/api/v1/coverage?date={days[0]}",
    }


def _open_loop(url: str, rate: float, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.load", url, "--rate", str(rate), "--seconds", str(seconds)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


def _report(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate()
    if process.returncode:
        raise RuntimeError(f"bench.load failed with {process.returncode}")
    report = json.loads(out.strip().splitlines()[-1])
    return {
        "statuses": report["statuses"],
        "errors": report["errors"],
        "achieved_rps": report["achieved_rps"],
        **report["latency_ms"],
    }


def _phase(
    base: str, normal: dict[str, tuple[str, float]], flood: str | None, seconds: float,
    server: DbServer,
) -> dict[str, Any]:  # fmt: skip
    """The normal load for `seconds`, beside FLOOD_RPS of `flood` when given."""
    meter = CpuMeter({"postgres": (server.postmaster_pid, True)})
    meter.start()
    loads = {name: _open_loop(base + path, rate, seconds) for name, (path, rate) in normal.items()}
    if flood is not None:
        loads["flood"] = _open_loop(base + flood, FLOOD_RPS, seconds)
    result = {name: _report(process) for name, process in loads.items()}
    result["cpu_cores"] = meter.stop()
    return result


def measure(seconds: float) -> dict[str, Any]:
    with db_server() as server, tempfile.TemporaryDirectory(prefix="tickvault-flood-") as tmp:
        url = server.create_database("bench_api_flood")
        try:
            instruments = Path(tmp) / "instruments.json"
            stocks = write_universe(instruments, STOCKS)
            load_master(url, instruments)
            days = _store_days(url)
            with psycopg.connect(url) as conn:
                keys = resolve_symbols(conn, stocks[:SYMBOLS])
            data_dir = Path(tmp) / "data"
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            [(opens, closes)] = regular_sessions(days[-1])
            window = urlencode({"start": opens.isoformat(), "end": closes.isoformat()})
            normal = {
                "latest_ticks": (
                    f"/api/v1/websocket/latest-ticks?symbols={','.join(stocks[:SYMBOLS])}",
                    LATEST_RPS,
                ),
                "bars": (f"/api/v1/bars/{stocks[1]}?{window}", BARS_RPS),
            }
            env = api_env(url, data_dir, port, workers=2, log_level="ERROR")
            with _publishing(data_dir, [keys[symbol] for symbol in stocks[:SYMBOLS]]):
                api = subprocess.Popen(
                    [sys.executable, "-m", "tickvault", "api"],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    _wait_for_ticks(base + normal["latest_ticks"][0], api)
                    _phase(base, normal, None, min(seconds, 5), server)  # warm-up
                    phases = {"alone": _phase(base, normal, None, seconds, server)}
                    for name, path in _routes(days, stocks[0]).items():
                        phases[name] = _phase(base, normal, path, seconds, server)
                finally:
                    api.terminate()
                    api.wait(60)
        finally:
            server.drop_database(url)
    return {"seconds": seconds, "phases": phases, "p99_ratios": _ratios(phases)}


def _ratios(phases: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each normal part's p99 under each flood over its p99 alone."""
    alone = phases["alone"]
    return {
        flood: {
            part: round(result[part]["p99"] / alone[part]["p99"], 2)
            for part in ("latest_ticks", "bars")
        }
        for flood, result in phases.items()
        if flood != "alone"
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.api_flood", description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="of each phase")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.seconds), indent=1))


if __name__ == "__main__":
    main()
