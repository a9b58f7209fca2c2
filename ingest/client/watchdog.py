"""The stall watchdog's decision, without sockets or clocks of its own.

A feed socket can stay open and answer pings while no data comes: websockets answers the
server's pings by itself, so only the absence of data frames shows it. Silence is normal
outside market hours, and for a connection whose instruments' segments are closed; it is a
stall only while a segment the connection carries instruments of is NORMAL_OPEN, as the
feed's own market_info frames say, for `stall_s` seconds. The connection (connection.py) feeds
this class what it reads and asks it, a few times per `stall_s`, whether to reconnect.
"""

from __future__ import annotations

from collections.abc import Iterable

from ingest.upstox.decoded import STATUS_NAMES
from ingest.upstox.proto import upstox_feed_v3_pb2 as pb

OPEN = "NORMAL_OPEN"
# A FeedResponse of type market_info starts with field 1 (type, varint) = 2: protobuf writes
# fields in number order and never omits a non-zero enum, so two bytes tell it from data.
_MARKET_INFO_HEAD = bytes([0x08, pb.market_info])


def market_statuses(frame: bytes) -> dict[str, str] | None:
    """segment -> status name if `frame` is a market_info frame; None for a data frame."""
    if not frame.startswith(_MARKET_INFO_HEAD):
        return None
    response = pb.FeedResponse.FromString(frame)  # a small frame, a handful per day
    return {
        segment: STATUS_NAMES.get(status, str(status))
        for segment, status in response.marketInfo.segmentStatus.items()
    }


def segments_of(keys: Iterable[str]) -> set[str]:
    """The segments of instrument keys: `NSE_EQ|INE...` is in NSE_EQ."""
    return {key.partition("|")[0] for key in keys}


class StallWatch:
    """One connection's silence: when data last came, what the market said, how many stalls.

    Times are monotonic seconds, given by the caller. The silence counted is the one since
    the later of the last data frame and the moment the connection's segments were last seen
    to open, so a market that opens after a quiet night is not a stall at its first second.
    """

    def __init__(self, stall_s: float) -> None:
        if stall_s <= 0:
            raise ValueError(f"stall_s must be positive, got {stall_s}")
        self.stall_s = stall_s
        self.statuses: dict[str, str] = {}  # segment -> status, as market_info frames said
        self.stalls = 0
        self.last_data_at: float | None = None
        self._open_since: float | None = None  # when the carried segments were seen open

    def opened(self, now: float) -> None:
        """A socket opened: its silence starts now (segment statuses are the market's: kept)."""
        self.last_data_at = None
        self._open_since = now

    def data(self, now: float) -> None:
        self.last_data_at = now

    def market_info(self, statuses: dict[str, str]) -> None:
        self.statuses.update(statuses)

    def data_age(self, now: float) -> float | None:
        """Seconds since the last data frame on this socket; None before the first."""
        return None if self.last_data_at is None else now - self.last_data_at

    def stalled(self, now: float, segments: Iterable[str]) -> bool:
        """True (and counted) when a carried segment is open and no data came for stall_s."""
        if not any(self.statuses.get(segment) == OPEN for segment in segments):
            self._open_since = None
            return False
        if self._open_since is None:
            self._open_since = now
        quiet_since = max(self._open_since, self.last_data_at or self._open_since)
        if now - quiet_since < self.stall_s:
            return False
        self.stalls += 1
        return True
