"""The compiled decoder held to the Python reference: the same ticks from the same frames.

Three ways in: random feed frames with the official message layout, built with the generated
classes and fed as sequences to both decoders (hypothesis); the same frames damaged (cut,
bit-flipped, stretched varints, wrong wire types, noise), which both must decode alike or both
refuse as MalformedFrame; and hand-made frames at the wire format's edges.

"Alike" is field for field, with the type of each value and a float's exact bits (NaN and
-0.0 included), and the decoders' merge state after every frame. Only the order of a frame's
ticks is left out: each instrument appears once per frame, and the reference lists them in
its protobuf map's hash order, which changes from process to process.
"""

from __future__ import annotations

import gc
import math
import random
import shutil
import struct
import sysconfig
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.upstox import decoder as decoder_module
from ingest.upstox.decoder import (
    CompiledFeedDecoder,
    DecodedFrame,
    MalformedFrame,
    PythonFeedDecoder,
)
from ingest.upstox.proto import upstox_feed_v3_pb2 as pb
from store.tick_row import PG_EPOCH_UNIX_US, TICK_COLUMNS
from tests.test_decoder import field, varint

UPSTOX = Path(decoder_module.__file__).parent
IST = timezone(timedelta(hours=5, minutes=30))
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KEYS = ("NSE_EQ|INE002A01018", "NSE_FO|43885", "NSE_INDEX|Nifty 50", "MCX_FO|4271")
SEGMENTS = ("NSE_EQ", "NSE_FO", "MCX_FO", "BSE_EQ")


def _ist_ms(day: int, hour: int, minute: int) -> int:
    moment = datetime(2025, 1, day, hour, minute, tzinfo=IST)
    return (moment - UNIX_EPOCH) // timedelta(milliseconds=1)


# Trade times around IST midnight (MCX trades past it), so that day resets come up often.
MIDNIGHT = _ist_ms(16, 0, 0)
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _sometimes(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> Any:
    return st.one_of(common, common, common, common, rare)


LTT = _sometimes(
    st.one_of(
        st.just(0),
        st.sampled_from([MIDNIGHT - 600_000, MIDNIGHT - 1, MIDNIGHT, MIDNIGHT + 900_000]),
        st.integers(min_value=MIDNIGHT - 3_600_000, max_value=MIDNIGHT + 3_600_000),
        st.integers(min_value=MIDNIGHT - 3 * 86_400_000, max_value=MIDNIGHT + 86_400_000),
    ),
    INT64,
)
VTT = _sometimes(st.sampled_from([0, 0, 100, 1_000, 1_000, 5_000, 250_000]), INT64)
QTY = _sometimes(st.sampled_from([0, 1, 25, 750]), INT64)
DOUBLE = _sometimes(
    st.sampled_from([0.0, 0.0, -0.0, 1.5, 1250.5, 1250.55]),
    st.floats(allow_nan=True, allow_infinity=True),
)
TEXT = st.sampled_from(["", "I1", "1d", "NORMAL_OPEN", "ünïcode"])


@st.composite
def ltpc_messages(draw: st.DrawFn) -> pb.LTPC:
    message = pb.LTPC(ltp=draw(DOUBLE), ltt=draw(LTT), ltq=draw(QTY), cp=draw(DOUBLE))
    if draw(st.integers(0, 5)) == 0:
        message.iep.value = draw(DOUBLE)
    return message


@st.composite
def quotes(draw: st.DrawFn) -> pb.Quote:
    return pb.Quote(bidQ=draw(QTY), bidP=draw(DOUBLE), askQ=draw(QTY), askP=draw(DOUBLE))


@st.composite
def greeks(draw: st.DrawFn) -> pb.OptionGreeks:
    return pb.OptionGreeks(**{name: draw(DOUBLE) for name in ("delta", "theta", "gamma")})


def _ohlc(draw: st.DrawFn, target: pb.MarketOHLC) -> None:
    for _ in range(draw(st.integers(0, 2))):
        target.ohlc.add(interval=draw(TEXT), open=draw(DOUBLE), vol=draw(QTY), ts=draw(LTT))


@st.composite
def feeds(draw: st.DrawFn) -> pb.Feed:
    kind = draw(st.sampled_from(["ltpc", "market", "market", "index", "first", "empty", "none"]))
    feed = pb.Feed(requestMode=draw(st.sampled_from([0, 1, 2, 3, 9])))
    if kind == "ltpc":
        feed.ltpc.CopyFrom(draw(ltpc_messages()))
    elif kind == "market":
        market = feed.fullFeed.marketFF
        market.SetInParent()
        if draw(st.booleans()):
            market.ltpc.CopyFrom(draw(ltpc_messages()))
        if draw(st.booleans()):
            market.marketLevel.SetInParent()  # present, perhaps with no level
            for _ in range(draw(st.integers(0, 3))):
                market.marketLevel.bidAskQuote.add().CopyFrom(draw(quotes()))
        if draw(st.booleans()):
            market.optionGreeks.CopyFrom(draw(greeks()))
        if draw(st.booleans()):
            _ohlc(draw, market.marketOHLC)
        market.atp, market.vtt, market.oi = draw(DOUBLE), draw(VTT), draw(DOUBLE)
        market.iv, market.tbq, market.tsq = draw(DOUBLE), draw(DOUBLE), draw(DOUBLE)
        market.ieq, market.casEligible = draw(QTY), draw(st.booleans())
    elif kind == "index":
        index = feed.fullFeed.indexFF
        index.SetInParent()
        if draw(st.booleans()):
            index.ltpc.CopyFrom(draw(ltpc_messages()))
        if draw(st.booleans()):
            _ohlc(draw, index.marketOHLC)
    elif kind == "first":
        first = feed.firstLevelWithGreeks
        first.SetInParent()
        if draw(st.booleans()):
            first.ltpc.CopyFrom(draw(ltpc_messages()))
        if draw(st.booleans()):
            first.firstDepth.CopyFrom(draw(quotes()))
        if draw(st.booleans()):
            first.optionGreeks.CopyFrom(draw(greeks()))
        first.vtt, first.oi, first.iv = draw(VTT), draw(DOUBLE), draw(DOUBLE)
    elif kind == "empty":
        feed.fullFeed.SetInParent()  # a FullFeed with neither member
    return feed


@st.composite
def responses(draw: st.DrawFn) -> pb.FeedResponse:
    response = pb.FeedResponse(
        type=draw(st.sampled_from([pb.initial_feed, pb.live_feed, pb.live_feed, 2, 7])),
        currentTs=draw(_sometimes(st.sampled_from([0, MIDNIGHT + 40]), INT64)),
    )
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=len(KEYS), unique=True)):
        response.feeds[key].CopyFrom(draw(feeds()))
    if draw(st.integers(0, 4)) == 0:
        info = response.marketInfo
        info.SetInParent()
        for segment in draw(st.lists(st.sampled_from(SEGMENTS), max_size=3, unique=True)):
            info.segmentStatus[segment] = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 11]))
        if draw(st.booleans()):
            info.casMarketStatus["NSE_EQ"].status = draw(TEXT)
    return response


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """One frame; sometimes two messages back to back, which protobuf reads as their merge:
    the same key twice (the last wins), a oneof that changes member, sub-messages merged."""
    wire = draw(responses()).SerializeToString()
    if draw(st.integers(0, 3)) == 0:
        wire += draw(responses()).SerializeToString()
    return wire


@st.composite
def seed_rows(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """Rows as `seed` takes them, odd ones included (times and volumes past int64)."""
    big = st.integers(min_value=-(2**70), max_value=2**70)
    rows = []
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=len(KEYS), unique=True)):
        ts = draw(_sometimes(st.integers(MIDNIGHT - 86_400_000, MIDNIGHT + 86_400_000), big))
        row: list[Any] = [draw(st.one_of(st.none(), DOUBLE)) for _ in TICK_COLUMNS]
        row[0] = key
        row[1] = ts * 1000 - PG_EPOCH_UNIX_US
        row[3] = draw(st.one_of(st.none(), QTY))
        row[4] = draw(st.one_of(st.none(), VTT, big))
        row[13] = draw(st.one_of(st.none(), QTY))
        row[15] = draw(st.one_of(st.none(), QTY))
        rows.append(tuple(row))
    return rows


WANTED = st.one_of(st.none(), st.none(), st.sets(st.sampled_from(KEYS)).map(frozenset))


def _value(value: Any) -> tuple[str, Any]:
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))  # NaN == NaN, -0.0 != 0.0
    return (type(value).__name__, value)


def _tick(tick: Iterable[Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(_value(value) for value in tick)


def _outcome(decoder: Any, frame: bytes, received_at_us: int, wanted: Any) -> Any:
    try:
        decoded = decoder.decode(frame, received_at_us, wanted)
    except MalformedFrame as error:
        return ("malformed", str(error))
    assert type(decoded) is DecodedFrame
    assert type(decoded.ticks) is list
    assert type(decoded.market_status) is dict
    keys = [tick[0] for tick in decoded.ticks]
    assert len(keys) == len(set(keys)), "an instrument twice in one frame"
    return (
        decoded.kind,
        sorted(_tick(tick) for tick in decoded.ticks),
        decoded.market_status,
        _value(decoded.feed_ts),
        _value(decoded.unwanted),
        _value(decoded.duplicates),
    )


def _state(decoder: Any) -> dict[str, Any]:
    return {key: _tick(tick) for key, tick in decoder.last_ticks().items()}


def _both() -> tuple[Any, Any]:
    return PythonFeedDecoder(), CompiledFeedDecoder()


def _same(reference: Any, compiled: Any, frame: bytes, received: int, wanted: Any = None) -> None:
    expected = _outcome(reference, frame, received, wanted)
    assert _outcome(compiled, frame, received, wanted) == expected, frame.hex()
    assert _state(compiled) == _state(reference), frame.hex()


needs_compiled = pytest.mark.skipif(
    CompiledFeedDecoder is None, reason="the compiled decoder is not built here"
)


def test_the_compiled_decoder_is_built_where_a_compiler_is() -> None:
    """`pip install -e .` builds it wherever gcc and the Python headers are (make setup)."""
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not (shutil.which("gcc") or shutil.which("cc")) or not headers.exists():
        pytest.skip("no C compiler or Python headers here: the Python decoder is the one")
    assert CompiledFeedDecoder is not None, "rebuild it: .venv/bin/pip install -e ."
    assert decoder_module.DECODER_IMPLEMENTATION == "compiled"
    assert decoder_module.FeedDecoder is CompiledFeedDecoder
    source = UPSTOX / "_fastdecode.pyx"
    built = [path for path in UPSTOX.glob("_fastdecode*.so") if path.is_file()]
    if built:  # an in-place (editable) build: it must not be older than its source
        assert max(p.stat().st_mtime for p in built) >= source.stat().st_mtime, (
            "ingest/upstox/_fastdecode.pyx changed since it was built: pip install -e ."
        )


@needs_compiled
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    seed=st.one_of(st.none(), seed_rows()),
    sequence=st.lists(st.tuples(frames(), WANTED, st.integers(0, 2**62)), min_size=1, max_size=8),
)
def test_random_frame_sequences_give_the_same_ticks(
    seed: list[tuple[Any, ...]] | None, sequence: list[tuple[bytes, Any, int]]
) -> None:
    reference, compiled = _both()
    if seed is not None:
        reference.seed(seed)
        compiled.seed(seed)
    for frame, wanted, received in sequence:
        _same(reference, compiled, frame, received, wanted)


# --- damaged frames -------------------------------------------------------------------------


def _damage(frame: bytes, rng: random.Random) -> bytes:
    data = bytearray(frame)
    how = rng.randrange(7)
    if how == 0 or not data:  # noise
        return rng.randbytes(rng.randrange(1, 64))
    if how == 1:  # cut short
        return bytes(data[: rng.randrange(len(data))])
    if how == 2:  # a few bits flipped
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if how == 3:  # a byte's low three bits (a tag's wire type, where it was a tag) changed
        at = rng.randrange(len(data))
        data[at] = (data[at] & 0xF8) | rng.randrange(8)
        return bytes(data)
    if how == 4:  # a varint stretched past ten bytes, or to exactly ten
        at = rng.randrange(len(data))
        return bytes(data[:at]) + b"\xff" * rng.choice([9, 10, 11]) + bytes(data[at:])
    if how == 5:  # an unknown field of any wire type spliced in
        wire_type = rng.randrange(8)
        payload = {0: varint(rng.getrandbits(64)), 1: rng.randbytes(8), 5: rng.randbytes(4)}
        extra = field(rng.randrange(0, 40), wire_type, payload.get(wire_type, b"x"))
        at = rng.randrange(len(data) + 1)
        return bytes(data[:at]) + extra + bytes(data[at:])
    start = rng.randrange(len(data))  # a stretch duplicated
    stop = min(len(data), start + rng.randrange(1, 16))
    return bytes(data[:stop]) + bytes(data[start:stop]) + bytes(data[stop:])


@needs_compiled
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=frames(), seed=st.integers(0, 2**32), wanted=WANTED)
def test_damaged_frames_are_decoded_alike_or_refused_by_both(
    frame: bytes, seed: int, wanted: Any
) -> None:
    rng = random.Random(seed)
    reference, compiled = _both()
    _same(reference, compiled, frame, 1, wanted)  # some state to merge with
    for _ in range(40):
        _same(reference, compiled, _damage(frame, rng), rng.randrange(2**62), wanted)


@needs_compiled
def test_noise_and_mutations_of_a_real_shaped_corpus() -> None:
    """A fixed corpus, mutated many times over with a fixed seed: the same every run."""
    rng = random.Random(20_260_115)
    corpus = _corpus(rng)
    for frame in corpus:
        reference, compiled = _both()
        _same(reference, compiled, frame, 7)
        for _ in range(300):
            _same(reference, compiled, _damage(frame, rng), 7)


def _corpus(rng: random.Random) -> list[bytes]:
    """Frames as the simulator and Upstox send them: full, index, greeks, ltpc, market_info."""
    out = []
    for index in range(30):
        response = pb.FeedResponse(type=index % 3, currentTs=MIDNIGHT + index)
        for key in KEYS[: 1 + index % len(KEYS)]:
            market = response.feeds[key].fullFeed.marketFF
            market.ltpc.CopyFrom(pb.LTPC(ltp=100 + index, ltt=MIDNIGHT + index, ltq=5, cp=99.5))
            for level in range(5):
                market.marketLevel.bidAskQuote.add(
                    bidQ=10 + level, bidP=99.9 - level, askQ=11, askP=100.1 + level
                )
            market.optionGreeks.delta = 0.5
            market.marketOHLC.ohlc.add(interval="I1", open=1.0, ts=MIDNIGHT)
            market.vtt, market.atp, market.tbq = 1000 * index, 100.2, 5e4
        response.feeds["NSE_INDEX|Nifty 50"].fullFeed.indexFF.ltpc.ltt = MIDNIGHT + 1000
        response.feeds["NSE_FO|1"].firstLevelWithGreeks.firstDepth.bidQ = 75
        response.feeds["NSE_FO|2"].ltpc.ltt = MIDNIGHT + rng.randrange(10_000)
        if index % 5 == 0:
            response.marketInfo.segmentStatus["NSE_EQ"] = pb.NORMAL_OPEN
            response.marketInfo.preOpenSessionStatus["NSE_EQ"].updatedTime = 5
        out.append(response.SerializeToString())
    return out


# --- the wire format's edges, by hand -------------------------------------------------------

LTPC_WIRE = (
    field(1, 1, struct.pack("<d", 101.5))
    + field(2, 0, varint(MIDNIGHT))
    + field(3, 0, varint(3))
    + field(4, 1, struct.pack("<d", 100.0))
)


def _entry(key: bytes, feed: bytes, extra: bytes = b"") -> bytes:
    return field(2, 2, field(1, 2, key) + field(2, 2, feed) + extra)


def _groups(depth: int, number: int = 9) -> bytes:
    return varint(number << 3 | 3) * depth + varint(number << 3 | 4) * depth


def _deep_in_quote(depth: int) -> bytes:
    """Unknown groups nested inside FeedResponse > entry > Feed > FullFeed > marketFF >
    MarketLevel > Quote, the deepest message of the .proto (six levels down)."""
    quote = _groups(depth)
    market = field(2, 2, field(1, 2, quote)) + field(1, 2, LTPC_WIRE)
    return _entry(b"K", field(2, 2, field(1, 2, market)))


EDGE_FRAMES = {
    "empty": b"",
    "ltpc": _entry(b"K", field(1, 2, LTPC_WIRE)),
    "a key twice: the last wins": _entry(b"K", field(1, 2, LTPC_WIRE))
    + _entry(b"K", field(1, 2, field(2, 0, varint(MIDNIGHT + 5)))),
    "an entry with an unknown field is left out": _entry(b"K", field(1, 2, LTPC_WIRE))
    + _entry(b"K", field(1, 2, LTPC_WIRE), extra=field(3, 0, b"\x01")),
    "an entry whose key has the wrong wire type": field(
        2, 2, field(1, 0, b"\x01") + field(2, 2, field(1, 2, LTPC_WIRE))
    ),
    "no key": field(2, 2, field(2, 2, field(1, 2, LTPC_WIRE))),
    "no value": field(2, 2, field(1, 2, b"K")),
    "value twice, merged": field(
        2,
        2,
        field(1, 2, b"K")
        + field(2, 2, field(1, 2, LTPC_WIRE))
        + field(2, 2, field(1, 2, field(3, 0, varint(77)))),
    ),
    "oneof ltpc, fullFeed, ltpc: the second ltpc starts empty": _entry(
        b"K",
        field(1, 2, LTPC_WIRE) + field(2, 2, b"") + field(1, 2, field(2, 0, varint(MIDNIGHT + 9))),
    ),
    "oneof marketFF then indexFF": _entry(
        b"K",
        field(2, 2, field(1, 2, field(1, 2, LTPC_WIRE) + field(6, 0, varint(500))))
        + field(2, 2, field(2, 2, field(1, 2, field(2, 0, varint(MIDNIGHT))))),
    ),
    "ltpc with the wrong wire type": _entry(b"K", field(1, 0, varint(5))),
    "a double sent as a varint": _entry(b"K", field(1, 2, LTPC_WIRE + field(1, 0, b"\x05"))),
    "unknown fields of every wire type": _entry(
        b"K",
        field(1, 2, LTPC_WIRE + field(9, 5, b"abcd") + field(10, 1, b"abcdefgh"))
        + field(12, 0, b"\x01")
        + field(13, 2, b"xyz")
        + _groups(3, 14),
    )
    + field(99, 1, b"12345678"),
    "ten-byte varint": field(3, 0, b"\xff" * 9 + b"\x7f"),
    "ten-byte varint, high bits": field(3, 0, b"\xff" * 9 + b"\x01"),
    "eleven-byte varint": varint(3 << 3) + b"\xff" * 10 + b"\x01",
    "five-byte tag": b"\x88\x80\x80\x80\x00\x01",
    "six-byte tag": b"\x88\x80\x80\x80\x80\x00\x01",
    "tag past 32 bits": b"\xf8\xff\xff\xff\x1f\x00",
    "largest field number": b"\xf8\xff\xff\xff\x0f\x00",
    "field number 0": b"\x00\x00",
    "wire type 6": b"\x0e",
    "wire type 7": b"\x0f",
    "end group alone": varint(5 << 3 | 4),
    "group never ended": varint(9 << 3 | 3),
    "group ended by another number": varint(9 << 3 | 3) + varint(8 << 3 | 4),
    "100 nested groups": _groups(100),
    "101 nested groups": _groups(101),
    "groups nested to the limit in a quote": _deep_in_quote(94),
    "groups nested past the limit in a quote": _deep_in_quote(95),
    "length past the frame": varint(2 << 3 | 2) + varint(50) + b"x",
    "length of 2**31": varint(2 << 3 | 2) + varint(2**31) + b"x",
    "fixed64 cut short": _entry(b"K", field(1, 2, b"\x09\x00\x00")),
    "sub-message longer than its parent": _entry(b"K", field(1, 2, LTPC_WIRE)[:-3]),
    "bad UTF-8 in a key": _entry(b"\xed\xa0\x80", field(1, 2, LTPC_WIRE)),
    "overlong UTF-8 in a key": _entry(b"\xc0\xaf", field(1, 2, LTPC_WIRE)),
    "four-byte UTF-8 key": _entry("K\U0001f600".encode(), field(1, 2, LTPC_WIRE)),
    "past U+10FFFF": _entry(b"\xf4\x90\x80\x80", field(1, 2, LTPC_WIRE)),
    "bad UTF-8 in a candle's interval": _entry(
        b"K", field(2, 2, field(2, 2, field(2, 2, field(1, 2, field(1, 2, b"\xff")))))
    ),
    "bad UTF-8 in a status": field(4, 2, field(2, 2, field(2, 2, field(1, 2, b"\x80")))),
    "type past int32": field(1, 0, varint(2**32 + 2)),
    "negative type": field(1, 0, varint(-1)),
    "unknown market status": field(4, 2, field(1, 2, field(1, 2, b"NSE") + field(2, 0, b"\x09"))),
    "negative market status": field(
        4, 2, field(1, 2, field(1, 2, b"NSE") + field(2, 0, varint(-5)))
    ),
    "segment entry with an unknown field": field(
        4, 2, field(1, 2, field(1, 2, b"NSE") + field(2, 0, b"\x02") + field(3, 0, b"\x01"))
    ),
    "ltt past int64 milliseconds": _entry(b"K", field(1, 2, field(2, 0, varint(2**63 - 1)))),
    "ltt most negative": _entry(b"K", field(1, 2, field(2, 0, varint(-(2**63))))),
    "currentTs most negative": field(3, 0, varint(-(2**63))),
    "NaN everywhere": _entry(
        b"K",
        field(
            3,
            2,
            field(1, 2, LTPC_WIRE + field(1, 1, struct.pack("<d", math.nan)))
            + field(3, 2, field(1, 1, struct.pack("<d", math.nan)))
            + field(5, 1, struct.pack("<d", math.nan)),
        ),
    ),
}


@needs_compiled
@pytest.mark.parametrize("frame", EDGE_FRAMES.values(), ids=EDGE_FRAMES.keys())
def test_edges_of_the_wire_format(frame: bytes) -> None:
    reference, compiled = _both()
    _same(reference, compiled, frame, 1)
    _same(reference, compiled, frame, 2)  # again, with the state the first one left
    _same(reference, compiled, memoryview(frame), 3)  # any bytes-like object


@needs_compiled
def test_both_refuse_what_is_not_bytes() -> None:
    reference, compiled = _both()
    for bad in ("text", 12, None):
        with pytest.raises(TypeError):
            reference.decode(bad, 1)
        with pytest.raises(TypeError):
            compiled.decode(bad, 1)


@needs_compiled
def test_ticks_leave_the_cyclic_gc_only_when_they_hold_no_container() -> None:
    """The compiled decoder untracks flat ticks (CPython would at their first collection);
    a tick that took a container from odd seeded state stays tracked."""
    decoder = CompiledFeedDecoder()
    trade = _entry(b"K", field(2, 2, field(1, 2, field(1, 2, LTPC_WIRE))))
    [flat] = decoder.decode(trade, 1).ticks
    assert not gc.is_tracked(flat)

    odd = [None] * len(TICK_COLUMNS)
    odd[0], odd[1], odd[12] = "K", MIDNIGHT * 1000 - PG_EPOCH_UNIX_US, ["not", "a", "price"]
    decoder.seed([tuple(odd)])
    depth_only = _entry(b"K", field(2, 2, field(1, 2, field(6, 0, varint(5)))))
    [holding] = decoder.decode(depth_only, 2).ticks
    assert holding[12] == ["not", "a", "price"]
    assert gc.is_tracked(holding)


@needs_compiled
def test_a_decode_inside_a_decode_is_refused_not_a_crash() -> None:
    """The compiled decoder keeps the frame's structs between calls; `wanted` calling back
    into the same decoder must not see them overwritten."""
    decoder = CompiledFeedDecoder()
    frame = _entry(b"K", field(1, 2, LTPC_WIRE)) + _entry(b"L", field(1, 2, LTPC_WIRE))

    class Reentrant:
        def __contains__(self, key: object) -> bool:
            decoder.decode(frame, 2)
            return True

    with pytest.raises(RuntimeError, match="one frame at a time"):
        decoder.decode(frame, 1, Reentrant())
    assert len(decoder.decode(frame, 3).ticks) == 2


@needs_compiled
def test_a_seed_inside_a_decode_is_refused_not_a_crash() -> None:
    """A decode holds pointers into the key table, which seeding new keys can move; `wanted`
    calling back to seed the same decoder must not leave them dangling."""
    decoder = CompiledFeedDecoder()
    frame = _entry(b"K", field(1, 2, LTPC_WIRE)) + _entry(b"L", field(1, 2, LTPC_WIRE))
    [tick] = PythonFeedDecoder().decode(_entry(b"K", field(1, 2, LTPC_WIRE)), 1).ticks
    many = [(f"NSE_FO|{n}", *tick[1:]) for n in range(5_000)]

    class Reentrant:
        def __contains__(self, key: object) -> bool:
            decoder.seed(many)
            return True

    with pytest.raises(RuntimeError, match="between frames"):
        decoder.decode(frame, 1, Reentrant())
    decoder.seed(many)
    assert len(decoder.decode(frame, 3).ticks) == 2
    assert len(decoder.last_ticks()) == 5_002
