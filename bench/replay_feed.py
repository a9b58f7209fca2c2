"""A feed that costs next to no CPU: `python -m bench.replay_feed FRAMES_FILE --port P --rate R`.

The simulator spends about as much CPU per tick as the ingest does, so on a 2-core machine
the two compete for the cores. This server replays frames recorded from the simulator (the
same bytes, in a loop) at `rate` ticks/s, so the ingest's own ceiling can be measured with
the cores left to it and the database. It speaks only what `FeedClient` needs: the REST
authorize call and a websocket that ignores requests and streams. Replayed ticks are not
duplicates to the decoder: at each wrap an instrument's next tick has another trade time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import struct
import time
from collections.abc import Sequence
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ingest._simulator_protocol import json_response
from ingest.proto import upstox_feed_v3_pb2 as pb

AUTHORIZE_PATH = "/v3/feed/market-data-feed/authorize"
STATS_PATH = "/_sim/stats"  # what bench.ingest_worker reads, as from the simulator
_LENGTH = struct.Struct("<I")


def save_frames(path: Path, frames: Sequence[bytes]) -> None:
    """Length-prefixed live frames (snapshots and market_info left out)."""
    with path.open("wb") as out:
        for frame in frames:
            if pb.FeedResponse.FromString(frame).type == pb.live_feed:
                out.write(_LENGTH.pack(len(frame)) + frame)


def load_frames(path: Path) -> list[tuple[bytes, int]]:
    """(frame, ticks in it) of each saved frame."""
    data, offset, frames = path.read_bytes(), 0, []
    while offset < len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        frame = data[offset + 4 : offset + 4 + length]
        frames.append((frame, len(pb.FeedResponse.FromString(frame).feeds)))
        offset += 4 + length
    return frames


class ReplayFeed:
    def __init__(self, frames: list[tuple[bytes, int]], rate: float, port: int) -> None:
        self.frames = frames
        self.rate = rate
        self.port = port
        self.ticks_sent = 0

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith(AUTHORIZE_PATH):
            uri = f"ws://127.0.0.1:{self.port}/feed?code=replay"
            return json_response(
                200, {"status": "success", "data": {"authorized_redirect_uri": uri}}
            )
        if request.path.startswith(STATS_PATH):
            return json_response(200, {"ticks_sent": self.ticks_sent})
        return None

    async def stream(self, connection: ServerConnection) -> None:
        """Frames at `rate` ticks/s from the first request on; requests are not read."""
        with contextlib.suppress(ConnectionClosed):
            await connection.recv()
            started, sent = time.monotonic(), 0
            while True:
                for frame, ticks in self.frames:
                    await connection.send(frame)
                    sent += ticks
                    self.ticks_sent += ticks
                    ahead = started + sent / self.rate - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)


async def _run(args: argparse.Namespace) -> None:
    feed = ReplayFeed(load_frames(args.frames), args.rate, args.port)
    async with serve(
        feed.stream,
        "127.0.0.1",
        args.port,
        process_request=feed.process_request,
        compression=None,
        max_size=None,
    ):
        print(f"replay feed listening on http://127.0.0.1:{args.port}", flush=True)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay_feed", description=__doc__)
    parser.add_argument("frames", type=Path)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="ticks per second")
    args = parser.parse_args(argv)
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
