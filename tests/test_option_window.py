"""The option-chain window planner (ingest/chains/window.py): pure, case by case."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.ist import IST
from ingest.chains.window import ChainPlanError, Contract, at_the_money, closes_at, plan

NIFTY = "NSE_INDEX|Nifty 50"
BANK = "NSE_INDEX|Nifty Bank"
NOW = datetime(2026, 12, 7, 10, 0, tzinfo=IST)
# Upstox's master gives 23:59:59 IST of the expiry date.
E1 = datetime(2026, 12, 8, 23, 59, 59, tzinfo=IST)
E2, E3 = E1 + timedelta(days=7), E1 + timedelta(days=14)


def chain(symbol: str, key: str, expiry: datetime, low: int, high: int, step: int) -> list:
    return [
        Contract(f"{symbol}|{expiry:%m%d}|{strike}|{kind}", symbol, key, expiry, strike, kind)
        for strike in range(low, high + step, step)
        for kind in ("CE", "PE")
    ]


CONTRACTS = [
    *(c for e in (E1, E2, E3) for c in chain("NIFTY", NIFTY, e, 23000, 25000, 50)),
    *chain("BANKNIFTY", BANK, E3, 50000, 54000, 100),
]


def test_window_is_the_money_and_strikes_each_side_of_the_nearest_expiries() -> None:
    planned = plan(CONTRACTS, {NIFTY: 24312.0}, NOW, expiries=2, strikes=3, room=1000)
    assert [(w.underlying, w.expiry.isoformat()) for w in planned.windows] == [
        ("NIFTY", "2026-12-08"),
        ("NIFTY", "2026-12-15"),
    ]
    first = planned.windows[0]
    assert (first.atm_strike, first.low_strike, first.high_strike) == (24300, 24150, 24450)
    assert len(first.keys) == 14  # 7 strikes, a call and a put each
    assert all(key.startswith("NIFTY|1208|") for key in first.keys)
    assert planned.waiting == ("BANKNIFTY",), "no price for BANKNIFTY yet: no window"
    assert planned.keys == frozenset(k for w in planned.windows for k in w.keys)


def test_hysteresis_keeps_the_strike_until_the_price_reaches_a_neighbour() -> None:
    strikes = [24200.0, 24250.0, 24300.0, 24350.0, 24400.0]
    assert at_the_money(strikes, 24276.0, None) == 24300
    # Hovering about the midpoint 24325 (nearest strike flips) changes nothing ...
    for price in (24326.0, 24324.0, 24349.0, 24301.0):
        assert at_the_money(strikes, price, 24300.0) == 24300
    # ... until the price reaches the neighbouring strike; then the nearest strike is taken.
    assert at_the_money(strikes, 24350.0, 24300.0) == 24350
    assert at_the_money(strikes, 24391.0, 24300.0) == 24400
    assert at_the_money(strikes, 24250.0, 24300.0) == 24250
    # A strike no longer listed is no anchor.
    assert at_the_money(strikes, 24326.0, 24325.0) == 24350


def test_the_plan_carries_its_strike_into_the_next_one() -> None:
    prices = {NIFTY: 24320.0}
    first = plan(CONTRACTS, prices, NOW, expiries=1, strikes=2, room=100)
    assert first.windows[0].atm_strike == 24300
    hovering = plan(
        CONTRACTS, {NIFTY: 24330.0}, NOW, expiries=1, strikes=2, room=100, previous=first.atm
    )
    assert hovering.keys == first.keys
    moved = plan(
        CONTRACTS, {NIFTY: 24352.0}, NOW, expiries=1, strikes=2, room=100, previous=first.atm
    )
    assert moved.windows[0].atm_strike == 24350


def test_an_expiry_closes_at_1530_ist_then_the_next_one_is_followed() -> None:
    assert closes_at(E1) == datetime(2026, 12, 8, 15, 30, tzinfo=IST)
    before = datetime(2026, 12, 8, 15, 29, 59, tzinfo=IST)
    after = datetime(2026, 12, 8, 15, 30, tzinfo=IST).astimezone(UTC)
    prices = {NIFTY: 24300.0}
    days = [
        [
            w.expiry.isoformat()
            for w in plan(CONTRACTS, prices, t, expiries=2, strikes=1, room=99).windows
        ]
        for t in (before, after)
    ]
    assert days == [["2026-12-08", "2026-12-15"], ["2026-12-15", "2026-12-22"]]


def test_windows_narrow_to_fit_the_feeds_room_and_say_so() -> None:
    prices = {NIFTY: 24300.0, BANK: 52000.0}
    # 3 windows: at 15 strikes each side 3 * 62 = 186 keys; 100 fit 7 each side (90).
    planned = plan(CONTRACTS, prices, NOW, expiries=2, strikes=15, room=100)
    assert planned.strikes == 7
    assert len(planned.keys) == 90
    with pytest.raises(ChainPlanError, match="do not fit the feed's room of 11 keys"):
        plan(CONTRACTS, prices, NOW, expiries=2, strikes=15, room=11)


def test_window_at_the_edge_of_the_listed_strikes_takes_what_there_is() -> None:
    planned = plan(CONTRACTS, {NIFTY: 22000.0}, NOW, expiries=1, strikes=3, room=100)
    window = planned.windows[0]
    assert (window.atm_strike, window.low_strike, window.high_strike) == (23000, 23000, 23150)
