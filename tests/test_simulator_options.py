"""The simulator's options: one pricing model (known values), chains listed and rolled on its
clock, and the option-chain endpoint answering from the state the feed sends."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import math
import time
import urllib.request
from datetime import UTC, date, datetime

import pytest

from core.ist import IST
from ingest.simulator import FeedSimulator
from ingest.simulator.chains import INDEX_CHAINS, close_ms, expiry_dates, slot_of
from ingest.simulator.market import DEFAULT_UNIVERSE, Universe
from ingest.simulator.pricing import RISK_FREE_RATE, black_scholes, implied_vol, smile
from ingest.upstox.proto import upstox_feed_v3_pb2 as pb
from tests.test_simulator import feed, frame, http_get, request

NIFTY = "NSE_INDEX|Nifty 50"
BANK = "NSE_INDEX|Nifty Bank"
MASTER = "/market-quote/instruments/exchange/complete.json.gz"
SIDES = ("call_options", "put_options")
YEAR_S = 365 * 86_400
MARKET_FIELDS = {
    "ltp",
    "close_price",
    "volume",
    "oi",
    "bid_price",
    "bid_qty",
    "ask_price",
    "ask_qty",
    "prev_oi",
}
# Monday 7 December 2026, 10:00 IST
MONDAY_MS = int(datetime(2026, 12, 7, 10, 0, tzinfo=IST).timestamp() * 1000)


def test_black_scholes_matches_the_textbook() -> None:
    """Hull, Options, Futures and Other Derivatives, example 15.6: S=42, K=40, r=10%,
    sigma=20%, six months: call 4.76, put 0.81; the call's delta N(d1) = 0.7791."""
    call, (delta, theta, gamma, vega, rho) = black_scholes(42, 40, 0.5, 0.2, True, rate=0.1)
    put, (put_delta, *_) = black_scholes(42, 40, 0.5, 0.2, False, rate=0.1)
    assert round(call, 2) == 4.76
    assert round(put, 2) == 0.81
    assert round(delta, 4) == 0.7791
    assert round(put_delta, 4) == round(delta - 1, 4)
    assert call - put == pytest.approx(42 - 40 * math.exp(-0.1 * 0.5), abs=1e-9)  # parity
    assert min(gamma, vega, rho) > 0
    assert theta < 0
    # Vega per 1%: the price moves by about vega when the vol moves by one point.
    up, _ = black_scholes(42, 40, 0.5, 0.21, True, rate=0.1)
    assert up - call == pytest.approx(vega, rel=0.02)


def test_implied_vol_inverts_the_price_and_names_an_impossible_one() -> None:
    price, _ = black_scholes(24300, 24500, 7 / 365, 0.137, True)
    assert implied_vol(price, 24300, 24500, 7 / 365, True) == pytest.approx(0.137, abs=1e-5)
    with pytest.raises(ValueError, match="below the option's lower bound"):
        implied_vol(0.0, 24300, 20000, 7 / 365, True)


def test_the_smile_is_skewed_to_the_puts_and_at_the_base_at_the_money() -> None:
    years = 7 / 365
    assert smile(0.13, 24300, 24300, years) == pytest.approx(0.13)
    low, high = smile(0.13, 24300, 23300, years), smile(0.13, 24300, 25300, years)
    assert low > high > 0.13 * 0.9
    assert smile(0.13, 24300, 20000, years) > low, "the wings rise"


def test_nifty_lists_weeklies_and_banknifty_monthlies_that_roll_at_the_close() -> None:
    nifty, bank = INDEX_CHAINS[NIFTY], INDEX_CHAINS[BANK]
    assert expiry_dates(nifty, MONDAY_MS) == [
        date(2026, 12, 8),
        date(2026, 12, 15),
        date(2026, 12, 22),
    ]
    assert expiry_dates(bank, MONDAY_MS) == [
        date(2026, 12, 29),
        date(2027, 1, 26),
        date(2027, 2, 23),
    ]
    close = close_ms(date(2026, 12, 8))
    assert datetime.fromtimestamp(close / 1000, IST).time().isoformat() == "15:30:00"
    assert expiry_dates(nifty, close)[0] == date(2026, 12, 15), "gone at its close"

    universe = Universe(DEFAULT_UNIVERSE, seed=1)
    listed = universe.listing(close - 1)
    assert universe.listing(close - 1) is listed, "the same listing until an expiry passes"
    options = [r for r in listed if r.get("underlying_symbol") == "NIFTY"]
    assert len(options) == 3 * 81 * 2  # three expiries, 40 strikes each side, CE and PE
    strikes = sorted({r["strike_price"] for r in options})
    assert strikes[40] == 24300
    assert strikes[1] - strikes[0] == 50
    rolled = universe.listing(close)
    expiries = {r["expiry"] for r in rolled if r.get("underlying_symbol") == "NIFTY"}
    assert close not in expiries, "the expired contracts left the master"
    assert len(expiries) == 3, "the next expiry joined"


def _upstox_option(token: int, strike: float, kind: str, day: date) -> dict[str, object]:
    return {
        "instrument_key": f"NSE_FO|{token}", "segment": "NSE_FO", "instrument_type": kind,
        "trading_symbol": f"NIFTY {strike:g} {kind}", "strike_price": strike,
        "expiry": close_ms(day) + 30_599_000,  # Upstox's: 23:59:59 IST
        "underlying_key": NIFTY, "underlying_symbol": "NIFTY",
    }  # fmt: skip


def test_a_masters_own_index_options_stand_in_the_chain_or_replace_it() -> None:
    tuesday = date(2026, 12, 8)
    one = _upstox_option(45001, 24300.0, "CE", tuesday)
    listed = Universe([*DEFAULT_UNIVERSE, one], seed=1).listing(MONDAY_MS)
    nifty = [r for r in listed if r.get("underlying_symbol") == "NIFTY"]
    slot = [r for r in nifty if slot_of(r) == (tuesday, 24300.0, "CE")]
    assert slot == [one], "the master's own contract takes its place in the chain"
    # Upstox's whole master lists chains of its own: they trade as they are.
    whole = [
        _upstox_option(46000 + i, 24300.0 + 50 * (i // 2), ("CE", "PE")[i % 2], tuesday)
        for i in range(162)
    ]
    listed = Universe([*DEFAULT_UNIVERSE, *whole], seed=1).listing(MONDAY_MS)
    nifty = [r for r in listed if r.get("underlying_symbol") == "NIFTY"]
    assert nifty == whole
    assert any(r.get("underlying_symbol") == "BANKNIFTY" for r in listed)
    # A master saved from an earlier run lists the simulator's own chains: they roll on.
    saved = Universe(DEFAULT_UNIVERSE, seed=1).listing(MONDAY_MS)
    again = Universe(saved, seed=1).listing(close_ms(tuesday))
    days = {r["expiry"] for r in again if r.get("underlying_symbol") == "NIFTY"}
    assert len(days) == 3
    assert close_ms(date(2026, 12, 29)) in days


async def _chain(simulator: FeedSimulator, day: date) -> dict:
    url = f"{simulator.url}/v2/option/chain?instrument_key=NSE_INDEX%7CNifty%2050&expiry_date={day}"
    status, body = await asyncio.to_thread(http_get, url)
    assert status == 200, body
    return body


def test_the_chain_endpoint_answers_what_the_feed_sent() -> None:
    """Stalled, the market stands still: each contract's last frame and the endpoint agree on
    LTP, OI, IV and delta exactly, calls and puts keep put-call parity roughly (each
    contract's IV sits a little off the smile), and greeks have their signs."""
    last: dict[str, dict[str, float]] = {}

    def note(response: pb.FeedResponse) -> None:
        """Each key's latest values; greeks come only when they changed."""
        for key, sent in response.feeds.items():
            first = sent.firstLevelWithGreeks
            seen = last.setdefault(key, {})
            seen.update(ltp=first.ltpc.ltp, oi=first.oi, iv=first.iv)
            if first.HasField("optionGreeks"):
                seen["delta"] = first.optionGreeks.delta

    async def scenario() -> tuple[dict, list[dict], int]:
        async with FeedSimulator(rate=2000, frame_interval=0.02) as simulator:
            now_ms = int(datetime.now(UTC).timestamp() * 1000)
            day = expiry_dates(INDEX_CHAINS[NIFTY], now_ms)[1]
            master = await asyncio.to_thread(urllib.request.urlopen, simulator.url + MASTER)
            records = json.loads(gzip.decompress(master.read()))
            chain = (await _chain(simulator, day))["data"]
            keys = [row[side]["instrument_key"] for row in chain[35:46] for side in SIDES]
            async with feed(simulator) as ws:
                await request(ws, "sub", [NIFTY, *keys], "option_greeks")
                for _ in range(60):
                    note((await frame(ws))[1])
                simulator.stall(30)
                with contextlib.suppress(TimeoutError):
                    while True:
                        note(pb.FeedResponse.FromString(await asyncio.wait_for(ws.recv(), 0.5)))
                answer = await _chain(simulator, day)
            return answer, records, len(keys)

    answer, records, followed = asyncio.run(scenario())
    puts = [
        r for r in records if r.get("underlying_symbol") == "NIFTY" and r["instrument_type"] == "PE"
    ]
    assert len(puts) == 3 * 81, "the master lists the chains the endpoint answers"
    rows = answer["data"]
    assert len(rows) == 81
    compared = 0
    for row in rows:
        assert set(row) == {
            "expiry",
            "pcr",
            "strike_price",
            "underlying_key",
            "underlying_spot_price",
            *SIDES,
        }
        call, put = row["call_options"], row["put_options"]
        assert set(call["market_data"]) == MARKET_FIELDS
        assert set(call["option_greeks"]) == {"vega", "theta", "gamma", "delta", "iv"}
        assert 0 < call["option_greeks"]["delta"] < 1
        assert -1 < put["option_greeks"]["delta"] < 0
        assert row["pcr"] == pytest.approx(
            put["market_data"]["oi"] / call["market_data"]["oi"], abs=1e-4
        )
        if call["instrument_key"] in last and put["instrument_key"] in last:
            # Both priced on the stalled spot: parity holds up to their IVs' difference (at
            # most 2 points: twice their vegas bound the gap) and the tick.
            years = (close_ms(date.fromisoformat(row["expiry"])) / 1000 - time.time()) / YEAR_S
            discounted = row["strike_price"] * math.exp(-RISK_FREE_RATE * years)
            parity = row["underlying_spot_price"] - discounted
            gap = call["market_data"]["ltp"] - put["market_data"]["ltp"] - parity
            vegas = call["option_greeks"]["vega"] + put["option_greeks"]["vega"]
            assert abs(gap) < 2 * vegas + 0.1, row
        for side in (call, put):
            sent = last.get(side["instrument_key"])
            if sent is not None:
                got = {**side["market_data"], **side["option_greeks"]}
                assert {name: got[name] for name in sent} == sent
                compared += 1
    assert compared == followed


def test_move_shifts_the_underlying_and_its_options_follow() -> None:
    async def scenario() -> tuple[float, float, dict, dict]:
        async with FeedSimulator(rate=500, frame_interval=0.02) as simulator:
            now_ms = int(datetime.now(UTC).timestamp() * 1000)
            day = expiry_dates(INDEX_CHAINS[NIFTY], now_ms)[0]
            before = (await _chain(simulator, day))["data"]
            atm = next(r for r in before if r["strike_price"] == 24300)
            status, body = await asyncio.to_thread(
                http_get,
                f"{simulator.url}/_sim/move?instrument_key=NSE_INDEX%7CNifty%2050&price=24800",
            )
            assert status == 200, body
            bad, error = await asyncio.to_thread(http_get, f"{simulator.url}/_sim/move?price=-1")
            assert bad == 400
            assert "instrument_key" in error["errors"][0]["message"]
            async with feed(simulator) as ws:  # followed, so its options trade at the new price
                key = atm["call_options"]["instrument_key"]
                await request(ws, "sub", [key], "option_greeks")
                for _ in range(5):
                    await frame(ws)
            after = next(
                r for r in (await _chain(simulator, day))["data"] if r["strike_price"] == 24300
            )
            return before[0]["underlying_spot_price"], after["underlying_spot_price"], atm, after

    spot_before, spot_after, before, after = asyncio.run(scenario())
    assert abs(spot_before - 24300) < 500
    assert abs(spot_after - 24800) < 5
    assert (
        after["call_options"]["market_data"]["ltp"]
        > before["call_options"]["market_data"]["ltp"] + 200
    )
    assert after["call_options"]["option_greeks"]["delta"] > 0.8
