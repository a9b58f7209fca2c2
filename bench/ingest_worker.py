"""The ingest under test, alone in its process: `python -m bench.ingest_worker CONFIG_JSON`.

It runs `WebSocketService` exactly as `tickvault ingest` does, against a feed in another
process, so that its peak memory (VmHWM) and CPU are the ingest's own. The measuring window
opens after a warm-up; the writer's two latency histograms are wrapped to keep each raw
observation, because their buckets are too coarse for a p99. The result is one JSON line.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import CpuMeter
from core.config import Secret, Settings
from core.heap import INGEST_YOUNG_THRESHOLD, settle_startup_heap
from ingest.service import WebSocketService, emit_signal
from ingest.tick_data import TickData

# A backlog left at the end of the window is not part of the measurement: its flush may take
# this long (a clean stop writes everything), then the worker leaves it.
FLUSH_TIMEOUT_S = 15.0


class _Recording:
    """A histogram stand-in that keeps (wall time, value) of every observation."""

    def __init__(self, histogram: Any) -> None:
        self._histogram = histogram
        self.observations: list[tuple[float, float]] = []

    def observe(self, value: float) -> None:
        self.observations.append((time.time(), value))
        self._histogram.observe(value)

    def between(self, start: float, end: float) -> list[float]:
        return [value for at, value in self.observations if start <= at <= end]


class _CollectorTime:
    """The cyclic collector's passes over a window, by generation: their count and seconds
    (a young pass per 700 net allocations cost the ingest 3.5% of its CPU, issue 21)."""

    def __init__(self) -> None:
        self.passes = {generation: [0, 0.0] for generation in range(3)}
        self._began = 0.0

    def start(self) -> None:
        gc.callbacks.append(self._on_pass)

    def stop(self) -> None:
        gc.callbacks.remove(self._on_pass)

    def _on_pass(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        spent = self.passes[info["generation"]]
        spent[0] += 1
        spent[1] += time.perf_counter() - self._began

    def report(self) -> dict[str, dict[str, float]]:
        return {
            f"generation_{generation}": {"passes": count, "seconds": round(seconds, 4)}
            for generation, (count, seconds) in self.passes.items()
        }


def _feed_ticks(feed_url: str) -> int:
    with urllib.request.urlopen(f"{feed_url}/_sim/stats", timeout=10) as response:
        return int(json.load(response)["ticks_sent"])


def _counts(service: WebSocketService) -> dict[str, int]:
    status = service.status()
    return {
        "committed": int(status.writer.rows_written),
        "decoded": int(status.cache.ticks_processed),
        "frames": int(status.pipeline.frames),
    }


class _Emitter:
    """`emit_signals: N`: a custom handler that emits a signal for every Nth tick it sees."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.seen = 0

    async def handle_tick(self, tick: TickData) -> bool:
        self.seen += 1
        if self.seen % self.every:
            return False
        emit_signal("tick", tick.last_price, volume=tick.volume)
        return True


def _vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(config: dict[str, Any]) -> dict[str, Any]:
    settings = Settings(
        data_dir=Path(config["data_dir"]),
        upstox_access_token=Secret("bench"),
        upstox_api_base=config["feed_url"],
        batch_rows=config["batch_rows"],
        batch_ms=config["batch_ms"],
        queue_max_rows=config.get("queue_max_rows") or Settings().queue_max_rows,
        log_level="WARNING",
        option_chains=tuple(config.get("option_chains", ())),
    )
    service = WebSocketService(settings, config["database_url"])
    if config.get("emit_signals"):
        await service.register_handler(_Emitter(config["emit_signals"]).handle_tick)
    latency = service.metrics.commit_latency_seconds = _Recording(
        service.metrics.commit_latency_seconds
    )
    batch = service.metrics.batch_seconds = _Recording(service.metrics.batch_seconds)
    meter = CpuMeter(
        {
            "ingest": (os.getpid(), False),
            "feed": (config["feed_pid"], False),
            "postgres": (config.get("postmaster_pid"), True),
        }
    )
    if config.get("switch_interval"):
        sys.setswitchinterval(config["switch_interval"])
    flushed = True
    await service.start()
    # As `tickvault ingest` does once its service has started.
    settle_startup_heap(young_threshold=INGEST_YOUNG_THRESHOLD)
    try:
        await asyncio.sleep(config["warmup_s"])
        feed_start = await asyncio.to_thread(_feed_ticks, config["feed_url"])
        start, started = _counts(service), time.time()
        collector = _CollectorTime()
        collector.start()
        meter.start()
        timeline = []  # (s into the window, decoded, committed, queue rows): where it went
        while time.time() - started < config["seconds"]:
            await asyncio.sleep(1.0)
            counts = _counts(service)
            queue = int(service.status().writer.queue_depth)
            timeline.append(
                (round(time.time() - started, 1), counts["decoded"], counts["committed"], queue)
            )
        end, ended = _counts(service), time.time()
        cores = meter.stop()
        collector.stop()
        feed_end = await asyncio.to_thread(_feed_ticks, config["feed_url"])
        final = service.status()
    finally:
        try:
            await asyncio.wait_for(service.stop(), FLUSH_TIMEOUT_S)
        except TimeoutError:
            flushed = False  # main() exits without waiting for the rest
    window = ended - started
    return {
        "flushed": flushed,
        "window_s": round(window, 2),
        "window_start_epoch": started,
        "window_end_epoch": ended,
        "sent_per_s": round((feed_end - feed_start) / window, 1),
        "decoded_per_s": round((end["decoded"] - start["decoded"]) / window, 1),
        "committed_per_s": round((end["committed"] - start["committed"]) / window, 1),
        "ticks_per_frame": round(
            (end["decoded"] - start["decoded"]) / max(end["frames"] - start["frames"], 1), 1
        ),
        "max_queue_rows": max((queue for *_, queue in timeline), default=0),
        "queue_rows_at_end": final.writer.queue_depth,
        "oldest_unwritten_s_at_end": final.writer.oldest_unwritten_tick_age_s,
        "journal_only_spills": final.writer.spills,
        "writer_errors": final.writer.errors,
        "cpu_cores": cores,
        "commit_latency_s": latency.between(started, ended),
        "batch_write_s": batch.between(started, ended),
        "vm_hwm_mib": round(_vm_hwm_mib(), 1),
        "gc": collector.report(),
        "signals": asdict(final.signals) if final.signals else None,
        "handlers": [asdict(handler) for handler in final.pipeline.custom_handlers],
        "option_windows": [
            (w.underlying, str(w.expiry), w.key_count) for w in final.option_chains.windows
        ]
        if final.option_chains
        else [],
        "timeline": timeline,
    }


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    config = json.loads(sys.argv[1])
    result = asyncio.run(run(config))
    print(json.dumps(result), flush=True)
    if not result["flushed"]:
        os._exit(0)  # writer threads may still hold a batch; the database is thrown away
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
