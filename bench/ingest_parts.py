"""Where the ingest's CPU per tick goes, by subtraction: `python -m bench.ingest_parts`.

`ingest_cpu_us_per_tick` (bench/ingest.py) is the whole process: the feed's socket, the
frame path, the writer threads, the publishing task, the jobs, the event loop between them.
This splits it three ways, each in CPU seconds of its own process at the same feed rate:

- the frame path alone, in one thread with no event loop and no database: each recorded
  frame journaled, decoded and handed to the cache and the forming bars, both published
  tables written after each frame, and the rows COPY-encoded in writer-sized blocks (the
  work the issue's "a frame crosses into Python once" would shrink);
- the feed client alone: a `FeedClient` reading the simulator into a sink that keeps
  nothing (the websocket, the watchdog, the client's per-frame bookkeeping);
- the rest, which is `ingest_cpu_us_per_tick` less these two, read from the same
  machine's latency run;

and the heap bytes each decoded tick holds while it waits for the writer.

The rate and universe are the latency run's (20,000 ticks/s; 1,800 stocks and their futures,
frames of about 900 ticks). Figures in BENCHMARKS.md from before 2026-12-08 used 200 stocks
(frames of about 100 ticks), which is what this command ran by default then.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench.common import median, simulator, write_universe
from bench.offline import Frame, decode_all, feed_keys, record_frames
from core.config import Secret, Settings
from ingest.cache import AggregatedTickHandler
from ingest.channels.latest_publisher import LatestTickPublisher
from ingest.channels.latest_table import BARS
from ingest.client import FeedClient
from ingest.journal import Journal
from ingest.minute_bars import MinuteBarHandler
from ingest.upstox.decoder import FeedDecoder
from store.ticks import ENCODED_BLOCK_ROWS, encode_rows

STAGES = ("journal", "decode", "cache", "bars", "publish_ticks", "publish_bars", "copy_encode")


def frame_path_us(frames: list[Frame], scratch: Path, writer_rows: int) -> dict[str, float]:
    """CPU us per tick of each stage of the frame path over `frames`, once."""
    spent = dict.fromkeys(STAGES, 0.0)
    journal = Journal(scratch / "journal")
    decoder, cache, bars = FeedDecoder(), AggregatedTickHandler(), MinuteBarHandler()
    ticks_table = LatestTickPublisher(scratch / "ticks.bin", 4000)
    bars_table = LatestTickPublisher(scratch / "bars.bin", 4000, shape=BARS)
    pending: list[tuple] = []
    count = 0
    clock = time.process_time
    try:
        for frame, received_at_us in frames:
            started = clock()
            seq = journal.append(frame, received_at_us)
            journaled = clock()
            ticks = decoder.decode(frame, received_at_us, None).ticks
            decoded = clock()
            cache.on_frame(seq, ticks)
            cached = clock()
            bars.on_frame(seq, ticks)
            folded = clock()
            ticks_table.publish(cache.take_changed().values())
            published = clock()
            bars_table.publish_changed(bars.take_published())
            bars_published = clock()
            pending.extend(ticks)
            if len(pending) >= writer_rows:
                for start in range(0, len(pending), ENCODED_BLOCK_ROWS):
                    encode_rows(pending, start, start + ENCODED_BLOCK_ROWS)
                pending = []
            encoded = clock()
            count += len(ticks)
            for stage, (before, after) in zip(
                STAGES,
                (
                    (started, journaled),
                    (journaled, decoded),
                    (decoded, cached),
                    (cached, folded),
                    (folded, published),
                    (published, bars_published),
                    (bars_published, encoded),
                ),
                strict=True,
            ):
                spent[stage] += after - before
    finally:
        ticks_table.close()
        bars_table.close()
        journal.close()
    return {stage: seconds / count * 1e6 for stage, seconds in spent.items()}


class _Discard:
    """A FrameSink that counts frames and keeps nothing."""

    frames = 0

    def on_frame(self, frame: bytes, received_at_us: int) -> None:
        self.frames += 1


def held_tick_bytes(frames: list[Frame]) -> int:
    """Python heap bytes a decoded tick holds while it waits in the writer's queue (up to
    `queue_max_rows` of them through an outage): all `frames` decoded and kept, traced."""
    decoder = FeedDecoder()
    held: list[tuple] = []
    tracemalloc.start()
    try:
        for frame, received_at_us in frames:
            held.extend(decoder.decode(frame, received_at_us, None).ticks)
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return round(size / len(held))


def feed_client_us(
    instruments: Path, rate: float, seconds: float, frame_interval_ms: float | None = None
) -> dict[str, float]:
    """CPU us per tick and per frame of a FeedClient alone, reading the simulator at `rate`."""
    keys = feed_keys(instruments)
    sink = _Discard()

    async def read(url: str) -> dict[str, float]:
        settings = Settings(upstox_access_token=Secret("bench"), upstox_api_base=url)
        client = FeedClient(settings, sink)
        await client.connect()
        await client.subscribe(keys, "full")
        await asyncio.sleep(2.0)  # the snapshot and the first frames: not the steady state
        frames, cpu, wall = sink.frames, time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        frames = sink.frames - frames
        await client.stop()
        return {"per_tick": cpu / (rate * wall) * 1e6, "per_frame": cpu / frames * 1e6}

    with simulator(instruments, rate, frame_interval_ms) as feed:
        return asyncio.run(read(feed.url))


def measure(
    rate: float, stocks: int, seconds: float, repeats: int, frame_interval_ms: float | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tickvault-ingest-parts-") as scratch:
        instruments = Path(scratch) / "instruments.json"
        write_universe(instruments, stocks)
        frames = record_frames(instruments, rate, seconds, frame_interval_ms)
        runs = []
        for repeat in range(repeats):
            directory = Path(scratch) / f"run{repeat}"
            directory.mkdir()
            runs.append(frame_path_us(frames, directory, Settings().batch_rows))
        client = [
            feed_client_us(instruments, rate, seconds, frame_interval_ms) for _ in range(repeats)
        ]
        held = held_tick_bytes(frames)
    path = {stage: round(median([run[stage] for run in runs]), 3) for stage in STAGES}
    return {
        "rate": rate,
        "frames": len(frames),
        "ticks_per_frame": round(len(decode_all(frames)) / len(frames), 1),
        "bytes_per_frame": sum(len(frame) for frame, _ in frames) // len(frames),
        "frame_path_us_per_tick": path,
        "frame_path_total_us_per_tick": round(sum(path.values()), 3),
        "feed_client_us_per_tick": round(median([c["per_tick"] for c in client]), 3),
        "feed_client_us_per_frame": round(median([c["per_frame"] for c in client]), 1),
        "held_tick_bytes": held,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_parts", description=__doc__)
    parser.add_argument("--rate", type=float, default=20_000, help="ticks/s of the feed")
    parser.add_argument("--stocks", type=int, default=1800, help="F&O stocks in the universe")
    parser.add_argument("--seconds", type=float, default=5.0, help="recorded and read, each")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; medians count")
    parser.add_argument(
        "--frame-interval-ms", type=float, help="the simulator's time between frames (100)"
    )
    args = parser.parse_args(argv)
    print(
        json.dumps(
            measure(args.rate, args.stocks, args.seconds, args.repeats, args.frame_interval_ms)
        )
    )


if __name__ == "__main__":
    main()
