"""Run every benchmark, write the raw results as JSON under bench/results/, print a table.

`python -m bench.run_all` (what `make bench` runs) takes about 8 minutes; `--quick` is a
one-minute smoke run that checks the benchmarks still work, not a source of numbers. The
database is a private cluster in /tmp unless TICKVAULT_DATABASE_URL names a server.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import api, ingest, offline, option_chain, read_path, stream_fanout, stream_idle
from bench.common import RESULTS_DIR, db_server, machine, write_universe
from bench.replay_feed import save_frames

BENCHMARKS = (
    "offline",
    "throughput",
    "replay",
    "ceiling",
    "latency",
    "api",
    "read_path",
    "stream",
    "option_chain",
)
# The ceiling run offers the replayed frames at this multiple of the same run's raw COPY rate:
# more than the store can take, so what it commits is its ceiling, and the overload is 2x.
CEILING_OVER_RAW_COPY = 2.0
# Slices of the ceiling run's window whose committed rates must stay near the whole window's:
# a collapse under overload shows as a slow last slice.
OVERLOAD_SLICE_S = 10.0
# The writer's memory bound in the second ceiling run: two batches, so it writes from the
# journal for most of the window, the path an overload longer than the default bound takes.
JOURNAL_BOUND_ROWS = 2 * ingest.BATCH_ROWS
# The default TICKVAULT_BATCH_MS first, then 100 ms side by side if the default is another:
# the batch age bounds a tick's receipt-to-commit time.
LATENCY_BATCH_MS = tuple(dict.fromkeys((ingest.BATCH_MS, 100)))
TARGETS = {
    "throughput_per_s": 100_000,
    "latency_p99_s": 0.25,
    "api_rps": 1000,
    "read_ticks_over_copy_binary": 0.5,
    "read_bars_universe_month_s": 2.0,
    "read_peak_over_frame": 2.0,
    "option_chain_p99_ms": 50.0,
    "option_chain_now_p99_ms": 5.0,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (~1 minute)")
    parser.add_argument(
        "--seconds",
        type=float,
        help="window of the two throughput runs (default 60; quick 8); others use up to 30 s",
    )
    parser.add_argument("--rate", type=float, default=100_000, help="offered ticks/s, throughput")
    parser.add_argument("--latency-rate", type=float, default=20_000, help="ticks/s, latency+API")
    parser.add_argument("--api-rps", type=float, default=1000, help="offered latest-tick req/s")
    parser.add_argument("--stocks", type=int, default=1800, help="F&O stocks in the universe")
    parser.add_argument("--only", choices=BENCHMARKS, action="append", help="repeatable")
    parser.add_argument(
        "--frame-interval-ms",
        type=float,
        help="the simulator's time between frames, also in the frames recorded for the replay"
        " (its default: 100 ms, frames of about 900 ticks at 20,000/s)",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=0.0005,
        help="sys.setswitchinterval() of the ingest (tickvault ingest/run set 0.0005)",
    )
    parser.add_argument(
        "--summary", type=Path, help="also write the headline figures as a flat JSON object"
    )
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    seconds = args.seconds or (8.0 if quick else 60.0)
    window = min(seconds, 30.0)
    warmup = 2.0 if quick else 5.0
    chosen = args.only or BENCHMARKS
    if "ceiling" in chosen and "offline" not in chosen:
        chosen = ["offline", *chosen]  # its offered rate is a multiple of raw COPY's
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": {
            "quick": quick,
            "throughput_window_s": seconds,
            "window_s": window,
            "warmup_s": warmup,
            "offered_rate": args.rate,
            "latency_rate": args.latency_rate,
            "api_rps": args.api_rps,
            "stocks": args.stocks,
            "batch_rows": ingest.BATCH_ROWS,
            "batch_ms": ingest.BATCH_MS,
            "switch_interval": args.switch_interval,
            "frame_interval_ms": args.frame_interval_ms,
        },
    }
    with tempfile.TemporaryDirectory(prefix="tickvault-bench-") as scratch:
        instruments = Path(scratch) / "instruments.json"
        symbols = write_universe(instruments, args.stocks)
        with db_server() as server:
            results["machine"]["database"] = server.version
            frames_path = Path(scratch) / "frames.bin"
            if "offline" in chosen or "replay" in chosen:
                record_s = 1.0 if quick else 3.0
                _step(f"recording {record_s:g} s of frames at {args.latency_rate:,.0f} ticks/s")
                frames = offline.record_frames(
                    instruments, args.latency_rate, record_s, args.frame_interval_ms
                )
                save_frames(frames_path, [frame for frame, _ in frames])
            if "offline" in chosen:
                _step("offline: the recorded frames written by raw COPY, ours and the SDK way")
                results["offline"] = offline.run_offline(server, frames, repeats=1 if quick else 3)
            for name, feed, replay in (
                ("throughput", "simulator", None),
                ("replay", "replayed frames", frames_path),
            ):
                if name not in chosen:
                    continue
                _step(f"throughput: {feed} at {args.rate:,.0f} ticks/s for {seconds:g} s")
                results[name] = ingest.summarize(
                    ingest.run_ingest(
                        server,
                        instruments,
                        args.rate,
                        seconds,
                        warmup,
                        replay=replay,
                        switch_interval=args.switch_interval,
                        frame_interval_ms=args.frame_interval_ms,
                    )
                )
            if "ceiling" in chosen:
                _step(f"ceiling: raw COPY sustained for {seconds:g} s, the window's volume")
                results["raw_copy_sustained"] = offline.sustained_raw_copy(server, frames, seconds)
                rate = (
                    CEILING_OVER_RAW_COPY * results["offline"]["writers"]["raw_copy"]["rows_per_s"]
                )
                for name, bound in (("ceiling", None), ("ceiling_journal", JOURNAL_BOUND_ROWS)):
                    _step(
                        f"{name}: replayed frames at {rate:,.0f} ticks/s for {seconds:g} s"
                        + (f", writer bound {bound:,} rows" if bound else "")
                    )
                    results[name] = ingest.summarize(
                        ingest.run_ingest(
                            server,
                            instruments,
                            rate,
                            seconds,
                            warmup,
                            replay=frames_path,
                            switch_interval=args.switch_interval,
                            check_ledger=True,
                            queue_max_rows=bound,
                        )
                    )
            if "latency" in chosen:
                results["latency"] = {}
                for batch_ms in LATENCY_BATCH_MS[:1] if quick else LATENCY_BATCH_MS:
                    _step(
                        f"latency: {args.latency_rate:,.0f} ticks/s for {window:g} s,"
                        f" batches of up to {batch_ms} ms"
                    )
                    report = ingest.run_ingest(
                        server,
                        instruments,
                        args.latency_rate,
                        window,
                        warmup,
                        batch_ms=batch_ms,
                        row_latency=True,
                        switch_interval=args.switch_interval,
                        frame_interval_ms=args.frame_interval_ms,
                    )
                    summary = ingest.summarize(report)
                    summary["raw_commit_latency_s"] = report["commit_latency_s"]
                    summary["raw_batch_write_s"] = report["batch_write_s"]
                    results["latency"][f"batch_ms_{batch_ms}"] = summary
            if "api" in chosen:
                _step(f"api: {args.api_rps:,.0f} req/s while ingesting {args.latency_rate:,.0f}/s")
                results["api"] = api.run_api(
                    server,
                    instruments,
                    symbols,
                    ingest_rate=args.latency_rate,
                    # Half the offered rate first (latency below saturation), then the rate.
                    loads=([] if quick else [(args.api_rps / 2, window / 2)])
                    + [(args.api_rps, 5.0 if quick else window)],
                    bar_requests=50 if quick else 200,
                    warmup_s=warmup,
                    search_step_s=2.0 if quick else 4.0,
                    frame_interval_ms=args.frame_interval_ms,
                )
            if "read_path" in chosen:
                _step(
                    "read path: a day of one stock's ticks and the universe's month of 5m bars"
                    " into frames"
                )
                results["read_path"] = read_path.run_read_path(server, quick=quick)
            if "stream" in chosen:
                clients = 20 if quick else stream_fanout.CLIENTS
                _step(f"stream: {clients} clients x 50 symbols beside a 20,000/s ingest")
                results["stream"] = stream_fanout.run(
                    server, 8.0 if quick else 20.0, clients, stream_fanout.SYMBOLS, 20_000
                )
                _step("stream: a client that reads nothing, the memory of its worker")
                results["stream_idle"] = stream_idle.run(server, 10.0 if quick else 60.0)
            if "option_chain" in chosen:
                ticks = 500_000 if quick else 5_000_000
                _step(f"option chain: {ticks:,} option ticks of a day, chains at random moments")
                results["option_chain"] = option_chain.run(
                    server, ticks, requests=100 if quick else 500
                )
    return results


def _step(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", flush=True)


# --- the table ----------------------------------------------------------------------------


def _n(value: float, digits: int = 0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _ms(seconds: float) -> str:
    return _n(seconds * 1000, 1) + " ms"


def _kept_up(load: dict) -> bool:
    """The server kept up with the offered load: an open-loop client counts requests due in
    the window, so the last few still in flight at its end leave achieved a hair under."""
    return load["errors"] == 0 and load["achieved_rps"] >= 0.99 * load["offered_rps"]


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _cpu(cores: dict[str, float]) -> str:
    ours = sum(v for k, v in cores.items() if k != "machine" and not math.isnan(v))
    parts = [f"{k} {v:.2f}" for k, v in cores.items() if k != "machine"]
    return ", ".join(parts) + f"; other tenants {max(cores['machine'] - ours, 0):.2f}"


def _us_per_tick(run: dict[str, Any]) -> dict[str, float]:
    rate = run["committed_per_s"]
    return {k: v * 1e6 / rate for k, v in run["cpu_cores"].items() if k != "machine"}


def slice_rates(
    timeline: list[list[float]], column: int, slice_s: float = OVERLOAD_SLICE_S
) -> list[float]:
    """Rows/s of each whole `slice_s` of a timeline whose samples are [s into the window, ...]
    with a running count of rows in `column`: a ceiling run's [s, decoded, committed, queue
    rows] about a second apart, or the sustained raw COPY's [s, committed] at each commit."""
    rates, start = [], timeline[0] if timeline else None
    for point in timeline[1:]:
        if start is not None and point[0] - start[0] >= slice_s - 0.5:
            rates.append((point[column] - start[column]) / (point[0] - start[0]))
            start = point
    return rates


def worst_slice(timeline: list[list[float]], column: int, rate: float) -> float | None:
    """The slowest whole slice of a timeline against `rate`, its whole run's mean: how far
    the run sags below where it levels off (None for a run shorter than a slice)."""
    slices = slice_rates(timeline, column)
    return round(min(slices) / rate, 3) if slices and rate else None


OVERLOAD_KEYS = (
    "e2e_ceiling_ticks_per_s",
    "e2e_ceiling_over_raw_copy",
    "e2e_ceiling_offered_per_s",
    "e2e_ceiling_sent_per_s",
    "e2e_overload_worst_slice_over_ceiling",
    "e2e_overload_vm_hwm_mib",
    "e2e_overload_rows_lost",
    "e2e_overload_journal_ticks_per_s",
    "e2e_overload_journal_over_ceiling",
    "e2e_overload_journal_rows_lost",
)


def overload(results: dict[str, Any]) -> dict[str, float | None]:
    """The ceiling run's figures (None without one): its committed rate against the same
    run's raw COPY, its slowest slice against the whole window (levelling off, not
    collapsing), its peak memory and what it lost."""
    ceiling = results.get("ceiling")
    if ceiling is None:
        return dict.fromkeys(OVERLOAD_KEYS)
    rate = ceiling["committed_per_s"]
    journal = results["ceiling_journal"]
    values = (
        rate,
        round(rate / results["offline"]["writers"]["raw_copy"]["rows_per_s"], 3),
        ceiling["offered_per_s"],
        ceiling["sent_per_s"],
        worst_slice(ceiling["timeline"], column=2, rate=rate),
        ceiling["vm_hwm_mib"],
        _lost(ceiling["ledger"]),
        journal["committed_per_s"],
        round(journal["committed_per_s"] / rate, 3) if rate else None,
        _lost(journal["ledger"]),
    )
    return dict(zip(OVERLOAD_KEYS, values, strict=True))


def _lost(ledger: dict[str, int]) -> int:
    """Committed rows not stored, and holes in the committed journal seqs."""
    return ledger["holes"] + ledger["rows_recorded"] - ledger["rows_stored"]


def table(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measurement, result, target) rows, in the order BENCHMARKS.md shows them."""
    rows: list[tuple[str, str, str]] = []
    for name, feed in (("throughput", "simulator"), ("replay", "replayed frames")):
        if name not in results:
            continue
        t = results[name]
        rows += [
            (
                f"End-to-end committed ticks/s, {feed} at {t['offered_per_s']:,.0f}/s,"
                f" {t['window_s']:g} s",
                f"{_n(t['committed_per_s'])} (sent {_n(t['sent_per_s'])},"
                f" decoded {_n(t['decoded_per_s'])}; oldest unwritten tick at the end"
                f" {t['oldest_unwritten_s_at_end']:.1f} s old, journal-only spills"
                f" {t['journal_only_spills']})",
                f">= 100,000: {_verdict(t['committed_per_s'] >= TARGETS['throughput_per_s'])}",
            ),
            ("  CPU cores busy in that window", _cpu(t["cpu_cores"]), "2 cores in all"),
            ("  peak RSS of the ingest process (VmHWM)", f"{_n(t['vm_hwm_mib'])} MiB", "report"),
        ]
    figures = overload(results)
    if "ceiling" in results:
        c = results["ceiling"]
        rows += [
            (
                f"Ceiling: committed ticks/s, replayed frames offered at"
                f" {c['offered_per_s']:,.0f}/s ({CEILING_OVER_RAW_COPY:g}x raw COPY),"
                f" {c['window_s']:g} s",
                f"{_n(c['committed_per_s'])} (sent {_n(c['sent_per_s'])}, decoded"
                f" {_n(c['decoded_per_s'])}; {figures['e2e_ceiling_over_raw_copy']:.2f} of raw"
                f" COPY; journal-only spills {c['journal_only_spills']})",
                f">= 0.8 of raw COPY: {_verdict(figures['e2e_ceiling_over_raw_copy'] >= 0.8)}",
            ),
            ("  CPU cores busy in that window", _cpu(c["cpu_cores"]), "report"),
            (
                f"  raw COPY sustained {results['raw_copy_sustained']['seconds']:g} s, one"
                " connection (not 61k rows into an empty table)",
                f"{_n(results['raw_copy_sustained']['rows_per_s'])} rows/s, server"
                f" {results['raw_copy_sustained']['server_us_per_row']} us/row, its slowest"
                f" {OVERLOAD_SLICE_S:g} s {_sustained_worst_slice(results)} of that; the ceiling"
                f" is {_over_sustained(results)} of it",
                "report",
            ),
            (
                f"  slowest {OVERLOAD_SLICE_S:g} s of that overload / the whole window; peak RSS;"
                " rows lost",
                f"{figures['e2e_overload_worst_slice_over_ceiling']};"
                f" {_n(c['vm_hwm_mib'])} MiB; {figures['e2e_overload_rows_lost']}",
                ">= 0.9; bounded; 0",
            ),
            (
                f"  the same through the journal (writer bound {JOURNAL_BOUND_ROWS:,} rows)",
                f"{_n(results['ceiling_journal']['committed_per_s'])}"
                f" ({figures['e2e_overload_journal_over_ceiling']} of the ceiling; journal-only"
                f" spills {results['ceiling_journal']['journal_only_spills']}; rows lost"
                f" {figures['e2e_overload_journal_rows_lost']})",
                ">= 0.9 of the ceiling",
            ),
        ]
    for name, lat in results.get("latency", {}).items():
        p99 = lat["commit_latency_s"]["p99"]
        batch_ms = name.removeprefix("batch_ms_")
        rows += [
            (
                f"Receipt to commit at {lat['offered_per_s']:,.0f}/s, batches <= {batch_ms} ms:"
                f" oldest tick of each of {lat['batches']} batches",
                f"p50 {_ms(lat['commit_latency_s']['p50'])}, p99 {_ms(p99)}",
                f"p99 < 250 ms: {_verdict(p99 < TARGETS['latency_p99_s'])}",
            ),
            (
                "  per row inserted_at - received_at; batch write time",
                f"p50 {_ms(lat['row_latency_s']['p50'])}, p99 {_ms(lat['row_latency_s']['p99'])};"
                f" write p50 {_ms(lat['batch_write_s']['p50'])},"
                f" p99 {_ms(lat['batch_write_s']['p99'])}",
                "report",
            ),
        ]
    steady = results.get("latency", {}).get(f"batch_ms_{LATENCY_BATCH_MS[0]}")
    if steady:
        per_tick = _us_per_tick(steady)
        rows += [
            (
                f"CPU at {steady['offered_per_s']:,.0f}/s"
                f" (committed {_n(steady['committed_per_s'])}/s)",
                _cpu(steady["cpu_cores"]),
                "report",
            ),
            (
                "  CPU us per committed tick",
                ", ".join(f"{k} {v:.1f}" for k, v in per_tick.items()),
                "report",
            ),
            (
                "  ticks/s these costs allow if 2 idle cores did nothing else (estimate)",
                _n(2e6 / sum(per_tick.values())),
                "report",
            ),
            ("  peak RSS of the ingest process", f"{_n(steady['vm_hwm_mib'])} MiB", "report"),
            (
                "  the ingest's cyclic GC passes in the window (generations 0, 1, 2)",
                ", ".join(
                    f"{g['passes']} in {g['seconds'] * 1000:.0f} ms" for g in steady["gc"].values()
                ),
                "report",
            ),
        ]
    if "offline" in results:
        off = results["offline"]
        w, hot = off["writers"], off["hot_path"]
        rows += [
            (
                f"Offline rows/s, {hot['ticks']:,} ticks in {hot['frames']} recorded frames",
                f"raw COPY {_n(w['raw_copy']['rows_per_s'])}, ours {_n(w['ours']['rows_per_s'])},"
                f" SDK way {_n(w['sdk']['rows_per_s'])}",
                "report",
            ),
            ("Ours / SDK way (same frames)", f"{off['ours_over_sdk']:.1f}x", "report"),
            (
                "CPU us per tick: journal, decode; COPY client, server (raw COPY)",
                f"{hot['journal_append_us']}, {hot['decode_us']};"
                f" {w['raw_copy']['client_us_per_row']}, {w['raw_copy']['server_us_per_row']}",
                "hot path ~8 us",
            ),
        ]
        if "throughput" in results:
            ratio = results["throughput"]["committed_per_s"] / w["raw_copy"]["rows_per_s"]
            rows.append(("End-to-end / raw COPY", f"{ratio:.2f}", "report"))
    if "api" in results:
        a = results["api"]
        for lt in a["latest_ticks"]:
            rows += [
                (
                    f"GET latest-ticks ({a['symbols_per_request']} symbols),"
                    f" {_n(lt['offered_rps'])} req/s offered, ingest at {a['ingest_rate']:,.0f}/s",
                    f"{_n(lt['achieved_rps'])} req/s; p50 {_n(lt['latency_ms']['p50'], 1)} ms,"
                    f" p99 {_n(lt['latency_ms']['p99'], 1)} ms",
                    f">= 1,000 req/s: {_verdict(_kept_up(lt))}"
                    if lt["offered_rps"] >= TARGETS["api_rps"]
                    else "report (below the target load)",
                ),
                ("  CPU cores busy during that load", _cpu(lt["cpu_cores"]), "report"),
            ]
        search = a["max_rps_search"]
        rows.append(
            (
                f"  highest req/s of {[s['offered_rps'] for s in search['steps']]} served with"
                f" p99 < {search['p99_bound_ms']:g} ms",
                _n(search["max_rps"]),
                "report",
            )
        )
        bars = a["bars_1m"]
        rows.append(
            (
                f"GET bars 1m, one day ({bars['bars_per_response']} bars), {bars['requests']}"
                " sequential requests",
                f"p50 {_n(bars['latency_ms']['p50'], 1)} ms, p99"
                f" {_n(bars['latency_ms']['p99'], 1)} ms",
                "report",
            )
        )
    if "read_path" in results:
        rows += _read_path_rows(results["read_path"])
    if "stream" in results:
        stream = results["stream"]
        rows.append(
            (
                f"push stream: {stream['clients']} clients x {stream['symbols_per_client']}"
                " symbols, tick-to-client lag",
                f"p50 {stream['added_lag_ms']['p50']:,.0f} ms, p99"
                f" {stream['added_lag_ms']['p99']:,.0f} ms from when due (age at arrival: p99"
                f" {stream['lag_ms']['p99']:,.0f} ms); ingest rate with/without clients"
                f" {stream['stream_ingest_rate_ratio']:.3f}",
                "p99 < 100 ms at 200 clients",
            )
        )
    if "stream_idle" in results:
        idle = results["stream_idle"]
        rows.append(
            (
                f"push stream: a client that reads nothing for {idle['seconds']:.0f} s",
                f"its worker grew {idle['stream_idle_growth_mib']:.2f} MiB",
                f"no more than the queue bound ({idle['queue_max_bytes_mib']:.0f} MiB)",
            )
        )
    if "option_chain" in results:
        rows += _option_chain_rows(results["option_chain"])
    return rows


def _option_chain_rows(chain: dict[str, Any]) -> list[tuple[str, str, str]]:
    at, now, http = chain["option_chain"], chain["option_chain_now"], chain["http"]
    now_p99 = now["latency_ms"]["p99"]
    return [
        (
            f"option_chain at a random past moment ({at['contracts']} contracts,"
            f" {chain['ticks']:,} option ticks that day), {at['requests']} moments",
            f"p50 {at['latency_ms']['p50']:.1f} ms, p99 {at['latency_ms']['p99']:.1f} ms",
            f"p99 < 50 ms: {_verdict(at['latency_ms']['p99'] < TARGETS['option_chain_p99_ms'])}",
        ),
        (
            "  the chain now from the published latest ticks (ChainCache.now, warm)",
            f"p50 {now['latency_ms']['p50']:.2f} ms, p99 {now['latency_ms']['p99']:.2f} ms"
            f" (CPU p99 {now['cpu_ms']['p99']:.2f} ms)",
            f"p99 < 5 ms: {_verdict(now_p99 < TARGETS['option_chain_now_p99_ms'])}",
        ),
        (
            "  GET /api/v1/option-chain/NIFTY, one worker, sequential: now / at a moment",
            f"p99 {http['now']['latency_ms']['p99']:.1f} ms"
            f" / {http['at']['latency_ms']['p99']:.1f} ms",
            "report",
        ),
    ]


def _read_path_rows(reads: dict[str, Any]) -> list[tuple[str, str, str]]:
    ticks, month, memory = reads["ticks"], reads["universe_month_5m"], reads["memory"]
    copy = ticks["copy_binary"]
    pandas = ticks["read_ticks_pandas"]
    return [
        (
            f"Read one stock's day ({copy['rows']:,} ticks): binary COPY to a byte counter",
            f"{_n(copy['rows_per_s'])} rows/s",
            "report (the ceiling)",
        ),
        (
            "  row-wise frame (fetchall + from_records, the old read_ticks)",
            f"{_n(ticks['row_wise']['rows_per_s'])} rows/s"
            f" ({ticks['row_wise']['over_copy_binary']:.2f} of COPY)",
            "report (the old path)",
        ),
        (
            "  read_ticks into pandas / polars / Arrow",
            f"{_n(pandas['rows_per_s'])} / {_n(ticks['read_ticks_polars']['rows_per_s'])} /"
            f" {_n(ticks['read_ticks_arrow']['rows_per_s'])} rows/s"
            f" ({pandas['over_copy_binary']:.2f} of COPY into pandas)",
            f">= 0.5 of COPY: "
            f"{_verdict(pandas['over_copy_binary'] >= TARGETS['read_ticks_over_copy_binary'])}",
        ),
        (
            f"  peak memory of that read_ticks vs its frame ({memory['frame_mib']} MiB)",
            f"+{memory['peak_added_mib']} MiB ({memory['peak_over_frame']:.2f}x)",
            f"<= 2x: {_verdict(memory['peak_over_frame'] <= TARGETS['read_peak_over_frame'])}",
        ),
        (
            f"read_bars(UNIVERSE, 5m), {reads['month_days']} days, {month['symbols']} symbols"
            f" ({month['bars']:,} bars) into a wide frame",
            f"{month['seconds']:.2f} s",
            f"< 2 s: {_verdict(month['seconds'] < TARGETS['read_bars_universe_month_s'])}",
        ),
    ]


def _dig(value: Any, *path: str) -> Any:
    """value[path[0]][path[1]]...; None where a key is missing or the figure is NaN."""
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return None if isinstance(value, float) and math.isnan(value) else value


def summary(results: dict[str, Any]) -> dict[str, float | None]:
    """The headline figures of one run, flat; None where its benchmark was not run."""
    api_loads = (_dig(results, "api", "latest_ticks") or []) + (
        _dig(results, "api", "max_rps_search", "steps") or []
    )
    at = {load["offered_rps"]: load for load in reversed(api_loads)}  # the first run wins
    steady = _dig(results, "latency", f"batch_ms_{LATENCY_BATCH_MS[0]}") or {}
    ingest_cpu = _dig(steady, "cpu_cores", "ingest")
    commit_p99 = _dig(steady, "commit_latency_s", "p99")
    in_use = _dig(results, "offline", "decoders", "in_use")
    return {
        "raw_copy_rows_per_s": _dig(results, "offline", "writers", "raw_copy", "rows_per_s"),
        "raw_copy_sustained_rows_per_s": _dig(results, "raw_copy_sustained", "rows_per_s"),
        "raw_copy_sustained_worst_slice": _sustained_worst_slice(results),
        "e2e_replay_ticks_per_s": _dig(results, "replay", "committed_per_s"),
        "e2e_simulator_ticks_per_s": _dig(results, "throughput", "committed_per_s"),
        "ingest_cpu_us_per_tick": None
        if ingest_cpu is None
        else ingest_cpu * 1e6 / steady["committed_per_s"],
        "decode_cpu_us_per_tick": _dig(results, "offline", "decoders", f"{in_use}_us_per_tick"),
        "api_latest_p99_ms_at_500": _dig(at.get(500), "latency_ms", "p99"),
        "api_latest_p99_ms_at_1000": _dig(at.get(1000), "latency_ms", "p99"),
        "api_latest_served_rps_at_1000": _dig(at.get(1000), "achieved_rps"),
        "receipt_to_commit_p99_ms_at_20000": commit_p99 * 1000
        if commit_p99 is not None and steady.get("offered_per_s") == 20_000
        else None,
        "api_max_rps_p99_under_50ms": _dig(results, "api", "max_rps_search", "max_rps"),
        "read_ticks_rows_per_s": _dig(
            results, "read_path", "ticks", "read_ticks_pandas", "rows_per_s"
        ),
        "copy_binary_rows_per_s": _dig(results, "read_path", "ticks", "copy_binary", "rows_per_s"),
        "read_bars_universe_month_s": _dig(results, "read_path", "universe_month_5m", "seconds"),
        "stream_p99_ms_200_clients": _dig(results, "stream", "stream_p99_ms_200_clients"),
        "stream_ingest_rate_ratio": _dig(results, "stream", "stream_ingest_rate_ratio"),
        "stream_age_p99_ms_200_clients": _dig(results, "stream", "stream_age_p99_ms_200_clients"),
        "stream_idle_growth_mib": _dig(results, "stream_idle", "stream_idle_growth_mib"),
        "option_chain_p99_ms": _dig(results, "option_chain", "option_chain_p99_ms"),
        "option_chain_now_p99_ms": _dig(results, "option_chain", "option_chain_now_p99_ms"),
        "option_chain_now_cpu_p99_ms": _dig(results, "option_chain", "option_chain_now_cpu_p99_ms"),
        **overload(results),
        "e2e_ceiling_over_sustained_raw_copy": _over_sustained(results),
    }


def _over_sustained(results: dict[str, Any]) -> float | None:
    """The ceiling against raw COPY sustained as long as its window (see BENCHMARKS.md: the
    61k-row raw COPY into an empty table is the other yardstick, and stays the target's)."""
    rate = _dig(results, "ceiling", "committed_per_s")
    sustained = _dig(results, "raw_copy_sustained", "rows_per_s")
    return round(rate / sustained, 3) if rate and sustained else None


def _sustained_worst_slice(results: dict[str, Any]) -> float | None:
    """The sustained raw COPY's slowest slice against its whole run, as the ceiling's
    `e2e_overload_worst_slice_over_ceiling` is taken: how much of that figure the database
    shows with no ingest in front of it."""
    sustained = results.get("raw_copy_sustained")
    if sustained is None:
        return None
    return worst_slice(sustained["timeline"], column=1, rate=sustained["rows_per_s"])


def print_table(rows: list[tuple[str, str, str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(3)] if rows else [0, 0, 0]
    for row in [("Measurement", "Result", "Target"), *rows]:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.monotonic()
    results = run(args)
    results["command"] = " ".join(["python -m bench.run_all", *(argv or sys.argv[1:])])
    results["duration_s"] = round(time.monotonic() - started, 1)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(results, indent=2))
    print()
    print_table(table(results))
    print(f"\nraw results: {path} ({results['duration_s']:g} s)")
    if args.summary:
        args.summary.write_text(json.dumps(summary(results), indent=2) + "\n")
        print(f"summary: {args.summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
