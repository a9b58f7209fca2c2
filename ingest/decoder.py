"""Upstox feed frames in, tick tuples out, with no socket, clock or database in between.

The decoder is sans-I/O so that it can be tested with hand-built frames and kept fast: the
connection owns the bytes and their arrival time, the decoder owns the one thing the feed
forces on a consumer, each instrument's last state. Upstox sends conflated snapshots that
leave out whatever did not change, so a tick is the last state merged with the new frame.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from typing import NamedTuple

from google.protobuf.message import DecodeError

from ingest.proto import upstox_feed_v3_pb2 as pb
from ingest.tick import FEED_TS, KEY, LTP, LTQ, TICK_COLUMNS, TS, VOLUME_DELTA, VTT, Tick

_CP, _ATP, _OI, _IV, _TBQ, _TSQ = (
    TICK_COLUMNS.index(name) for name in ("cp", "atp", "oi", "iv", "tbq", "tsq")
)
_BID_PRICE, _BID_QTY, _ASK_PRICE, _ASK_QTY = (
    TICK_COLUMNS.index(name) for name in ("bid_price", "bid_qty", "ask_price", "ask_qty")
)
_DELTA, _THETA, _GAMMA, _VEGA, _RHO = (
    TICK_COLUMNS.index(name) for name in ("delta", "theta", "gamma", "vega", "rho")
)

# NSE trades on IST (UTC+05:30, no daylight saving): a trading day is an IST calendar date.
_IST_OFFSET_US = (5 * 3600 + 30 * 60) * 1_000_000
_DAY_US = 86_400 * 1_000_000

_FRAME_KINDS = {pb.initial_feed: "snapshot", pb.live_feed: "live", pb.market_info: "market_info"}
_STATUS_NAMES = {value.number: value.name for value in pb.MarketStatus.DESCRIPTOR.values}
_SAMPLE_BYTES = 32


class MalformedFrame(ValueError):
    """A frame that is not a FeedResponse; the message shows a short sample, never the frame."""

    def __init__(self, frame: bytes) -> None:
        more = "..." if len(frame) > _SAMPLE_BYTES else ""
        super().__init__(
            f"not a FeedResponse: {len(frame)} bytes, starting {frame[:_SAMPLE_BYTES].hex()}{more}"
        )


class DecodedFrame(NamedTuple):
    """What one frame yielded; per frame, not per tick, so its cost does not scale with ticks."""

    kind: str  # "snapshot", "live", "market_info", or "unknown" for a type this code predates
    ticks: list[Tick]
    market_status: dict[str, str]  # segment -> MarketStatus name, from market_info frames
    feed_ts_us: int | None  # server time of the frame; None when the frame carries none
    unwanted: int  # feeds skipped because their key is not wanted
    duplicates: int  # ticks dropped as equal to the instrument's last tick


class FeedDecoder:
    """Turns FeedResponse frames into tick tuples, merging each instrument's last state.

    One decoder per feed connection (it is not thread-safe): its state is what makes
    `volume_delta` and the merge of omitted sub-messages right across frames.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[str, Tick] = {}

    def decode(
        self, frame: bytes, received_at_us: int, wanted: Container[str] | None = None
    ) -> DecodedFrame:
        """Decode one binary frame; `wanted`, when given, is the set of keys to keep."""
        try:
            # A fresh message per frame: measured faster than clearing and reusing one.
            response = pb.FeedResponse.FromString(frame)
        except DecodeError as exc:
            raise MalformedFrame(frame) from exc
        feed_ts = response.currentTs * 1000 or None
        last = self._last
        ticks: list[Tick] = []
        unwanted = duplicates = 0
        for key, feed in response.feeds.items():
            if wanted is not None and key not in wanted:
                unwanted += 1
                continue
            union = feed.WhichOneof("FeedUnion")
            if union is None:
                continue
            prev = last.get(key)
            tick = _FEED_KINDS[union](key, feed, prev, feed_ts, received_at_us)
            if tick is None:
                continue
            if prev is not None and _is_duplicate(tick, prev):
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
        that snapshot is recognised as a duplicate and its `vtt` is not counted twice.
        """
        for row in ticks:
            tick = tuple(row)
            if len(tick) != len(TICK_COLUMNS) or not isinstance(tick[TS], int):
                raise TypeError(
                    f"seed wants ticks in TICK_COLUMNS order with int epoch-us times, got {tick!r}"
                )
            self._last[tick[KEY]] = tick

    def last_tick(self, key: str) -> Tick | None:
        """The instrument's last decoded (or seeded) tick."""
        return self._last.get(key)


def _is_duplicate(tick: Tick, prev: Tick) -> bool:
    """Equal in every column but volume_delta, feed_ts and received_at: a re-sent snapshot."""
    # ts first: it differs for most live ticks, which then build no slices.
    return (
        tick[TS] == prev[TS]
        and tick[TS:VOLUME_DELTA] == prev[TS:VOLUME_DELTA]
        and tick[VOLUME_DELTA + 1 : FEED_TS] == prev[VOLUME_DELTA + 1 : FEED_TS]
    )


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
        return _from_market(key, full.marketFF, prev, feed_ts, received_at)
    if union == "indexFF":
        return _from_index(key, full.indexFF, feed_ts, received_at)
    return None


def _from_market(
    key: str, market: pb.MarketFullFeed, prev: Tick | None, feed_ts: int | None, received_at: int
) -> Tick | None:
    quote = None
    if market.HasField("marketLevel"):
        levels = market.marketLevel.bidAskQuote
        if levels:
            quote = levels[0]
    return _book_tick(
        key,
        _sent_ltpc(market),
        quote,
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


def _from_index(
    key: str, index: pb.IndexFullFeed, feed_ts: int | None, received_at: int
) -> Tick | None:
    # An index has no last traded quantity (nor depth nor vtt); a frame without ltpc only
    # moved the exchange's candles, which are not ticks.
    if not index.HasField("ltpc"):
        return None
    return _trade_tick(key, index.ltpc, None, feed_ts, received_at)


def _from_first_level(
    key: str, feed: pb.Feed, prev: Tick | None, feed_ts: int | None, received_at: int
) -> Tick | None:
    first = feed.firstLevelWithGreeks
    return _book_tick(
        key,
        _sent_ltpc(first),
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


def _sent_ltpc(message: pb.MarketFullFeed | pb.FirstLevelWithGreeks) -> pb.LTPC | None:
    """The message's LTPC if it reports a trade: without a trade time there is none to record."""
    if message.HasField("ltpc"):
        ltpc = message.ltpc
        if ltpc.ltt:
            return ltpc
    return None


def _trade_tick(
    key: str, ltpc: pb.LTPC, ltq: int | None, feed_ts: int | None, received_at: int
) -> Tick | None:
    """A tick of the LTPC alone (ltpc mode, index): these feeds carry no other column."""
    if not ltpc.ltt:
        return None
    # fmt: off
    return (
        key, ltpc.ltt * 1000, ltpc.ltp, ltq, None, None, ltpc.cp,
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

    A column the feed kind does not carry is passed as None and stays None.
    """
    if ltpc is not None:
        ts = ltpc.ltt * 1000
        ltp = ltpc.ltp
        ltq = ltpc.ltq
        cp = ltpc.cp
    elif prev is not None:  # a depth- or greeks-only change: the last trade still stands
        ts = prev[TS]
        ltp = prev[LTP]
        ltq = prev[LTQ]
        cp = prev[_CP]
    else:
        return None
    # Yesterday's quotes and day counters are not today's: merge only within a trading day.
    base = prev if prev is not None and _ist_day(prev[TS]) == _ist_day(ts) else None
    vtt = _kept(vtt, base, VTT)
    return (
        key,
        ts,
        ltp,
        ltq,
        vtt,
        _volume_delta(vtt, prev, base),
        cp,
        _kept(atp, base, _ATP),
        _kept(oi, base, _OI),
        _kept(iv, base, _IV),
        _kept(tbq, base, _TBQ),
        _kept(tsq, base, _TSQ),
        quote.bidP if quote is not None else _old(base, _BID_PRICE),
        quote.bidQ if quote is not None else _old(base, _BID_QTY),
        quote.askP if quote is not None else _old(base, _ASK_PRICE),
        quote.askQ if quote is not None else _old(base, _ASK_QTY),
        greeks.delta if greeks is not None else _old(base, _DELTA),
        greeks.theta if greeks is not None else _old(base, _THETA),
        greeks.gamma if greeks is not None else _old(base, _GAMMA),
        greeks.vega if greeks is not None else _old(base, _VEGA),
        greeks.rho if greeks is not None else _old(base, _RHO),
        feed_ts,
        received_at,
    )


def _ist_day(epoch_us: int) -> int:
    return (epoch_us + _IST_OFFSET_US) // _DAY_US


def _kept(value: float | None, base: Tick | None, index: int) -> float | None:
    """A proto3 scalar, or the last value when it reads 0.

    Proto3 does not tell an unsent scalar from a sent zero, and a conflated frame leaves out
    what did not change; a real zero in atp/vtt/oi/iv/tbq/tsq mid-day is rarer than an
    omitted field, so 0 counts as "not sent" when there is a value to keep.
    """
    if value == 0 and base is not None and base[index] is not None:
        return base[index]
    return value


def _old(base: Tick | None, index: int) -> object:
    return None if base is None else base[index]


def _volume_delta(vtt: int, prev: Tick | None, base: Tick | None) -> int:
    """Volume traded since the instrument's previous tick, from the day's cumulative vtt."""
    if prev is None:
        return 0  # traded before we started watching: no bar of ours owns it
    if base is None:
        return vtt  # the previous tick is from another trading day: vtt counts from zero
    prev_vtt = base[VTT]
    if prev_vtt is None:
        return 0  # the previous tick had no vtt (ltpc mode): what traded since is unknown
    if vtt < prev_vtt:
        return vtt  # the counter restarted
    return vtt - prev_vtt
