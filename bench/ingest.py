"""End to end: feed process -> websocket -> journal -> decode -> COPY -> committed rows.

Each run gets a fresh database holding the synthetic instrument master, a feed process (the
simulator, or recorded frames replayed) at the offered rate, and the ingest in
`bench.ingest_worker`. Committed rows per second over
the window after the warm-up is the throughput; the writer's own observations and the rows'
`inserted_at - received_at` are the latency.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from bench.common import REPO, DbServer, load_universe, percentiles, replay_feed, simulator
from core.config import Settings
from core.upstox_wire import INSTRUMENTS_PATH

# The writer's defaults (TICKVAULT_BATCH_ROWS, TICKVAULT_BATCH_MS): a batch's age bounds a
# tick's receipt-to-commit time.
BATCH_ROWS = Settings().batch_rows
BATCH_MS = Settings().batch_ms


def run_ingest(
    server: DbServer,
    instruments: Path,
    rate: float,
    seconds: float,
    warmup_s: float,
    batch_rows: int = BATCH_ROWS,
    batch_ms: int = BATCH_MS,
    replay: Path | None = None,
    row_latency: bool = False,
    switch_interval: float | None = None,
    emit_signals: int = 0,
    option_chains: tuple[str, ...] = (),
    check_ledger: bool = False,
    queue_max_rows: int | None = None,
    frame_interval_ms: float | None = None,
) -> dict[str, Any]:
    """One end-to-end run at `rate` offered ticks/s; the worker's report plus row latencies.

    The feed is the simulator, or with `replay` (a file of `bench.replay_feed.save_frames`)
    those recorded frames replayed. `row_latency` adds percentiles of the rows' own times.
    `switch_interval` sets the ingest's `sys.setswitchinterval`, an experiment: how much the
    writer thread loses waiting for the GIL while the event loop decodes. `emit_signals`
    N registers a custom handler that emits a signal for every Nth tick (bench/signals.py).
    `option_chains`: underlyings whose chains the ingest follows, loaded from the
    simulator's master (which lists NIFTY's and BANKNIFTY's); none by default.
    `check_ledger` adds what the store holds once the ingest is gone (see `_ledger`);
    `queue_max_rows` the writer's memory bound, past which it writes from the journal
    (TICKVAULT_QUEUE_MAX_ROWS); `frame_interval_ms` the simulator's time between frames.
    """
    url = server.create_database("bench_ingest")
    try:
        load_universe(url, instruments)
        with (
            tempfile.TemporaryDirectory(prefix="tickvault-bench-ingest-") as data_dir,
            replay_feed(replay, rate)
            if replay
            else simulator(instruments, rate, frame_interval_ms) as feed,
        ):
            if option_chains:
                _load_master(url, feed.url + INSTRUMENTS_PATH, Path(data_dir) / "master.json.gz")
            config = {
                "database_url": url,
                "data_dir": data_dir,
                "feed_url": feed.url,
                "feed_pid": feed.pid,
                "postmaster_pid": server.postmaster_pid,
                "batch_rows": batch_rows,
                "batch_ms": batch_ms,
                "warmup_s": warmup_s,
                "seconds": seconds,
                "switch_interval": switch_interval,
                "emit_signals": emit_signals,
                "option_chains": list(option_chains),
                "queue_max_rows": queue_max_rows,
            }
            worker = subprocess.run(
                [sys.executable, "-m", "bench.ingest_worker", json.dumps(config)],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=seconds + warmup_s + 300,
            )
        if worker.returncode != 0:
            raise RuntimeError(f"the ingest worker failed:\n{worker.stderr[-3000:]}")
        report = json.loads(worker.stdout.strip().splitlines()[-1])
        report["offered_per_s"] = rate
        if row_latency:
            report["row_latency_s"] = _row_latency(
                url, report["window_start_epoch"], report["window_end_epoch"]
            )
        if check_ledger:
            report["ledger"] = _ledger(url)
        return report
    finally:
        server.drop_database(url)


def _load_master(url: str, master_url: str, path: Path) -> None:
    """The feed's instrument master (the bench universe and the simulator's option chains)
    into the database, as the pre-open refresh would load Upstox's."""
    with urllib.request.urlopen(master_url) as response:
        path.write_bytes(response.read())
    load_universe(url, path)


def _row_latency(url: str, start: float, end: float) -> dict[str, float]:
    """p50/p99 of `inserted_at - received_at` over rows received in the window.

    `inserted_at` is clock_timestamp() as COPY inserts the row, so it falls within one batch
    write of the commit: add the batch write time for an upper bound of receipt-to-commit.
    """
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), percentile_disc(ARRAY[0.5, 0.99]) WITHIN GROUP"
            " (ORDER BY extract(epoch FROM inserted_at - received_at))"
            " FROM ticks WHERE received_at BETWEEN to_timestamp(%s) AND to_timestamp(%s)",
            [start, end],
        ).fetchone()
    assert row is not None
    count, (p50, p99) = row[0], row[1] or (None, None)
    return {"rows": count, "p50": float(p50 or "nan"), "p99": float(p99 or "nan")}


def _ledger(url: str) -> dict[str, int]:
    """Nothing lost: the committed batches cover the journal from seq 1 without a hole, and
    the stored rows are the rows they recorded. (What was not committed is in the journal,
    which a restart writes; the exactly-once tests check that part.)"""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(max(last_seq), 0),"
            " count(*) FILTER (WHERE first_seq <> coalesce(previous + 1, 1)),"
            " coalesce(sum(row_count), 0)::bigint, (SELECT count(*) FROM ticks)"
            " FROM (SELECT first_seq, last_seq, row_count,"
            " lag(last_seq) OVER (ORDER BY first_seq) AS previous FROM ingest_batches) b"
        ).fetchone()
    assert row is not None
    batches, last_seq, holes, recorded, stored = row
    return {
        "batches": batches,
        "committed_seq": last_seq,
        "holes": holes,
        "rows_recorded": recorded,
        "rows_stored": stored,
    }


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The report with the raw latency lists replaced by their percentiles."""
    out = {k: v for k, v in report.items() if k not in ("commit_latency_s", "batch_write_s")}
    out["batches"] = len(report["commit_latency_s"])
    out["commit_latency_s"] = percentiles(report["commit_latency_s"])
    out["batch_write_s"] = percentiles(report["batch_write_s"])
    return out
