"""CPU per tick of the ingest's per-tick handlers, compiled against their Python references:
`python -m bench.hot_path`.

The end-to-end figure (`ingest_cpu_us_per_tick`, bench/ingest.py) moves by a fifth from one
run to the next on a shared machine; this one times the parts alone, in one process, so that
what compiling each one bought is seen without the rest: the published tables' slot writes
(latest ticks and forming bars: `LatestTickPublisher.publish` with the compiled slot writer
and as the reference alone) and the forming bars' fold and rows (`MinuteBarHandler`, whose
rows are packed slot bodies, and `PythonMinuteBarHandler`). The rows are the universe's
shape: a few thousand instruments, each tick a new trade of its own instrument. The figure is
the best of `--repeats`, which is what the code costs when nothing else takes the core.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ingest.channels.latest_publisher import SLOTS_IMPLEMENTATION, LatestTickPublisher
from ingest.channels.latest_table import BARS
from ingest.minute_bars import BARS_IMPLEMENTATION, MinuteBarHandler, PythonMinuteBarHandler
from store.tick_row import TICK_COLUMNS, TICK_PG_TYPES

START_US = 849_999_960 * 1_000_000  # the start of a minute in 2026: the rounds stay in it


class _ReferencePublisher(LatestTickPublisher):
    _write_slots = _write_bodies = None


def _ticks(instruments: int, rounds: int, rng: random.Random) -> list[tuple]:
    """`rounds` ticks of every instrument, every column set as a full-mode tick has it."""
    ticks = []
    for n in range(rounds):
        for i in range(instruments):
            row: list[object] = [f"NSE_FO|{40000 + i}"]
            for name, pg_type in zip(TICK_COLUMNS[1:], TICK_PG_TYPES[1:], strict=True):
                if pg_type == "timestamptz":
                    row.append(START_US + n * 1_000_000 + i)
                elif pg_type == "float8":
                    row.append(round(100 + rng.uniform(-5, 5), 2))
                else:
                    row.append(rng.randint(0, 10_000) if name != "volume_delta" else 3)
            ticks.append(tuple(row))
    return ticks


def _best(run: Callable[[], int], repeats: int) -> float:
    """The least seconds per item of `repeats` calls of `run` (which returns its items)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        items = run()
        best = min(best, (time.perf_counter() - started) / items)
    return best


def measure(instruments: int, repeats: int) -> dict[str, object]:
    rng = random.Random(21)
    ticks = _ticks(instruments, 3, rng)
    first = ticks[:instruments]
    result: dict[str, object] = {
        "instruments": instruments,
        "slots_implementation": SLOTS_IMPLEMENTATION,
        "bars_implementation": BARS_IMPLEMENTATION,
    }
    with tempfile.TemporaryDirectory(prefix="tickvault-hot-path-") as scratch:
        for name, publisher_class in (
            ("compiled", LatestTickPublisher),
            ("reference", _ReferencePublisher),
        ):
            with publisher_class(Path(scratch) / f"{name}.bin", instruments) as publisher:
                publisher.publish(first)  # the keys' slots exist: every later row is an update
                result[f"publish_tick_{name}_us"] = 1e6 * _best(
                    lambda p=publisher: p.publish(first), repeats
                )
        for name, handler_class, publisher_class in (
            ("compiled", MinuteBarHandler, LatestTickPublisher),
            ("reference", PythonMinuteBarHandler, _ReferencePublisher),
        ):
            folds, rows, publishes = [], [], []
            with publisher_class(
                Path(scratch) / f"bars-{name}.bin", instruments, shape=BARS
            ) as publisher:
                for _ in range(repeats):
                    handler = handler_class()
                    handler.on_frame(0, first)
                    publisher.publish_changed(handler.take_published())
                    started = time.perf_counter()
                    handler.on_frame(1, ticks)
                    folds.append((time.perf_counter() - started) / len(ticks))
                    started = time.perf_counter()
                    changed = handler.take_published()  # the compiled one's packed
                    rows.append((time.perf_counter() - started) / instruments)
                    started = time.perf_counter()
                    publisher.publish_changed(changed)
                    publishes.append((time.perf_counter() - started) / instruments)
            result[f"bars_fold_tick_{name}_us"] = 1e6 * min(folds)
            result[f"bars_rows_row_{name}_us"] = 1e6 * min(rows)
            result[f"bars_publish_row_{name}_us"] = 1e6 * min(publishes)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hot_path", description=__doc__)
    parser.add_argument("--instruments", type=int, default=2000, help="the universe's size")
    parser.add_argument("--repeats", type=int, default=15, help="runs of each; the best counts")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.instruments, args.repeats)))


if __name__ == "__main__":
    main()
