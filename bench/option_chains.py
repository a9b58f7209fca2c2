"""What following option chains costs the ingest: CPU per tick with and without them.

Two end-to-end runs (bench/ingest.py) at the same offered rate on the same universe: the
first follows no chain, the second NIFTY's and BANKNIFTY's nearest two expiries, 15 strikes
each side (the defaults: 4 windows, 248 contracts in `option_greeks` mode), loaded from the
simulator's master. The feed's rate is spread over whatever is subscribed, so both runs carry
the same ticks per second; option ticks carry greeks, IV and OI, and the chain follower plans
once a second. The issue's target: no more than 20% more ingest CPU per tick.

    .venv/bin/python -m bench.option_chains --rate 20000 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.common import db_server, write_universe
from bench.ingest import run_ingest

# One connection carries the universe in `full` and the chains in `option_greeks`: combined,
# at most 1,500 `full` keys, so the universe is kept under that.
STOCKS = 1200


def _per_tick(report: dict) -> dict[str, float]:
    rate = report["committed_per_s"]
    cores = report["cpu_cores"]
    return {name: round(cores[name] * 1e6 / rate, 1) for name in ("ingest", "feed")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.option_chains")
    parser.add_argument("--rate", type=float, default=20_000.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="tickvault-bench-chains-") as scratch:
        instruments = Path(scratch) / "instruments.json"
        write_universe(instruments, STOCKS)
        with db_server() as server:
            for name, chains in (("without", ()), ("with", ("NIFTY", "BANKNIFTY"))):
                report = run_ingest(
                    server, instruments, args.rate, args.seconds, args.warmup, option_chains=chains
                )
                results[name] = {
                    "committed_per_s": report["committed_per_s"],
                    "us_per_tick": _per_tick(report),
                    "cpu_cores": report["cpu_cores"],
                    "option_windows": report["option_windows"],
                }
    ingest = [results[name]["us_per_tick"]["ingest"] for name in ("without", "with")]
    results["ingest_cpu_per_tick_ratio"] = round(ingest[1] / ingest[0], 3)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
