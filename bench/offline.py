"""The same recorded frames written three ways, side by side, and where a tick's time goes.

Frames are recorded from the simulator process through the real `FeedClient`, so they are
the bytes the ingest receives. Then, interleaved and repeated:

- raw COPY: the decoded tick tuples through `copy_ticks`, nothing else: the ceiling;
- ours: `FeedDecoder.decode` per frame, then `copy_ticks` per batch;
- SDK way: what Upstox's Python SDK hands its users, `MessageToDict` of each frame, rows
  built from the dicts, then `executemany` INSERT.

The decoder alone is also timed both ways on the same frames, the compiled one
(`ingest/upstox/_fastdecode.pyx`) beside the Python reference: `python -m bench.offline`
records frames from the simulator and prints that comparison (no database needed). So is the
COPY, psycopg's `write_row` per row beside the compiled encoder (`store/_copyrows.pyx`):
`python -m bench.offline --copy-rows 200000` (its own TimescaleDB cluster, as run_all).

Each writes batches of `BATCH_ROWS` into a fresh tickvault database's `ticks` hypertable,
committing each batch, as the writer does. The CPU split (journal append, decode, COPY's
client side, the server) is measured in CPU seconds, which other tenants of a shared
machine disturb far less than wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from google.protobuf.json_format import MessageToDict

from bench.common import DbServer, cpu_seconds, db_server, median, simulator, write_universe
from bench.ingest import BATCH_ROWS
from core.config import Secret, Settings
from ingest.client import FeedClient
from ingest.journal import Journal
from ingest.upstox.decoder import (
    DECODER_IMPLEMENTATION,
    CompiledFeedDecoder,
    FeedDecoder,
    PythonFeedDecoder,
)
from ingest.upstox.proto import upstox_feed_v3_pb2 as pb
from store.tick_row import TICK_COLUMNS, Tick
from store.ticks import COPY_IMPLEMENTATION, copy_ticks, copy_ticks_by_row, copy_ticks_encoded

Frame = tuple[bytes, int]  # (frame, received_at_us)

_INSERT = (
    f"INSERT INTO ticks ({', '.join(TICK_COLUMNS)})"
    f" VALUES ({', '.join(['%s'] * len(TICK_COLUMNS))})"
)


class _Recorder:
    """A FrameSink that keeps every frame with its arrival time."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def on_frame(self, frame: bytes, received_at_us: int) -> None:
        self.frames.append((frame, received_at_us))


def feed_keys(instruments: Path) -> list[str]:
    """The keys the benchmark's one full-mode connection subscribes: the universe's stocks
    and indices, which fit a connection's key limit (write_universe)."""
    return [
        record["instrument_key"]
        for record in json.loads(instruments.read_text())
        if record["segment"] in ("NSE_EQ", "NSE_INDEX")
    ]


def record_frames(
    instruments: Path, rate: float, seconds: float, frame_interval_ms: float | None = None
) -> list[Frame]:
    """`seconds` of full-mode frames for the whole universe, from a simulator process
    (`frame_interval_ms` apart: see `bench.common.simulator`)."""
    keys = feed_keys(instruments)
    recorder = _Recorder()

    async def listen(url: str) -> None:
        settings = Settings(upstox_access_token=Secret("bench"), upstox_api_base=url)
        client = FeedClient(settings, recorder)
        await client.connect()
        await client.subscribe(keys, "full")
        await asyncio.sleep(seconds)
        await client.stop()

    with simulator(instruments, rate, frame_interval_ms) as feed:
        asyncio.run(listen(feed.url))
    return recorder.frames


def decode_all(frames: Iterable[Frame], decoder_class: type = FeedDecoder) -> list[Tick]:
    decoder = decoder_class()
    ticks: list[Tick] = []
    for frame, received_at in frames:
        ticks.extend(decoder.decode(frame, received_at).ticks)
    return ticks


# --- the three writers --------------------------------------------------------------------


def _batches(rows: Iterable[tuple], size: int = BATCH_ROWS) -> Iterable[list[tuple]]:
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_raw_copy(conn: psycopg.Connection, frames: list[Frame], ticks: list[Tick]) -> int:
    for batch in _batches(ticks):
        with conn.cursor() as cur:
            copy_ticks(cur, batch)
        conn.commit()
    return len(ticks)


def write_ours(conn: psycopg.Connection, frames: list[Frame], ticks: list[Tick]) -> int:
    return write_raw_copy(conn, frames, decode_all(frames))


def _sdk_rows(frames: list[Frame]) -> Iterable[tuple]:
    """Rows as an SDK user builds them: from MessageToDict's dicts, int64s arriving as strings."""
    for frame, received_at_us in frames:
        message = MessageToDict(pb.FeedResponse.FromString(frame))
        received_at = datetime.fromtimestamp(received_at_us / 1e6, UTC)
        feed_ts = datetime.fromtimestamp(int(message.get("currentTs", 0)) / 1000, UTC)
        for key, feed in message.get("feeds", {}).items():
            full = feed.get("fullFeed", {})
            market = full.get("marketFF") or full.get("indexFF") or {}
            ltpc = market.get("ltpc") or feed.get("ltpc") or {}
            if "ltt" not in ltpc:
                continue
            quote = (market.get("marketLevel", {}).get("bidAskQuote") or [{}])[0]
            greeks = market.get("optionGreeks", {})
            yield (
                key,
                datetime.fromtimestamp(int(ltpc["ltt"]) / 1000, UTC),
                ltpc.get("ltp"),
                int(ltpc["ltq"]) if "ltq" in ltpc else None,
                int(market["vtt"]) if "vtt" in market else None,
                None,  # volume_delta: the SDK keeps no state between frames
                ltpc.get("cp"),
                market.get("atp"),
                market.get("oi"),
                market.get("iv"),
                market.get("tbq"),
                market.get("tsq"),
                quote.get("bidP"),
                int(quote["bidQ"]) if "bidQ" in quote else None,
                quote.get("askP"),
                int(quote["askQ"]) if "askQ" in quote else None,
                greeks.get("delta"),
                greeks.get("theta"),
                greeks.get("gamma"),
                greeks.get("vega"),
                greeks.get("rho"),
                feed_ts,
                received_at,
            )


def write_sdk(conn: psycopg.Connection, frames: list[Frame], ticks: list[Tick]) -> int:
    written = 0
    for batch in _batches(_sdk_rows(frames)):
        with conn.cursor() as cur:
            cur.executemany(_INSERT, batch)
        conn.commit()
        written += len(batch)
    return written


WRITERS: dict[str, Callable[[psycopg.Connection, list[Frame], list[Tick]], int]] = {
    "raw_copy": write_raw_copy,
    "ours": write_ours,
    "sdk": write_sdk,
}


# --- the measurements ---------------------------------------------------------------------


def _timed(postmaster_pid: int | None, work: Callable[[], int]) -> dict[str, float]:
    """Rows/s by wall clock, and CPU us per row in this process and in the server."""

    def server_cpu() -> float:
        return cpu_seconds(postmaster_pid, True) if postmaster_pid else float("nan")

    server_before = server_cpu()
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    rows = work()
    wall = time.perf_counter() - wall_before
    cpu = time.process_time() - cpu_before
    server = server_cpu() - server_before
    return {
        "rows": rows,
        "rows_per_s": rows / wall,
        "client_us_per_row": cpu / rows * 1e6,
        "server_us_per_row": server / rows * 1e6,
    }


def compare_writers(
    server: DbServer, frames: list[Frame], repeats: int
) -> dict[str, dict[str, float]]:
    """Each writer `repeats` times, interleaved; medians of every figure."""
    ticks = decode_all(frames)
    url = server.create_database("bench_offline")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in WRITERS}
    try:
        with psycopg.connect(url) as conn:
            for _ in range(repeats):
                for name, write in WRITERS.items():
                    conn.execute("TRUNCATE ticks")
                    conn.commit()
                    runs[name].append(
                        _timed(server.postmaster_pid, lambda w=write: w(conn, frames, ticks))
                    )
    finally:
        server.drop_database(url)
    return {
        name: {key: round(median([r[key] for r in results]), 2) for key in results[0]}
        for name, results in runs.items()
    }


# A tick's times, as microseconds: moved together, they keep a recorded tick's shape.
TIME_COLUMNS = [TICK_COLUMNS.index(name) for name in ("ts", "feed_ts", "received_at")]


def moved_on(ticks: Iterable[tuple], by_us: int) -> list[tuple]:
    """The ticks with their times (TIME_COLUMNS) moved on by `by_us` microseconds."""
    moved = []
    for tick in ticks:
        row = list(tick)
        for i in TIME_COLUMNS:
            if row[i] is not None:
                row[i] += by_us
        moved.append(tuple(row))
    return moved


def sustained_raw_copy(server: DbServer, frames: list[Frame], seconds: float) -> dict[str, float]:
    """Raw COPY for `seconds`, one connection, into one fresh database: the recorded ticks
    again and again, their times moved on by the recording's span each round, so that the
    chunk grows as a ceiling window's does (millions of rows) rather than holding the 61k
    rows `compare_writers` writes into an empty table. A thread shifts the next batch while
    this one is COPYed, as the ingest's writer has its batch ready. Its `timeline` is
    [s since the start, rows committed] after each commit: whether the database's own rate
    falls as the chunk grows, which the ceiling's slowest slice is measured against."""
    ticks = decode_all(frames)
    ts = TIME_COLUMNS[0]
    span = max(t[ts] for t in ticks) - min(t[ts] for t in ticks) + 1_000_000
    batches: queue.Queue[list[tuple] | None] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def shift() -> None:
        for round_ in itertools.count(1):
            for batch in _batches(ticks):
                if stop.is_set():
                    batches.put(None)
                    return
                batches.put(moved_on(batch, round_ * span))

    url = server.create_database("bench_sustained")
    shifter = threading.Thread(target=shift, daemon=True)
    timeline: list[list[float]] = []
    try:
        with psycopg.connect(url) as conn:
            shifter.start()
            started = time.perf_counter()
            deadline = started + seconds

            def work() -> int:
                written = 0
                while time.perf_counter() < deadline:
                    batch = batches.get()
                    with conn.cursor() as cur:
                        copy_ticks(cur, batch)
                    conn.commit()
                    written += len(batch)
                    timeline.append([round(time.perf_counter() - started, 3), written])
                return written

            result = _timed(server.postmaster_pid, work)
    finally:
        stop.set()
        while shifter.is_alive():  # let it see `stop` if it waits to put a batch
            with contextlib.suppress(queue.Empty):
                batches.get_nowait()
            shifter.join(0.05)
        server.drop_database(url)
    return {
        "seconds": seconds,
        **{key: round(value, 2) for key, value in result.items()},
        "timeline": timeline,
    }


def hot_path_costs(frames: list[Frame], repeats: int) -> dict[str, float]:
    """CPU us per tick of the ingest's per-frame steps without the database (medians)."""
    ticks = decode_all(frames)
    journal_us, decode_us = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="tickvault-bench-journal-") as directory:
            journal = Journal(Path(directory))
            started = time.process_time()
            for frame, received_at in frames:
                journal.append(frame, received_at)
            journal_us.append((time.process_time() - started) / len(ticks) * 1e6)
            journal.close()
        started = time.process_time()
        decode_all(frames)
        decode_us.append((time.process_time() - started) / len(ticks) * 1e6)
    return {
        "frames": len(frames),
        "ticks": len(ticks),
        "ticks_per_frame": round(len(ticks) / len(frames), 1),
        "bytes_per_tick": round(sum(len(f) for f, _ in frames) / len(ticks), 1),
        "journal_append_us": round(median(journal_us), 2),
        "decode_us": round(median(decode_us), 2),
    }


def _by_frame(frames: list[Frame], decoder_class: type) -> list[list[Tick]]:
    decoder = decoder_class()
    # Within a frame the order of ticks carries no meaning (see DecodedFrame): sort by key.
    return [
        sorted(decoder.decode(frame, received_at).ticks, key=lambda tick: tick[0])
        for frame, received_at in frames
    ]


def compare_decoders(frames: list[Frame], repeats: int) -> dict[str, Any]:
    """CPU us per tick of decode alone, each implementation on the same frames.

    Runs are interleaved (python, compiled, python, ...) so that a busy neighbour slows both
    alike; the medians of `repeats` runs and their ratio. The rows are checked equal first.
    """
    classes: dict[str, type] = {"python": PythonFeedDecoder}
    if CompiledFeedDecoder is not None:
        classes["compiled"] = CompiledFeedDecoder
    rows = {name: _by_frame(frames, cls) for name, cls in classes.items()}
    ticks = sum(len(frame_ticks) for frame_ticks in rows["python"])
    runs: dict[str, list[float]] = {name: [] for name in classes}
    for _ in range(repeats):
        for name, cls in classes.items():
            started = time.process_time()
            decode_all(frames, cls)
            runs[name].append((time.process_time() - started) / ticks * 1e6)
    result: dict[str, Any] = {
        "in_use": DECODER_IMPLEMENTATION,
        "frames": len(frames),
        "ticks": ticks,
        "repeats": repeats,
        "python_us_per_tick": round(median(runs["python"]), 3),
        "python_runs_us": [round(run, 3) for run in runs["python"]],
    }
    if "compiled" in classes:
        compiled = median(runs["compiled"])
        result.update(
            compiled_us_per_tick=round(compiled, 3),
            compiled_runs_us=[round(run, 3) for run in runs["compiled"]],
            python_over_compiled=round(median(runs["python"]) / compiled, 1),
            same_rows=rows["compiled"] == rows["python"],
        )
    return result


def compare_copy_paths(
    server: DbServer, ticks: list[Tick], rows: int, repeats: int
) -> dict[str, Any]:
    """`rows` ticks (`ticks` over and over) COPYed by each path, in batches of BATCH_ROWS
    committed one by one as the writer does; interleaved runs, medians and their ratios.

    Client CPU is the COPY's whole cost in this process: encoding and libpq's sending.
    """
    paths = {"write_row": copy_ticks_by_row}
    if COPY_IMPLEMENTATION == "compiled":
        paths["encoded"] = copy_ticks_encoded
    batch_rows = (ticks * (rows // len(ticks) + 1))[:rows]

    def write(path: Callable[[psycopg.Cursor, list[Tick]], None]) -> int:
        for batch in _batches(batch_rows):
            with conn.cursor() as cur:
                path(cur, batch)
            conn.commit()
        return rows

    url = server.create_database("bench_copy")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
    try:
        with psycopg.connect(url) as conn:
            for _ in range(repeats):
                for name, path in paths.items():
                    conn.execute("TRUNCATE ticks")
                    conn.commit()
                    runs[name].append(_timed(server.postmaster_pid, lambda p=path: write(p)))
    finally:
        server.drop_database(url)
    result: dict[str, Any] = {"rows": rows, "batch_rows": BATCH_ROWS, "repeats": repeats}
    for name, results in runs.items():
        result[name] = {key: round(median([r[key] for r in results]), 3) for key in results[0]}
        result[name]["client_runs_us"] = [round(r["client_us_per_row"], 3) for r in results]
    if "encoded" in runs:
        by_row, encoded = result["write_row"], result["encoded"]
        result["client_cpu_write_row_over_encoded"] = round(
            by_row["client_us_per_row"] / encoded["client_us_per_row"], 2
        )
        result["rows_per_s_encoded_over_write_row"] = round(
            encoded["rows_per_s"] / by_row["rows_per_s"], 2
        )
    return result


def run_offline(server: DbServer, frames: list[Frame], repeats: int) -> dict[str, Any]:
    writers = compare_writers(server, frames, repeats)
    return {
        "repeats": repeats,
        "hot_path": hot_path_costs(frames, repeats),
        "decoders": compare_decoders(frames, max(repeats, 5)),
        "writers": writers,
        "ours_over_sdk": round(writers["ours"]["rows_per_s"] / writers["sdk"]["rows_per_s"], 2),
        "ours_over_raw_copy": round(
            writers["ours"]["rows_per_s"] / writers["raw_copy"]["rows_per_s"], 3
        ),
    }


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.offline`: the two decoders on frames recorded from the simulator."""
    parser = argparse.ArgumentParser(prog="python -m bench.offline", description=main.__doc__)
    parser.add_argument("--rate", type=float, default=20_000, help="ticks/s while recording")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to record")
    parser.add_argument("--stocks", type=int, default=1800, help="F&O stocks in the universe")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per decoder")
    parser.add_argument(
        "--copy-rows",
        type=int,
        default=0,
        help="instead: COPY this many of the recorded ticks by write_row and by the encoder",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tickvault-bench-") as scratch:
        instruments = Path(scratch) / "instruments.json"
        write_universe(instruments, args.stocks)
        frames = record_frames(instruments, args.rate, args.seconds)
    if args.copy_rows:
        with db_server() as server:
            result = compare_copy_paths(server, decode_all(frames), args.copy_rows, args.repeats)
    else:
        result = compare_decoders(frames, args.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
