"""What a decoder gives and refuses, shared by both decoders (ingest.upstox.decoder picks one).

Kept apart from the decoders so that the compiled one (`_fastdecode.pyx`) and the Python
reference import the same classes and constants, and the rules written here once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from ingest.upstox.proto import upstox_feed_v3_pb2 as pb
from store.tick_row import KEY, TICK_COLUMNS, TS, Tick

FRAME_KINDS = {pb.initial_feed: "snapshot", pb.live_feed: "live", pb.market_info: "market_info"}
STATUS_NAMES = {value.number: value.name for value in pb.MarketStatus.DESCRIPTOR.values}
_SAMPLE_BYTES = 32


class MalformedFrame(ValueError):
    """A frame that is not a FeedResponse; the message shows a short sample, never the frame."""

    def __init__(self, frame: bytes) -> None:
        more = "..." if len(frame) > _SAMPLE_BYTES else ""
        super().__init__(
            f"not a FeedResponse: {len(frame)} bytes, starting {frame[:_SAMPLE_BYTES].hex()}{more}"
        )


class DecodedFrame(NamedTuple):
    """What one frame yielded; per frame, not per tick, so its cost does not scale with ticks.

    The order of `ticks` within a frame is not part of the contract: each instrument appears
    at most once per frame, and the reference decoder lists them in its protobuf map's hash
    order, which changes from one process to the next.
    """

    kind: str  # "snapshot", "live", "market_info", or "unknown" for a type this code predates
    ticks: list[Tick]
    market_status: dict[str, str]  # segment -> MarketStatus name, from market_info frames
    feed_ts: int | None  # server time of the frame (a tick time); None when it carries none
    unwanted: int  # feeds skipped because their key is not wanted
    duplicates: int  # ticks dropped as equal to the instrument's last tick


def seed_last(last: dict[str, Tick], ticks: Iterable[Tick]) -> None:
    """Install last known ticks into a decoder's state (see FeedDecoder.seed)."""
    for row in ticks:
        tick = tuple(row)
        if len(tick) != len(TICK_COLUMNS) or not isinstance(tick[TS], int):
            raise TypeError(
                f"seed wants ticks in TICK_COLUMNS order with integer tick times, got {tick!r}"
            )
        last[tick[KEY]] = tick
