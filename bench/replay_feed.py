"""A feed that costs next to no CPU: `python -m bench.replay_feed FRAMES_FILE --port P --rate R`.

The simulator spends about as much CPU per tick as the ingest does, so on a 2-core machine
the two compete for the cores. This server replays frames recorded from the simulator, in a
loop, at `rate` ticks/s, so the ingest's own ceiling can be measured with the cores left to
it and the database. It speaks only what `FeedClient` needs: the REST authorize call and a
websocket that ignores requests and streams.

Each frame goes out with its times moved to the moment it is sent: the frame's `currentTs`
and every LTPC trade time (`ltt`) are shifted by the same amount, in place. Replaying the
recorded times instead would make every tick minutes old by the end of a run, so the bar
rollup would treat each one as a late tick and re-aggregate its closed bucket on every pass:
work the database never does in production, where ticks arrive within moments of their trade
time. A millisecond time is a 6-byte varint from 1971 to 2109, so the shift never changes a
frame's length, and numpy does it for a whole frame at once. (The candles' `ts` in
`marketOHLC` keep their recorded times; tickvault does not read them.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from core.upstox_wire import AUTHORIZE_PATH
from ingest.simulator.protocol import json_response
from ingest.upstox.proto import upstox_feed_v3_pb2 as pb

STATS_PATH = "/_sim/stats"  # what bench.ingest_worker reads, as from the simulator
_LENGTH = struct.Struct("<I")


def save_frames(path: Path, frames: Sequence[bytes]) -> None:
    """Length-prefixed live frames (snapshots and market_info left out)."""
    with path.open("wb") as out:
        for frame in frames:
            if pb.FeedResponse.FromString(frame).type == pb.live_feed:
                out.write(_LENGTH.pack(len(frame)) + frame)


class ReplayFrame(NamedTuple):
    frame: bytes
    ticks: int
    current_ts: int  # the recorded currentTs, Unix ms
    times: np.ndarray  # (n, 6) byte offsets of currentTs and of each ltt varint


def load_frames(path: Path) -> list[ReplayFrame]:
    data, offset, frames = path.read_bytes(), 0, []
    while offset < len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        frame = data[offset + 4 : offset + 4 + length]
        response = pb.FeedResponse.FromString(frame)
        starts = np.array(_time_varints(frame), dtype=np.int64)
        times = starts[:, None] + np.arange(_TIME_BYTES)
        frames.append(ReplayFrame(frame, len(response.feeds), response.currentTs, times))
        offset += 4 + length
    return frames


# --- shifting a frame's times -------------------------------------------------------------

_TIME_BYTES = 6  # a Unix-ms time as a varint
_SHIFTS = np.arange(_TIME_BYTES, dtype=np.int64) * 7
_CONTINUED = np.array([0x80] * (_TIME_BYTES - 1) + [0], dtype=np.int64)
# Field-number paths to every time varint (see upstox_feed_v3.proto): from a FeedResponse
# through the feeds map entry's value (a Feed) to each kind of Feed's LTPC.ltt.
_TIME_PATHS = (
    (3,),  # currentTs
    (2, 2, 1, 2),  # Feed.ltpc
    (2, 2, 2, 1, 1, 2),  # Feed.fullFeed.marketFF.ltpc
    (2, 2, 2, 2, 1, 2),  # Feed.fullFeed.indexFF.ltpc
    (2, 2, 3, 1, 2),  # Feed.firstLevelWithGreeks.ltpc
)


def shifted(record: ReplayFrame, now_ms: int) -> bytearray:
    """The frame with currentTs at `now_ms` and its trade times moved as much."""
    buffer = bytearray(record.frame)
    octets = np.frombuffer(buffer, dtype=np.uint8)
    groups = octets[record.times].astype(np.int64) & 0x7F
    values = (groups << _SHIFTS).sum(axis=1) + (now_ms - record.current_ts)
    octets[record.times] = ((values[:, None] >> _SHIFTS) & 0x7F) | _CONTINUED
    return buffer


def _time_varints(frame: bytes) -> list[int]:
    """Where currentTs and each LTPC's ltt start; each must be a 6-byte varint."""
    starts = []
    for path in _TIME_PATHS:
        for start, end in _descend(frame, 0, len(frame), path):
            if end - start != _TIME_BYTES:
                raise ValueError(f"a {end - start}-byte time at byte {start}: not Unix ms")
            starts.append(start)
    return sorted(starts)


def _descend(
    buffer: bytes, start: int, end: int, path: tuple[int, ...]
) -> Iterator[tuple[int, int]]:
    """(start, end) of every value reached by following `path` from [start, end)."""
    if not path:
        yield start, end
        return
    for number, value_start, value_end in _fields(buffer, start, end):
        if number == path[0]:
            yield from _descend(buffer, value_start, value_end, path[1:])


def _fields(buffer: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each varint or length-delimited field's value."""
    position = start
    while position < end:
        key, position = _varint(buffer, position)
        wire_type = key & 7
        if wire_type == 0:
            _, value_end = _varint(buffer, position)
        elif wire_type == 2:
            length, position = _varint(buffer, position)
            value_end = position + length
        elif wire_type in (1, 5):
            value_end = position + (8 if wire_type == 1 else 4)
        else:
            raise ValueError(f"wire type {wire_type} at byte {position}")
        yield key >> 3, position, value_end
        position = value_end


def _varint(buffer: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        octet = buffer[position]
        position += 1
        value |= (octet & 0x7F) << shift
        if octet < 0x80:
            return value, position
        shift += 7


class ReplayFeed:
    def __init__(self, frames: list[ReplayFrame], rate: float, port: int) -> None:
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
                for record in self.frames:
                    await connection.send(shifted(record, time.time_ns() // 1_000_000))
                    sent += record.ticks
                    self.ticks_sent += record.ticks
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
