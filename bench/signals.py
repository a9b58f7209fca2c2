"""What a handler emitting signals costs the ingest: `python -m bench.signals`.

End-to-end runs of bench/ingest.py at the same offered rate (20,000 ticks/s): without a
custom handler; with one that emits nothing (what any handler costs); with one that emits a
signal for every 10th tick it sees (about 2,000 signals/s: "thousands a second"); and for
every tick (up to 20,000/s, far past any strategy).
For each: committed ticks/s and its ratio to the run without, the ingest's cores, and what
the signals' task stored per second, dropped and still held at the end of the window.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, db_server, write_universe
from bench.ingest import run_ingest

RATE = 20_000
STOCKS = 1800
# No handler; one that emits nothing (what any handler costs: a TickData per tick); a
# signal for every 10th tick; one for every tick.
EVERY = (0, 10**12, 10, 1)


def run(rate: float, seconds: float, warmup_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tickvault-bench-signals-") as scratch:
        instruments = Path(scratch) / "instruments.json"
        write_universe(instruments, STOCKS)
        with db_server() as server:
            runs = [
                run_ingest(server, instruments, rate, seconds, warmup_s, emit_signals=every)
                for every in EVERY
            ]
    baseline = runs[0]["committed_per_s"]
    report: dict[str, Any] = {"offered_per_s": rate, "window_s": seconds}
    for every, result in zip(EVERY, runs, strict=True):
        name = {0: "no_handler", EVERY[1]: "handler_no_signals"}.get(
            every, f"signal_every_{every}_ticks"
        )
        entry = {
            "committed_per_s": result["committed_per_s"],
            "rate_ratio": round(result["committed_per_s"] / max(baseline, 1), 3),
            "ingest_cores": result["cpu_cores"]["ingest"],
            "postgres_cores": result["cpu_cores"]["postgres"],
        }
        if every:
            signals = result["signals"]
            [handler] = result["handlers"]
            entry |= {
                "signals_emitted": signals["emitted"],
                "signals_stored": signals["stored"],
                "signals_dropped": signals["dropped"],
                "signals_pending_at_end": signals["pending"],
                "handler_pending_at_end": handler["pending"],
                "handler_dropped_ticks": handler["dropped"],
            }
        report[name] = entry
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=RATE, help="offered ticks/s")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=5)
    args = parser.parse_args()
    report = run(args.rate, args.seconds, args.warmup)
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (RESULTS_DIR / f"signals-{stamp}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
