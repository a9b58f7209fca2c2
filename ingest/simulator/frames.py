"""Protobuf bytes of the simulator's frames, written by hand for speed.

Building `FeedResponse` messages field by field through the protobuf classes costs about
7 us per instrument in full mode, which caps the simulator far below the 150k ticks/s the
ingest benchmark needs. Protobuf's wire format is simple enough to write directly: a field
is a tag byte and a value; a sub-message, a string and a map entry (an embedded message
with key = 1, value = 2) are a tag, a varint length and the bytes. A parser takes the
fields of a message in any order, so the doubles of a message are packed together with one
`struct` call. Whatever is slow but steady (a depth layout, greeks) is prepared once and
reused until the instrument requotes. tests/test_simulator.py proves these bytes decode,
with the generated classes, to the values the instruments hold.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable

from ingest.simulator.market import SCALE, Instrument, QuantityPattern
from ingest.upstox.proto import upstox_feed_v3_pb2 as pb

Encoder = Callable[[Instrument, bool], bytes]  # (instrument, snapshot) -> FeedResponse.feeds entry


def _slow_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = tuple(_slow_varint(i) for i in range(1 << 14))
_LOW = tuple(bytes(((i & 0x7F) | 0x80, ((i >> 7) & 0x7F) | 0x80)) for i in range(1 << 14))


def varint(value: int) -> bytes:
    """Varint of a non-negative int: table lookups for up to 42 bits (epoch ms, volumes)."""
    if value < 0x4000:
        return _SMALL[value]
    if value < 0x1000_0000:
        return _LOW[value & 0x3FFF] + _SMALL[value >> 14]
    if value < 0x400_0000_0000:
        return _LOW[value & 0x3FFF] + _LOW[(value >> 14) & 0x3FFF] + _SMALL[value >> 28]
    return _slow_varint(value)


_two_doubles = struct.Struct("<BdBd").pack
_three_doubles = struct.Struct("<BdBdBd").pack
_four_doubles = struct.Struct("<BdBdBdBd").pack
_five_doubles = struct.Struct("<BdBdBdBdBd").pack

_LIVE_HEAD = b"\x08\x01\x18"  # type = live_feed, then the currentTs tag
_SNAPSHOT_HEAD = b"\x18"  # initial_feed is type 0: no type field at all
_GREEKS = "greeks"


def _field(tag: bytes, body: bytes) -> bytes:
    """A length-delimited field: a sub-message, a string or a map entry."""
    return tag + varint(len(body)) + body


class _Path:
    """Where a mode's message sits in a FeedResponse.feeds map entry (field 2, key = 1,
    value = 2): under `tags`, outermost first, with `suffix` (requestMode) after it in Feed.

    Everything in front of the message depends only on the instrument key and the message's
    length, so each instrument keeps those header bytes by length: one concatenation then
    wraps a message in all its enclosing fields. `ident` (0 to 7) tells the paths apart.
    """

    def __init__(self, ident: int, tags: tuple[bytes, ...], suffix: bytes) -> None:
        self.ident = ident
        self.tags = tags
        self.suffix = suffix

    def wrap(self, instrument: Instrument, message: bytes) -> bytes:
        cache_key = self.ident + (len(message) << 3)
        head = instrument.heads.get(cache_key)
        if head is None:
            head = instrument.heads[cache_key] = self._head(instrument.key_bytes, len(message))
        return head + message + self.suffix

    def _head(self, key: bytes, length: int) -> bytes:
        enclosing = b""  # tags and lengths of the fields around the message, outermost first
        for tag in reversed(self.tags):
            prefix = tag + varint(length)
            enclosing = prefix + enclosing
            length += len(prefix)
        key_field = b"\x0a" + varint(len(key)) + key
        value_head = b"\x12" + varint(length + len(self.suffix))
        entry_length = len(key_field) + len(value_head) + length + len(self.suffix)
        return b"\x12" + varint(entry_length) + key_field + value_head + enclosing


# Every tick of a frame shares its last trade time, or nearly: remember the last few.
_epoch_ms = functools.lru_cache(maxsize=256)(varint)


def _ltpc(instrument: Instrument) -> bytes:
    """The `ltpc` field, number 1 in Feed and in every message that carries one. Index feeds
    carry no ltq."""
    body = _two_doubles(0x09, instrument.ltp, 0x21, instrument.close)
    body += b"\x10" + _epoch_ms(instrument.ltt)
    if instrument.ltq:
        body += b"\x18" + varint(instrument.ltq)
    return b"\x0a" + _SMALL[len(body)] + body


def _compile_price_packer(levels: int) -> Callable[..., bytes]:
    """`packer(pack, prefixes, bid, ask, tick)`: the prices of `levels` quotes packed in one call.

    This is the simulator's hottest code, and a loop or comprehension over the levels costs
    three times as much as the spelled-out argument list, so the list is generated once per
    depth, the way dataclasses and namedtuple generate their methods. Near zero a book runs
    out of bids: those levels show price 0.
    """
    terms = ", ".join(
        f"p[{i}], ((b - {i} * t) / {SCALE} if b > {i} * t else 0.0), 0x21, (a + {i} * t) / {SCALE}"
        for i in range(levels)
    )
    return eval(f"lambda pack, p, b, a, t: pack({terms})")  # noqa: S307 (source: integers only)


class _Depth:
    """`levels` Quote fields under `quote_tag`, wrapped in a `field_tag` field unless empty:
    MarketFullFeed.marketLevel (2) holding bidAskQuote (1), or FirstLevelWithGreeks.firstDepth
    (2), a Quote itself."""

    __slots__ = ("field_tag", "levels", "packer", "quote_tag")

    def __init__(self, levels: int, quote_tag: bytes, field_tag: bytes) -> None:
        self.levels = levels
        self.quote_tag = quote_tag
        self.field_tag = field_tag
        self.packer = _compile_price_packer(levels)


class _DepthLayout:
    """The bytes of a run of Quote fields for one quantity pattern, awaiting only the prices.

    Each quote is written as tag, length, bidQ, askQ, then the two prices: everything up to
    bidP is fixed by the pattern, so a requote packs the prices into a prepared `Struct`.
    """

    __slots__ = ("depth", "pack", "prefixes")

    def __init__(self, pattern: QuantityPattern, depth: _Depth) -> None:
        self.depth = depth
        self.prefixes: list[bytes] = []
        layout = "<"
        for bid_q, ask_q in pattern.quantities[: depth.levels]:
            quantities = b"\x08" + varint(bid_q) + b"\x18" + varint(ask_q)
            prefix = depth.quote_tag + varint(len(quantities) + 18) + quantities + b"\x11"
            self.prefixes.append(prefix)
            layout += f"{len(prefix)}sdBd"  # prefix, bidP, askP's tag, askP
        self.pack = struct.Struct(layout).pack

    def encode(self, instrument: Instrument) -> bytes:
        quotes = self.depth.packer(
            self.pack, self.prefixes, instrument.bid_units, instrument.ask_units,
            instrument.tick_units,
        )  # fmt: skip
        return _field(self.depth.field_tag, quotes) if self.depth.field_tag else quotes


_MARKET_LEVEL_5 = _Depth(5, b"\x0a", b"\x12")
_MARKET_LEVEL_30 = _Depth(30, b"\x0a", b"\x12")
_FIRST_DEPTH = _Depth(1, b"\x12", b"")


def _quotes(instrument: Instrument, depth: _Depth) -> bytes:
    """The depth field, from the instrument's cache while its book holds."""
    encoded = instrument.cache.get(depth)
    if encoded is None:
        layouts = instrument.pattern.layouts
        layout = layouts.get(depth)
        if layout is None:
            layout = layouts[depth] = _DepthLayout(instrument.pattern, depth)
        encoded = instrument.cache[depth] = layout.encode(instrument)
    return encoded


def _greeks(instrument: Instrument) -> bytes:
    """The optionGreeks field (3 in both MarketFullFeed and FirstLevelWithGreeks)."""
    encoded = instrument.cache.get(_GREEKS)
    if encoded is None:
        delta, theta, gamma, vega, rho = instrument.greeks
        body = _five_doubles(0x09, delta, 0x11, theta, 0x19, gamma, 0x21, vega, 0x29, rho)
        encoded = instrument.cache[_GREEKS] = b"\x1a\x2d" + body
    return encoded


def _day_candle(instrument: Instrument, tag: bytes) -> bytes:
    """A MarketOHLC with the day's "1d" candle, sent in snapshots only."""
    prices = _four_doubles(
        0x11, instrument.day_open, 0x19, instrument.day_high, 0x21, instrument.day_low,
        0x29, instrument.ltp,
    )  # fmt: skip
    candle = b"\x0a\x021d" + prices + b"\x30" + varint(instrument.vtt)
    candle += b"\x38" + varint(instrument.day_start_ms)
    return _field(tag, _field(b"\x0a", candle))


def _ltpc_feed(path: _Path) -> Encoder:
    def encode(instrument: Instrument, snapshot: bool) -> bytes:
        return path.wrap(instrument, _ltpc(instrument))

    return encode


def _full_feed(depth: _Depth, market: _Path, index: _Path) -> Encoder:
    def encode(instrument: Instrument, snapshot: bool) -> bytes:
        if instrument.index:
            message = _ltpc(instrument)
            if snapshot:
                message += _day_candle(instrument, b"\x12")
            return index.wrap(instrument, message)
        atp, tbq, tsq = instrument.atp, instrument.tbq, instrument.tsq
        if instrument.option:
            oi, iv = instrument.oi, instrument.iv
            numbers = _five_doubles(0x29, atp, 0x39, oi, 0x41, iv, 0x49, tbq, 0x51, tsq)
        elif instrument.oi:
            numbers = _four_doubles(0x29, atp, 0x39, instrument.oi, 0x49, tbq, 0x51, tsq)
        else:
            numbers = _three_doubles(0x29, atp, 0x49, tbq, 0x51, tsq)
        message = b"".join(
            (
                _ltpc(instrument),
                _quotes(instrument, depth) if snapshot or instrument.depth_changed else b"",
                _greeks(instrument)
                if instrument.option and (snapshot or instrument.greeks_changed)
                else b"",
                _day_candle(instrument, b"\x22") if snapshot else b"",
                numbers,
                b"\x30",
                varint(instrument.vtt),
            )
        )
        return market.wrap(instrument, message)

    return encode


def _option_greeks_feed(path: _Path) -> Encoder:
    def encode(instrument: Instrument, snapshot: bool) -> bytes:
        message = _ltpc(instrument)
        if not instrument.index:
            if snapshot or instrument.depth_changed:
                message += _quotes(instrument, _FIRST_DEPTH)
            if instrument.option and (snapshot or instrument.greeks_changed):
                message += _greeks(instrument)
            message += b"\x20" + varint(instrument.vtt)
            if instrument.oi:
                message += _two_doubles(0x29, instrument.oi, 0x31, instrument.iv)
        return path.wrap(instrument, message)

    return encode


# Feed.ltpc is field 1, fullFeed 2 (FullFeed.marketFF 1, indexFF 2), firstLevelWithGreeks 3;
# Feed.requestMode (field 4) follows: ltpc = 0 is proto3's default, so it is left out.
ENCODERS: dict[str, Encoder] = {
    "ltpc": _ltpc_feed(_Path(0, (), b"")),
    "full": _full_feed(
        _MARKET_LEVEL_5,
        _Path(1, (b"\x12", b"\x0a"), b"\x20\x01"),
        _Path(2, (b"\x12", b"\x12"), b"\x20\x01"),
    ),
    "option_greeks": _option_greeks_feed(_Path(3, (b"\x1a",), b"\x20\x02")),
    "full_d30": _full_feed(
        _MARKET_LEVEL_30,
        _Path(4, (b"\x12", b"\x0a"), b"\x20\x03"),
        _Path(5, (b"\x12", b"\x12"), b"\x20\x03"),
    ),
}


def live_frame(now_ms: int, entries: list[bytes]) -> bytes:
    return _LIVE_HEAD + varint(now_ms) + b"".join(entries)


def snapshot_frame(now_ms: int, entries: list[bytes]) -> bytes:
    return _SNAPSHOT_HEAD + varint(now_ms) + b"".join(entries)


def market_info_frame(now_ms: int, statuses: dict[str, int]) -> bytes:
    """Sent once per connection, so the generated classes are fast enough here."""
    response = pb.FeedResponse(type=pb.market_info, currentTs=now_ms)
    response.marketInfo.segmentStatus.update(statuses)
    return response.SerializeToString()


Frame = tuple[bytes, list[Instrument]]  # a frame to send and the instruments in it
FrameBuilder = Callable[[int, list[bytes]], bytes]  # live_frame or snapshot_frame


def split_frames(
    build: FrameBuilder,
    now_ms: int,
    entries: list[bytes],
    instruments: list[Instrument],
    max_bytes: int,
) -> list[Frame]:
    """`entries` (one per instrument) in frames of at most about `max_bytes` each: clients cap
    the size of a message (1 MiB by default in websockets)."""
    if sum(map(len, entries)) <= max_bytes:
        return [(build(now_ms, entries), instruments)]
    frames: list[Frame] = []
    start = size = 0
    for end, entry in enumerate(entries):
        if size and size + len(entry) > max_bytes:
            frames.append((build(now_ms, entries[start:end]), instruments[start:end]))
            start, size = end, 0
        size += len(entry)
    frames.append((build(now_ms, entries[start:]), instruments[start:]))
    return frames


def live_entries(
    traded: list[Instrument],
    modes: dict[str, str],
    shared: dict[tuple[str, str], bytes] | None,
) -> tuple[list[bytes], list[Instrument]]:
    """The live entries of the `traded` instruments that a session follows (`modes`: key ->
    mode), and those instruments. With `shared`, the sessions of one frame encode an
    instrument in a mode once between them."""
    entries: list[bytes] = []
    included: list[Instrument] = []
    for instrument in traded:
        mode = modes.get(instrument.key)
        if mode is None:
            continue
        if shared is None:
            entries.append(ENCODERS[mode](instrument, False))
        else:
            entry = shared.get((instrument.key, mode))
            if entry is None:
                entry = shared[instrument.key, mode] = ENCODERS[mode](instrument, False)
            entries.append(entry)
        included.append(instrument)
    return entries, included
