"""FeedDecoder on frames built the way the Upstox server builds them.

Every test runs on both implementations: the Python reference and the compiled decoder
(skipped where it was not built; tests/test_decoder_equivalence.py says when that is wrong).
"""

from __future__ import annotations

import struct
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ingest.upstox.decoder import (
    CompiledFeedDecoder,
    FeedDecoder,
    MalformedFrame,
    PythonFeedDecoder,
)
from ingest.upstox.proto import upstox_feed_v3_pb2 as pb
from store.tick_row import Tick, as_dict, to_datetime

IST = timezone(timedelta(hours=5, minutes=30))
RELIANCE = "NSE_EQ|INE002A01018"
NIFTY = "NSE_INDEX|Nifty 50"
OPTION = "NSE_FO|43885"
RECEIVED = 1_736_915_400_123_456


UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["python", "compiled"])
def decoder_cls(request: pytest.FixtureRequest) -> type:
    """Each decoder implementation in turn."""
    if request.param == "python":
        return PythonFeedDecoder
    if CompiledFeedDecoder is None:
        pytest.skip("the compiled decoder is not built here")
    return CompiledFeedDecoder


def last_state(decoder: FeedDecoder, key: str) -> Tick | None:
    """The merge state the decoder keeps for an instrument (what it fills omitted fields from)."""
    return decoder.last_ticks().get(key)


def ist_ms(day: int, hour: int, minute: int, second: int = 0, month: int = 1) -> int:
    """Epoch milliseconds of an IST wall-clock time in 2025, as the feed's ltt carries it."""
    moment = datetime(2025, month, day, hour, minute, second, tzinfo=IST)
    return (moment - UNIX_EPOCH) // timedelta(milliseconds=1)


def at_ms(epoch_ms: int) -> datetime:
    """The moment of a feed time (Unix-epoch milliseconds)."""
    return UNIX_EPOCH + timedelta(milliseconds=epoch_ms)


RECEIVED_AT = UNIX_EPOCH + timedelta(microseconds=RECEIVED)


T0 = ist_ms(15, 10, 0)


def ltpc(ltt: int = T0, ltp: float = 1250.5, ltq: int = 10, cp: float = 1240.0) -> pb.LTPC:
    return pb.LTPC(ltp=ltp, ltt=ltt, ltq=ltq, cp=cp)


def market_ff(
    *,
    ltt: int | None = T0,
    ltp: float = 1250.5,
    vtt: int = 100_000,
    bid: tuple[float, int] | None = (1250.45, 300),
    ask: tuple[float, int] = (1250.55, 200),
    delta: float | None = None,
    atp: float = 1248.2,
    oi: float = 0.0,
    iv: float = 0.0,
    tbq: float = 50_000.0,
    tsq: float = 60_000.0,
) -> pb.Feed:
    """A full-mode feed; `ltt=None`, `bid=None` or `delta=None` leave that sub-message out."""
    market = pb.MarketFullFeed(atp=atp, vtt=vtt, oi=oi, iv=iv, tbq=tbq, tsq=tsq)
    if ltt is not None:
        market.ltpc.CopyFrom(ltpc(ltt=ltt, ltp=ltp))
    if bid is not None:
        for level in range(5):  # full_d5: five levels, best first
            market.marketLevel.bidAskQuote.add(
                bidP=bid[0] - level * 0.05,
                bidQ=bid[1] + level,
                askP=ask[0] + level * 0.05,
                askQ=ask[1] + level,
            )
    if delta is not None:
        market.optionGreeks.CopyFrom(
            pb.OptionGreeks(delta=delta, theta=-11.5, gamma=0.002, vega=7.25, rho=0.8)
        )
    market.marketOHLC.ohlc.add(interval="I1", open=1249.0, high=1251.0, low=1248.5, close=ltp)
    return pb.Feed(fullFeed=pb.FullFeed(marketFF=market), requestMode=pb.full_d5)


def frame(
    feeds: dict[str, pb.Feed], kind: pb.Type = pb.live_feed, current_ts: int = T0 + 40
) -> bytes:
    response = pb.FeedResponse(type=kind, currentTs=current_ts)
    for key, feed in feeds.items():
        response.feeds[key].CopyFrom(feed)
    return response.SerializeToString()


def one_tick(decoder: FeedDecoder, feed: pb.Feed, key: str = RELIANCE) -> dict[str, object]:
    decoded = decoder.decode(frame({key: feed}), RECEIVED)
    [tick] = decoded.ticks
    return as_dict(tick)


def test_ltpc_feed_gives_the_trade_columns(decoder_cls):
    tick = one_tick(decoder_cls(), pb.Feed(ltpc=ltpc()))

    assert tick["instrument_key"] == RELIANCE
    assert (tick["ts"], tick["ltp"], tick["ltq"], tick["cp"]) == (at_ms(T0), 1250.5, 10, 1240.0)
    assert tick["vtt"] is None
    assert tick["volume_delta"] is None
    assert tick["bid_price"] is None
    assert tick["delta"] is None
    assert (tick["feed_ts"], tick["received_at"]) == (at_ms(T0 + 40), RECEIVED_AT)


def test_market_full_feed_gives_every_column_from_the_best_level(decoder_cls):
    tick = one_tick(decoder_cls(), market_ff(delta=0.52, oi=1_200_000.0, iv=0.18), key=OPTION)

    assert tick["ts"] == at_ms(T0)
    assert (tick["ltp"], tick["ltq"], tick["cp"]) == (1250.5, 10, 1240.0)
    assert (tick["vtt"], tick["volume_delta"]) == (100_000, 0)
    assert (tick["atp"], tick["oi"], tick["iv"]) == (1248.2, 1_200_000.0, 0.18)
    assert (tick["tbq"], tick["tsq"]) == (50_000.0, 60_000.0)
    assert (tick["bid_price"], tick["bid_qty"]) == (1250.45, 300)
    assert (tick["ask_price"], tick["ask_qty"]) == (1250.55, 200)
    greeks = [tick[name] for name in ("delta", "theta", "gamma", "vega", "rho")]
    assert greeks == [0.52, -11.5, 0.002, 7.25, 0.8]


def test_index_feed_has_no_quantity_volume_or_depth(decoder_cls):
    ltt = ist_ms(15, 10, 0, 7)  # index ltt: whole seconds
    index_ltpc = pb.LTPC(ltp=23_500.35, ltt=ltt, cp=23_410.0)
    index = pb.IndexFullFeed(ltpc=index_ltpc)
    index.marketOHLC.ohlc.add(interval="1d", open=23_400.0, high=23_550.0, low=23_380.0)
    tick = one_tick(decoder_cls(), pb.Feed(fullFeed=pb.FullFeed(indexFF=index)), key=NIFTY)

    assert (tick["ts"], tick["ltp"], tick["cp"]) == (at_ms(ltt), 23_500.35, 23_410.0)
    assert tick["ltq"] is None
    assert (tick["vtt"], tick["volume_delta"]) == (None, None)
    assert (tick["bid_price"], tick["ask_qty"], tick["atp"]) == (None, None, None)


def test_first_level_with_greeks_feed(decoder_cls):
    first = pb.FirstLevelWithGreeks(
        ltpc=ltpc(ltp=101.5),
        firstDepth=pb.Quote(bidQ=750, bidP=101.4, askQ=1500, askP=101.6),
        optionGreeks=pb.OptionGreeks(delta=-0.31, theta=-4.0, gamma=0.01, vega=3.5, rho=-0.2),
        vtt=2_250_000,
        oi=4_500_000.0,
        iv=0.142,
    )
    tick = one_tick(decoder_cls(), pb.Feed(firstLevelWithGreeks=first), key=OPTION)

    assert (tick["ltp"], tick["vtt"], tick["oi"], tick["iv"]) == (101.5, 2_250_000, 4.5e6, 0.142)
    assert (tick["bid_price"], tick["bid_qty"], tick["ask_price"], tick["ask_qty"]) == (
        101.4,
        750,
        101.6,
        1500,
    )
    assert (tick["delta"], tick["rho"]) == (-0.31, -0.2)
    assert (tick["atp"], tick["tbq"], tick["tsq"]) == (None, None, None)  # not in this mode


def test_frame_kind_follows_the_type_and_no_type_is_a_snapshot(decoder_cls):
    decoder = decoder_cls()

    snapshot = decoder.decode(frame({RELIANCE: market_ff()}, kind=pb.initial_feed), RECEIVED)
    live = decoder.decode(frame({RELIANCE: market_ff(ltt=T0 + 500)}), RECEIVED)

    assert (snapshot.kind, len(snapshot.ticks)) == ("snapshot", 1)
    assert (live.kind, len(live.ticks)) == ("live", 1)
    assert to_datetime(snapshot.feed_ts) == at_ms(T0 + 40)


def test_market_info_frame_gives_segment_status_and_no_ticks(decoder_cls):
    response = pb.FeedResponse(type=pb.market_info, currentTs=T0)
    response.marketInfo.segmentStatus["NSE_EQ"] = pb.NORMAL_OPEN
    response.marketInfo.segmentStatus["NSE_FO"] = pb.PRE_OPEN_START  # 0: absent on the wire
    response.marketInfo.segmentStatus["MCX_FO"] = pb.CLOSING_END

    decoded = decoder_cls().decode(response.SerializeToString(), RECEIVED)

    assert decoded.kind == "market_info"
    assert decoded.ticks == []
    assert decoded.market_status == {
        "NSE_EQ": "NORMAL_OPEN",
        "NSE_FO": "PRE_OPEN_START",
        "MCX_FO": "CLOSING_END",
    }


def test_omitted_depth_greeks_and_zero_scalars_are_taken_from_the_last_tick(decoder_cls):
    decoder = decoder_cls()
    first = one_tick(decoder, market_ff(delta=0.52, oi=1_200_000.0, iv=0.18), key=OPTION)

    later = market_ff(
        ltt=T0 + 900, ltp=1251.0, vtt=100_450, bid=None, delta=None, atp=0.0, oi=0.0, tbq=0.0
    )
    second = one_tick(decoder, later, key=OPTION)

    assert (second["ts"], second["ltp"], second["volume_delta"]) == (at_ms(T0 + 900), 1251.0, 450)
    for name in ("bid_price", "bid_qty", "ask_price", "ask_qty", "delta", "rho"):
        assert second[name] == first[name], name
    assert (second["atp"], second["oi"], second["iv"], second["tbq"]) == (
        1248.2,
        1_200_000.0,
        0.18,
        50_000.0,
    )
    assert second["tsq"] == 60_000.0  # sent again, not merged


def test_depth_only_change_keeps_the_last_trade(decoder_cls):
    decoder = decoder_cls()
    first = one_tick(decoder, market_ff())

    second = one_tick(decoder, market_ff(ltt=None, bid=(1250.40, 900), vtt=0))

    assert (second["ts"], second["ltp"], second["ltq"]) == (first["ts"], first["ltp"], first["ltq"])
    assert (second["bid_price"], second["bid_qty"]) == (1250.40, 900)
    assert (second["vtt"], second["volume_delta"]) == (100_000, 0)


def test_feed_without_ltpc_and_no_last_tick_yields_nothing(decoder_cls):
    decoder = decoder_cls()

    decoded = decoder.decode(frame({RELIANCE: market_ff(ltt=None)}), RECEIVED)

    assert (decoded.ticks, decoded.duplicates, decoded.unwanted) == ([], 0, 0)
    assert last_state(decoder, RELIANCE) is None


def test_volume_delta_is_the_vtt_difference_between_frames(decoder_cls):
    decoder = decoder_cls()
    volumes = [
        one_tick(decoder, market_ff(ltt=T0 + step * 700, vtt=vtt))["volume_delta"]
        for step, vtt in enumerate([100_000, 101_402, 101_402, 103_000])
    ]

    assert volumes == [0, 1402, 0, 1598]


def test_volume_delta_restarts_when_vtt_falls(decoder_cls):
    decoder = decoder_cls()
    one_tick(decoder, market_ff(vtt=5_000_000))

    after_reset = one_tick(decoder, market_ff(ltt=T0 + 1000, vtt=1200))

    assert (after_reset["vtt"], after_reset["volume_delta"]) == (1200, 1200)


def test_volume_delta_restarts_at_ist_midnight_not_utc_midnight(decoder_cls):
    # MCX trades until 23:55 IST; 23:50 and 00:10 IST share one UTC date (18:20, 18:40 UTC).
    decoder = decoder_cls()
    one_tick(decoder, market_ff(ltt=ist_ms(15, 23, 50), vtt=900_000, delta=0.4, oi=7.0))

    next_day = one_tick(decoder, market_ff(ltt=ist_ms(16, 0, 10), vtt=950_000, bid=None))

    assert (next_day["vtt"], next_day["volume_delta"]) == (950_000, 950_000)
    assert (next_day["bid_price"], next_day["delta"]) == (None, None)  # yesterday's: not merged
    assert next_day["oi"] == 0.0


def test_seeded_state_prevents_double_counting_after_a_restart(decoder_cls):
    before = decoder_cls()
    stored = before.decode(frame({RELIANCE: market_ff(vtt=100_000)}), RECEIVED).ticks
    restarted = decoder_cls()
    restarted.seed(stored)

    resent = restarted.decode(frame({RELIANCE: market_ff(vtt=100_000)}, kind=pb.initial_feed), 1)
    live = restarted.decode(frame({RELIANCE: market_ff(ltt=T0 + 800, vtt=100_750)}), 2)

    assert (resent.ticks, resent.duplicates) == ([], 1)
    assert as_dict(live.ticks[0])["volume_delta"] == 750


def test_the_first_tick_after_a_gap_carries_none_of_the_gaps_volume(decoder_cls):
    """A restart (seeded) and a reconnect (same decoder) alike: the snapshot that opens the
    new subscription says what traded while nobody listened; no minute of ours owns that.
    The live frames after it count from it."""
    heard = decoder_cls()
    stored = heard.decode(frame({RELIANCE: market_ff(vtt=100_000)}), RECEIVED).ticks
    restarted = decoder_cls()
    restarted.seed(stored)
    for decoder in (restarted, heard):
        snapshot = decoder.decode(
            frame({RELIANCE: market_ff(ltt=T0 + 150_000, vtt=334_165)}, kind=pb.initial_feed), 1
        )
        live = decoder.decode(frame({RELIANCE: market_ff(ltt=T0 + 150_900, vtt=334_200)}), 2)

        assert [(t["vtt"], t["volume_delta"]) for t in map(as_dict, snapshot.ticks)] == [
            (334_165, 0)
        ]
        assert [(t["vtt"], t["volume_delta"]) for t in map(as_dict, live.ticks)] == [(334_200, 35)]


def test_seed_refuses_rows_with_datetime_times(decoder_cls):
    as_read = (RELIANCE, datetime(2025, 1, 15, 4, 30, tzinfo=UTC), *[None] * 21)

    with pytest.raises(TypeError, match="integer tick times"):
        decoder_cls().seed([as_read])


def test_resent_snapshot_is_dropped_and_leaves_the_state_alone(decoder_cls):
    decoder = decoder_cls()
    decoder.decode(frame({RELIANCE: market_ff(), OPTION: market_ff(delta=0.5)}), RECEIVED)

    again = decoder.decode(
        frame({RELIANCE: market_ff(), OPTION: market_ff(delta=0.5)}, kind=pb.initial_feed),
        RECEIVED + 5_000_000,
    )

    assert (again.ticks, again.duplicates) == ([], 2)
    assert as_dict(last_state(decoder, RELIANCE))["received_at"] == RECEIVED_AT


@pytest.mark.parametrize(
    "garbage",
    [b"\xff" * 100, b'{"status": "failed", "error": "bad request", "method": "sub"}'],
    ids=["noise", "json-error"],
)
def test_garbage_raises_malformed_frame_and_the_decoder_goes_on(garbage, decoder_cls):
    decoder = decoder_cls()

    with pytest.raises(MalformedFrame) as raised:
        decoder.decode(garbage, RECEIVED)

    message = str(raised.value)
    assert f"{len(garbage)} bytes" in message
    assert garbage[:32].hex() in message
    assert garbage[:33].hex() not in message
    assert len(decoder.decode(frame({RELIANCE: market_ff()}), RECEIVED).ticks) == 1


def test_truncated_frame_is_malformed(decoder_cls):
    cut = frame({RELIANCE: market_ff()})[:100]  # ends inside the feeds map entry

    with pytest.raises(MalformedFrame, match="100 bytes"):
        decoder_cls().decode(cut, RECEIVED)


def test_unwanted_keys_are_skipped_and_counted(decoder_cls):
    decoder = decoder_cls()
    feeds = {RELIANCE: market_ff(), OPTION: market_ff(), NIFTY: pb.Feed(ltpc=ltpc())}

    decoded = decoder.decode(frame(feeds), RECEIVED, wanted={RELIANCE})

    assert [tick[0] for tick in decoded.ticks] == [RELIANCE]
    assert decoded.unwanted == 2
    assert last_state(decoder, OPTION) is None


def varint(value: int) -> bytes:
    """Protobuf's varint; a negative value as its 64-bit two's complement, as protobuf does."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, wire_type: int, payload: bytes) -> bytes:
    if wire_type == 2:  # length-delimited
        payload = varint(len(payload)) + payload
    return varint(number << 3 | wire_type) + payload


def test_hand_encoded_frame_with_the_spec_field_numbers_decodes(decoder_cls):
    ltt = ist_ms(15, 9, 15, 1)
    wire_ltpc = (
        field(1, 1, struct.pack("<d", 2_901.25))  # ltp: double
        + field(2, 0, varint(ltt))  # ltt: int64
        + field(3, 0, varint(25))  # ltq: int64
        + field(4, 1, struct.pack("<d", 2_880.0))  # cp: double
    )
    wire_feed = field(1, 2, wire_ltpc)  # Feed.ltpc
    entry = field(1, 2, RELIANCE.encode()) + field(2, 2, wire_feed)  # map<string, Feed>
    wire = field(1, 0, varint(1)) + field(2, 2, entry) + field(3, 0, varint(ltt + 3))

    decoded = decoder_cls().decode(wire, RECEIVED)

    assert decoded.kind == "live"
    assert to_datetime(decoded.feed_ts) == at_ms(ltt + 3)
    [tick] = (as_dict(tick) for tick in decoded.ticks)
    assert tick["instrument_key"] == RELIANCE
    assert (tick["ts"], tick["ltp"], tick["ltq"], tick["cp"]) == (
        at_ms(ltt),
        2_901.25,
        25,
        2_880.0,
    )


# --- the compiled decoder's one str per instrument key ------------------------------------


@pytest.fixture
def compiled() -> type:
    if CompiledFeedDecoder is None:
        pytest.skip("the compiled decoder is not built here")
    return CompiledFeedDecoder


def test_an_instruments_ticks_share_one_interned_key_across_frames(compiled):
    """Every dict a tick meets (the decoder's state, the cache, the bars, the published
    slots, the client's subscriptions, which intern their keys) then finds its key by
    identity, and queued ticks do not each hold a copy."""
    decoder = compiled()
    accented = "NSE_EQ|ÉCLAT Ü"  # a key whose UTF-8 is not ASCII
    first = decoder.decode(frame({RELIANCE: market_ff(), accented: market_ff()}), RECEIVED)
    second = decoder.decode(
        frame({RELIANCE: market_ff(ltp=1251.0), accented: market_ff(ltp=1251.0)}), RECEIVED
    )

    keys_before = {tick[0]: tick[0] for tick in first.ticks}
    assert sorted(keys_before) == sorted([RELIANCE, accented])
    for tick in second.ticks:
        assert tick[0] is keys_before[tick[0]] is sys.intern(tick[0])
    assert decoder.kept_keys == 2


def test_a_seeded_instrument_is_found_by_the_key_its_state_is_stored_by(compiled):
    stored_key = "".join(["NSE_EQ|", "INE002A01018"])  # a str of its own, as a row gives
    [stored] = compiled().decode(frame({RELIANCE: market_ff(vtt=100_000)}), RECEIVED).ticks
    restarted = compiled()
    restarted.seed([(stored_key, *stored[1:])])

    [tick] = restarted.decode(frame({RELIANCE: market_ff(ltt=T0 + 800, vtt=100_750)}), 2).ticks

    [stored_by] = list(restarted.last_ticks())
    assert tick[0] is stored_by is sys.intern(RELIANCE)
    assert as_dict(tick)["volume_delta"] == 750  # counted from the seeded state


def test_keys_the_caller_does_not_want_are_never_kept(compiled):
    """A feed flooding keys nobody subscribed to leaves nothing behind."""
    decoder = compiled()
    strangers = {f"NSE_FO|{n}": pb.Feed(ltpc=ltpc()) for n in range(5_000)}

    decoded = decoder.decode(frame({RELIANCE: market_ff(), **strangers}), RECEIVED, {RELIANCE})

    assert [tick[0] for tick in decoded.ticks] == [RELIANCE]
    assert decoded.unwanted == 5_000
    assert decoder.kept_keys == 1


def test_kept_keys_stop_at_their_bound_and_later_keys_still_decode(compiled):
    from ingest.upstox._fastdecode import MAX_KEPT_KEYS

    decoder = compiled()
    per_frame = 4_096
    names = [f"NSE_FO|{n}" for n in range(MAX_KEPT_KEYS + per_frame)]
    feed = pb.Feed(ltpc=ltpc())
    decoded_keys: list[str] = []
    for start in range(0, len(names), per_frame):
        chunk = names[start : start + per_frame]
        decoded_keys += [
            tick[0] for tick in decoder.decode(frame(dict.fromkeys(chunk, feed)), RECEIVED).ticks
        ]

    assert decoder.kept_keys == MAX_KEPT_KEYS
    assert sorted(decoded_keys) == sorted(names)
    # Past the bound a key is decoded afresh each time: equal, not kept.
    [again] = decoder.decode(frame({names[-1]: pb.Feed(ltpc=ltpc(ltp=1.0))}), RECEIVED).ticks
    assert again[0] == names[-1]
    assert decoder.kept_keys == MAX_KEPT_KEYS
    # Its state is kept all the same: its next tick is merged from its last.
    decoder.decode(frame({names[-1]: market_ff(vtt=100_000)}), RECEIVED)
    [merged] = decoder.decode(frame({names[-1]: market_ff(ltt=T0 + 800, vtt=100_750)}), 2).ticks
    assert as_dict(merged)["volume_delta"] == 750
    assert decoder.last_ticks()[names[-1]] == merged
    assert len(decoder.last_ticks()) == len(names)
