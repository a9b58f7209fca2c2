"""The ingest follows option chains on the simulator: real sockets, real TimescaleDB.

`WebSocketService` runs on its built-in simulator (no token), which lists NIFTY's weekly and
BANKNIFTY's monthly chains on its clock; the ingest loads them from its master at start and
follows the nearest two expiries, 15 strikes each side of the money.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, date, datetime
from pathlib import Path

import psycopg
import pytest

from core.config import Settings
from ingest.service import WebSocketService
from ingest.simulator.chains import INDEX_CHAINS, close_ms, expiry_dates
from tests.clock import FeedClock
from tests.test_ingest_e2e import _wait_for

NIFTY = "NSE_INDEX|Nifty 50"


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        simulator_rate=3000,
        schedule_enabled=False,
        audit_after_close=False,
        **overrides,
    )


def _windows(service: WebSocketService) -> list[tuple[str, date, float, float, float, int]]:
    chains = service.status().option_chains
    assert chains is not None
    return [
        (w.underlying, w.expiry, w.atm_strike, w.low_strike, w.high_strike, w.key_count)
        for w in chains.windows
    ]


def _count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM ticks").fetchone()
    return row[0] if row else 0


def _option_keys(url: str, underlying: str) -> dict[str, tuple[date, float]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT instrument_key, (expiry AT TIME ZONE 'Asia/Kolkata')::date, strike_price"
            " FROM instruments WHERE underlying_symbol = %s AND instrument_type IN ('CE','PE')",
            [underlying],
        ).fetchall()
    return {key: (day, strike) for key, day, strike in rows}


def test_follows_nifty_and_banknifty_and_recentres_as_nifty_moves(
    instruments_db: str, tmp_path: Path
) -> None:
    async def scenario() -> tuple:
        service = WebSocketService(_settings(tmp_path), instruments_db, record_simulator=True)
        await service.start()
        try:
            await _wait_for(lambda: len(_windows(service)) == 4, 30)
            first = _windows(service)
            simulator = service.simulator
            assert simulator is not None
            nifty_atm = next(w[2] for w in first if w[0] == "NIFTY")
            # Hovering short of the neighbouring strike: nothing moves.
            simulator.move(NIFTY, nifty_atm + 40)
            await asyncio.sleep(2.5)
            hovering = _windows(service)
            # Three strikes up: the window follows.
            simulator.move(NIFTY, nifty_atm + 152)
            await _wait_for(
                lambda: all(w[2] == nifty_atm + 150 for w in _windows(service) if w[0] == "NIFTY")
            )
            await asyncio.sleep(1.5)  # a round after the change
            moved = _windows(service)
            held = set(service.ws_client.subscribed_keys)
            # The market pauses before the stop: a frame sent into a closing socket is
            # counted as sent and never heard, by anyone.
            simulator.stall(60)
            # A bound for a hang: CI's three workers on two cores took longer than 20 s once.
            await _wait_for(lambda: _count(instruments_db) == len(simulator.sent_ticks()), 60)
        finally:
            await service.stop()
        return first, hovering, moved, held, simulator

    first, hovering, moved, held, simulator = asyncio.run(scenario())
    assert sorted((w[0], w[5]) for w in first) == [("BANKNIFTY", 62)] * 2 + [("NIFTY", 62)] * 2
    assert hovering == first, "a price short of the next strike changes no window"
    nifty = _option_keys(instruments_db, "NIFTY")
    followed = {key: nifty[key] for key in held if key in nifty}
    windows = {(w[1]): (w[3], w[4]) for w in moved if w[0] == "NIFTY"}
    assert len(followed) == 2 * 62
    for day, strike in followed.values():  # nothing subscribed outside the windows
        low, high = windows[day]
        assert low <= strike <= high
    with psycopg.connect(instruments_db) as conn:
        stored = dict(
            conn.execute(
                "SELECT instrument_key, count(*) FILTER (WHERE iv > 0 AND oi > 0"
                " AND delta IS NOT NULL) FROM ticks GROUP BY 1"
            ).fetchall()
        )
        left = conn.execute(
            "SELECT count(*) FROM subscriptions WHERE status = 'unsubscribed'"
            " AND error = 'left the option-chain window'"
        ).fetchone()
    assert sum(stored.get(key, 0) for key in followed) > 100, "option ticks with greeks, IV, OI"
    assert left == (2 * 3 * 2,), "three strikes left each of two NIFTY windows, calls and puts"
    # Nothing lost: every tick the simulator sent is stored once, universe and chains alike.
    sent = {}
    for tick in simulator.sent_ticks():
        sent[tick[0]] = sent.get(tick[0], 0) + 1
    with psycopg.connect(instruments_db) as conn:
        counts = dict(conn.execute("SELECT instrument_key, count(*) FROM ticks GROUP BY 1"))
    assert counts == sent


def test_an_expiry_passes_its_contracts_are_dropped_and_kept_and_the_next_is_followed(
    instruments_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feed's clock starts 12 s (simulated) before NIFTY's nearest expiry closes, and runs
    three times as fast."""
    now_ms = time.time_ns() // 1_000_000
    days = expiry_dates(INDEX_CHAINS[NIFTY], now_ms)
    expiry_close = close_ms(days[0])
    clock = FeedClock(speed=3, offset_s=(expiry_close - now_ms) / 1000 - 12)
    clock.install(monkeypatch)

    async def scenario() -> tuple:
        service = WebSocketService(_settings(tmp_path), instruments_db)
        await service.start()
        try:
            await _wait_for(lambda: len(_windows(service)) == 4, 30)
            before = _windows(service)
            await clock.sleep_until(datetime.fromtimestamp(expiry_close / 1000, UTC))
            await _wait_for(lambda: {w[1] for w in _windows(service)} & {days[0]} == set())
            await asyncio.sleep(1.5)  # ticks of the new expiry
            after = _windows(service)
            held = set(service.ws_client.subscribed_keys)
        finally:
            await service.stop()
        return before, after, held

    before, after, held = asyncio.run(scenario())
    nifty_days = [[w[1] for w in windows if w[0] == "NIFTY"] for windows in (before, after)]
    assert nifty_days == [days[:2], days[1:3]]
    assert [w for w in before if w[0] == "BANKNIFTY"] == [w for w in after if w[0] == "BANKNIFTY"]
    nifty = _option_keys(instruments_db, "NIFTY")
    expired = {key for key, (day, _) in nifty.items() if day == days[0]}
    joined = {key for key in held if key in nifty and nifty[key][0] == days[2]}
    assert not expired & held, "the expired contracts are unsubscribed"
    assert len(joined) == 62
    with psycopg.connect(instruments_db) as conn:
        kept = conn.execute(
            "SELECT count(DISTINCT instrument_key) FROM ticks WHERE instrument_key = ANY(%s)",
            [list(expired)],
        ).fetchone()
        new = conn.execute(
            "SELECT count(DISTINCT instrument_key) FROM ticks WHERE instrument_key = ANY(%s)",
            [list(joined)],
        ).fetchone()
        states = dict(
            conn.execute(
                "SELECT (status, error), count(*) FROM subscriptions WHERE instrument_key = ANY(%s)"
                " GROUP BY 1",
                [list(expired)],
            ).fetchall()
        )
    assert kept == (62,), "their ticks stay in history"
    assert states == {("unsubscribed", "expired"): 62}
    assert new is not None
    assert new[0] > 50, "the next expiry's contracts tick"


def test_a_restart_resumes_the_chains_and_drops_what_no_window_wants(
    instruments_db: str, tmp_path: Path
) -> None:
    """The second start resumes every contract from the subscriptions table; with fewer
    strikes configured, its first round unsubscribes those outside the narrower windows."""

    async def run(strikes: int) -> tuple[list, set[str]]:
        service = WebSocketService(_settings(tmp_path, option_strikes=strikes), instruments_db)
        await service.start()
        try:
            await _wait_for(lambda: len(_windows(service)) == 4, 30)
            await asyncio.sleep(1.5)  # a round after the windows
            return _windows(service), set(service.ws_client.subscribed_keys)
        finally:
            await service.stop()

    wide, before = asyncio.run(run(15))
    narrow, held = asyncio.run(run(5))
    assert [w[5] for w in wide] == [62] * 4
    assert [w[5] for w in narrow] == [22] * 4
    options = {**_option_keys(instruments_db, "NIFTY"), **_option_keys(instruments_db, "BANKNIFTY")}
    assert len(held & set(options)) == 4 * 22, "nothing left subscribed outside the windows"
    dropped = (before - held) & set(options)
    assert len(dropped) >= 4 * 40
    with psycopg.connect(instruments_db) as conn:
        states = conn.execute(
            "SELECT DISTINCT status, error FROM subscriptions WHERE instrument_key = ANY(%s)",
            [list(dropped)],
        ).fetchall()
    assert states == [("unsubscribed", "left the option-chain window")]
