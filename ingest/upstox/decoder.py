"""Upstox feed frames in, tick tuples out, with no socket, clock or database in between.

The decoder is sans-I/O so that it can be tested with hand-built frames and kept fast: the
connection owns the bytes and their arrival time, the decoder owns the one thing the feed
forces on a consumer, each instrument's last state. Upstox sends conflated snapshots that
leave out whatever did not change, so a tick is the last state merged with the new frame.

Two implementations give the same ticks: `PythonFeedDecoder` below, the reference, on the
protobuf runtime's generated classes; and `CompiledFeedDecoder` (`_fastdecode.pyx`, built by
`pip install` where a C compiler is), which walks the wire format itself and builds no
Python object per field. `FeedDecoder` is the compiled one where it imports, else the
reference; `DECODER_IMPLEMENTATION` says which. A property test holds the two to the same
rows (tests/test_decoder_equivalence.py).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable

from google.protobuf.message import DecodeError

from core.ist import IST_OFFSET_US
from ingest.upstox.decoded import (
    FRAME_KINDS,
    STATUS_NAMES,
    DecodedFrame,
    MalformedFrame,
    seed_last,
)
from ingest.upstox.proto import upstox_feed_v3_pb2 as pb
from store.tick_row import (
    FEED_TS,
    LTP,
    LTQ,
    PG_EPOCH_UNIX_US,
    TICK_COLUMNS,
    TS,
    VOLUME_DELTA,
    VTT,
    Tick,
)

__all__ = [
    "DECODER_IMPLEMENTATION",
    "CompiledFeedDecoder",
    "DecodedFrame",
    "FeedDecoder",
    "MalformedFrame",
    "PythonFeedDecoder",
]

_CP, _ATP, _OI, _IV, _TBQ, _TSQ = (
    TICK_COLUMNS.index(name) for name in ("cp", "atp", "oi", "iv", "tbq", "tsq")
)
# Where the quote's four columns and the five greeks begin: each is kept or replaced whole.
_BID_PRICE = TICK_COLUMNS.index("bid_price")
_DELTA = TICK_COLUMNS.index("delta")

# NSE trades on IST (no daylight saving): a trading day is an IST calendar date.
_IST_OFFSET_US = IST_OFFSET_US
_DAY_US = 86_400 * 1_000_000

_FRAME_KINDS = FRAME_KINDS
_STATUS_NAMES = STATUS_NAMES
_NO_QUOTE = (None, None, None, None)  # bid_price, bid_qty, ask_price, ask_qty
_NO_GREEKS = (None, None, None, None, None)  # delta, theta, gamma, vega, rho


class PythonFeedDecoder:
    """Turns FeedResponse frames into tick tuples, merging each instrument's last state.

    The reference implementation: the protobuf runtime parses, this code merges.

    One decoder per feed connection (it is not thread-safe): its state is what makes
    `volume_delta` and the merge of omitted sub-messages right across frames.

    A tick of a snapshot frame (`initial_feed`, what the server sends after each `sub`: on a
    connect, a reconnect, a restart, a new key) carries no volume: its `vtt` holds whatever
    traded since the last tick heard, while the store was not listening, and no minute of
    ours owns that. Backfill brings the candles of those minutes (ingest/jobs/backfill.py).
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[str, Tick] = {}

    def decode(
        self, frame: bytes, received_at_us: int, wanted: Container[str] | None = None
    ) -> DecodedFrame:
        """Decode one binary frame; `wanted`, when given, is the set of keys to keep.

        `received_at_us` is the clock's Unix-epoch microseconds at receipt. The ticks carry
        tick times (see store.tick_row), converted from it and from the feed's Unix-epoch ms.
        """
        try:
            # A fresh message per frame: measured faster than clearing and reusing one.
            response = pb.FeedResponse.FromString(frame)
        except DecodeError as exc:
            raise MalformedFrame(frame) from exc
        current_ms = response.currentTs
        feed_ts = current_ms * 1000 - PG_EPOCH_UNIX_US if current_ms else None
        received_at = received_at_us - PG_EPOCH_UNIX_US
        last = self._last
        ticks: list[Tick] = []
        unwanted = duplicates = 0
        snapshot = response.type == pb.initial_feed
        feeds = response.feeds
        # Keys, then a lookup: the map's items() view is a Python-level generator.
        for key in feeds:
            if wanted is not None and key not in wanted:
                unwanted += 1
                continue
            feed = feeds[key]
            union = feed.WhichOneof("FeedUnion")
            if union is None:
                continue
            prev = last.get(key)
            tick = _FEED_KINDS[union](key, feed, prev, feed_ts, received_at)
            if tick is None:
                continue
            if snapshot and tick[VOLUME_DELTA]:
                # A snapshot opens a subscription (a connect, a restart, a new key): what its
                # vtt rose by since the last tick heard traded while nobody listened.
                tick = (*tick[:VOLUME_DELTA], 0, *tick[VOLUME_DELTA + 1 :])
            # A re-sent snapshot equals the last tick in every column but volume_delta,
            # feed_ts and received_at; ts first, as it differs for nearly every live tick.
            if (
                prev is not None
                and tick[TS] == prev[TS]
                and tick[TS:VOLUME_DELTA] == prev[TS:VOLUME_DELTA]
                and tick[VOLUME_DELTA + 1 : FEED_TS] == prev[VOLUME_DELTA + 1 : FEED_TS]
            ):
                duplicates += 1
                continue
            last[key] = tick
            ticks.append(tick)
        market_status = {}
        if response.HasField("marketInfo"):
            market_status = {
                segment: _STATUS_NAMES.get(status, str(status))
                for segment, status in response.marketInfo.segmentStatus.items()
            }
        return DecodedFrame(
            _FRAME_KINDS.get(response.type, "unknown"),
            ticks,
            market_status,
            feed_ts,
            unwanted,
            duplicates,
        )

    def seed(self, ticks: Iterable[Tick]) -> None:
        """Install last known ticks (say the newest row per instrument in the database).

        After a restart the server re-sends its snapshot; with the stored state in place
        that snapshot is recognised as a duplicate, and one that is not carries no volume
        (see the class), so the gap's volume is never credited to the first minute heard. A
        journal replayed after a crash continues from these ticks frame by frame.
        """
        seed_last(self._last, ticks)

    def last_ticks(self) -> dict[str, Tick]:
        """key -> the last tick of each instrument: the state omitted fields are merged from."""
        return dict(self._last)


def _from_ltpc(
    key: str, feed: pb.Feed, prev: Tick | None, feed_ts: int | None, received_at: int
) -> Tick | None:
    ltpc = feed.ltpc
    return _trade_tick(key, ltpc, ltpc.ltq, feed_ts, received_at)


def _from_full(
    key: str, feed: pb.Feed, prev: Tick | None, feed_ts: int | None, received_at: int
) -> Tick | None:
    full = feed.fullFeed
    union = full.WhichOneof("FullFeedUnion")
    if union == "marketFF":
        market = full.marketFF
        # An unset sub-message reads as its empty default, which is what these checks want:
        # no trade time, or no levels. Only greeks need HasField: zeros are not "unsent".
        ltpc = market.ltpc
        levels = market.marketLevel.bidAskQuote
        return _book_tick(
            key,
            ltpc if ltpc.ltt else None,
            levels[0] if levels else None,
            market.optionGreeks if market.HasField("optionGreeks") else None,
            market.atp,
            market.vtt,
            market.oi,
            market.iv,
            market.tbq,
            market.tsq,
            prev,
            feed_ts,
            received_at,
        )
    if union == "indexFF":
        # An index has no last traded quantity (nor depth nor vtt); a frame without a trade
        # time only moved the exchange's candles, which are not ticks.
        return _trade_tick(key, full.indexFF.ltpc, None, feed_ts, received_at)
    return None


def _from_first_level(
    key: str, feed: pb.Feed, prev: Tick | None, feed_ts: int | None, received_at: int
) -> Tick | None:
    first = feed.firstLevelWithGreeks
    ltpc = first.ltpc
    return _book_tick(
        key,
        ltpc if ltpc.ltt else None,
        first.firstDepth if first.HasField("firstDepth") else None,
        first.optionGreeks if first.HasField("optionGreeks") else None,
        None,
        first.vtt,
        first.oi,
        first.iv,
        None,
        None,
        prev,
        feed_ts,
        received_at,
    )


_FEED_KINDS: dict[str, Callable[[str, pb.Feed, Tick | None, int | None, int], Tick | None]] = {
    "ltpc": _from_ltpc,
    "fullFeed": _from_full,
    "firstLevelWithGreeks": _from_first_level,
}


def _trade_tick(
    key: str, ltpc: pb.LTPC, ltq: int | None, feed_ts: int | None, received_at: int
) -> Tick | None:
    """A tick of the LTPC alone (ltpc mode, index): these feeds carry no other column."""
    if not ltpc.ltt:
        return None
    # fmt: off
    return (
        key, ltpc.ltt * 1000 - PG_EPOCH_UNIX_US, ltpc.ltp, ltq, None, None, ltpc.cp,
        None, None, None, None, None,  # atp, oi, iv, tbq, tsq
        None, None, None, None,  # bid_price, bid_qty, ask_price, ask_qty
        None, None, None, None, None,  # delta, theta, gamma, vega, rho
        feed_ts, received_at,
    )
    # fmt: on


def _book_tick(
    key: str,
    ltpc: pb.LTPC | None,
    quote: pb.Quote | None,
    greeks: pb.OptionGreeks | None,
    atp: float | None,
    vtt: int,
    oi: float,
    iv: float,
    tbq: float | None,
    tsq: float | None,
    prev: Tick | None,
    feed_ts: int | None,
    received_at: int,
) -> Tick | None:
    """A tick of a feed with depth (full, option_greeks), omitted parts taken from `prev`.

    `ltpc` is None when the feed reports no trade. A column the feed kind does not carry is
    passed as None and stays None. This runs once per tick, so the merge rules are written
    out inline rather than as helper calls, which cost more than the rules themselves.
    """
    if ltpc is not None:
        ts = ltpc.ltt * 1000 - PG_EPOCH_UNIX_US
        ltp = ltpc.ltp
        ltq = ltpc.ltq
        cp = ltpc.cp
    elif prev is not None:  # a depth- or greeks-only change: the last trade still stands
        ts, ltp, ltq = prev[TS], prev[LTP], prev[LTQ]
        cp = prev[_CP]
    else:
        return None
    # Yesterday's quotes and day counters are not today's: merge only within a trading day
    # (an IST calendar date; tick time 0 is a UTC midnight, so days divide evenly).
    if prev is None or (prev[TS] + _IST_OFFSET_US) // _DAY_US != (ts + _IST_OFFSET_US) // _DAY_US:
        # Traded before we started watching: no bar of ours owns that volume. From another
        # day: the day's counter started from zero.
        volume_delta = 0 if prev is None else vtt
        return (
            key, ts, ltp, ltq, vtt, volume_delta, cp, atp, oi, iv, tbq, tsq,
            *(_NO_QUOTE if quote is None else (quote.bidP, quote.bidQ, quote.askP, quote.askQ)),
            *(_NO_GREEKS if greeks is None else (
                greeks.delta, greeks.theta, greeks.gamma, greeks.vega, greeks.rho)),
            feed_ts, received_at,
        )  # fmt: skip
    # Proto3 does not tell an unsent scalar from a sent zero, and a conflated frame leaves
    # out what did not change; a real zero in atp/vtt/oi/iv/tbq/tsq mid-day is rarer than an
    # omitted field, so 0 counts as "not sent" when there is a value to keep.
    prev_vtt = prev[VTT]
    if not vtt and prev_vtt is not None:
        vtt = prev_vtt
    if prev_vtt is None:
        volume_delta = 0  # the previous tick had no vtt (ltpc mode): what traded is unknown
    elif vtt < prev_vtt:
        volume_delta = vtt  # the counter restarted
    else:
        volume_delta = vtt - prev_vtt
    return (
        key, ts, ltp, ltq, vtt, volume_delta, cp,
        atp if atp != 0 or prev[_ATP] is None else prev[_ATP],
        oi if oi != 0 or prev[_OI] is None else prev[_OI],
        iv if iv != 0 or prev[_IV] is None else prev[_IV],
        tbq if tbq != 0 or prev[_TBQ] is None else prev[_TBQ],
        tsq if tsq != 0 or prev[_TSQ] is None else prev[_TSQ],
        *(prev[_BID_PRICE:_DELTA] if quote is None else (
            quote.bidP, quote.bidQ, quote.askP, quote.askQ)),
        *(prev[_DELTA:FEED_TS] if greeks is None else (
            greeks.delta, greeks.theta, greeks.gamma, greeks.vega, greeks.rho)),
        feed_ts, received_at,
    )  # fmt: skip


try:
    from ingest.upstox._fastdecode import CompiledFeedDecoder
except ImportError:  # not built: no C compiler at install time, or a platform it skips
    CompiledFeedDecoder = None  # type: ignore[assignment,misc]
    FeedDecoder: type[PythonFeedDecoder] = PythonFeedDecoder
    DECODER_IMPLEMENTATION = "python"
else:
    FeedDecoder = CompiledFeedDecoder  # type: ignore[assignment,misc]
    DECODER_IMPLEMENTATION = "compiled"
