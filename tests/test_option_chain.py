"""The option chain at a moment (store/option_chain.py) and its per-minute history
(option_chain_1m), over a hand-made NIFTY chain (tests/option_chains.py) whose numbers were
worked out by hand below."""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from store.bars import refresh_bars
from store.instruments import UnknownSymbol
from store.migrations import default_sql_dir, migrate
from store.option_chain import (
    ChainError,
    atm_strike,
    chain_contracts,
    chain_from_ticks,
    chain_history,
    expiries,
    max_pain,
    opening_oi,
    option_chain,
    put_call_ratio,
)
from tests.conftest import DbServer
from tests.option_chains import (
    DAY,
    EXPIRY,
    INDEX,
    MOMENT,
    NEXT_EXPIRY,
    at,
    contract_key,
    latest_ticks,
    load_chain,
)

# --- the summary numbers, by hand ----------------------------------------------------------


def test_atm_is_the_nearest_strike_and_the_lower_of_two_equally_near() -> None:
    assert atm_strike([100.0, 110.0, 120.0], 113.0) == 110.0
    assert atm_strike([100.0, 110.0, 120.0], 115.0) == 110.0
    assert atm_strike([100.0, 110.0, 120.0], 250.0) == 120.0
    assert atm_strike([100.0], None) is None


def test_pcr_is_put_oi_over_call_oi() -> None:
    assert put_call_ratio([100.0, None, 300.0], [200.0, 600.0]) == 2.0
    assert put_call_ratio([None, 0.0], [50.0]) is None


def test_max_pain_is_the_strike_paying_holders_least() -> None:
    # settle 100: puts 110 pay 10*10 + puts 120 pay 2*20 = 140; settle 110: calls 100 pay
    # 5*10, puts 120 pay 2*10 = 70; settle 120: calls pay 5*20 + 10*10 = 200.
    assert max_pain({100.0: (5, 20), 110.0: (10, 10), 120.0: (30, 2)}) == 110.0
    # 100 and 110 both pay 100: the lower one.
    assert max_pain({100.0: (10, 0), 110.0: (0, 10)}) == 100.0
    assert max_pain({100.0: (None, 0), 110.0: (0, None)}) is None


def test_max_pain_agrees_with_its_definition_on_random_chains() -> None:
    """The running-sum computation against the payout summed strike by strike."""

    def by_definition(oi: dict[float, tuple[float, float]]) -> float:
        def payout(settle: float) -> float:
            return sum(c * max(0, settle - k) + p * max(0, k - settle) for k, (c, p) in oi.items())

        return min(sorted(oi), key=payout)

    rng = random.Random(19)
    for _ in range(500):
        oi = {
            50.0 * n + rng.choice((0, 25)): (rng.choice((0, rng.randint(1, 9999))), rng.random())
            for n in range(rng.randint(1, 15))
        }
        assert max_pain(oi) == by_definition(oi), oi


# --- the chain from stored ticks -------------------------------------------------------------


@pytest.fixture(scope="module")
def chain_url(apache_server: DbServer) -> Iterator[str]:
    url = apache_server.create_database()
    load_chain(url)
    yield url
    apache_server.drop_database(url)


@pytest.fixture
def conn(chain_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(chain_url, autocommit=True) as connection:
        yield connection


def test_the_chain_at_a_moment_is_each_contracts_last_tick_by_then(
    conn: psycopg.Connection,
) -> None:
    chain = option_chain(conn, "NIFTY", EXPIRY, MOMENT)
    assert [row.strike for row in chain.strikes] == [23900.0, 24000.0, 24100.0]
    low, mid, high = chain.strikes
    assert (low.call.ltp, low.call.volume, low.call.oi, low.call.oi_change) == (200, 300, 1200, 200)
    assert low.call.ts == at(9)
    assert (low.call.iv, low.call.delta, low.call.bid_price, low.call.ask_qty) == (
        0.15,
        0.72,
        199.5,
        150,
    )
    # The 24000 call's tick at minute 11 is after the moment: its minute-2 tick stands.
    assert (mid.call.ltp, mid.call.oi) == (110, 2000)
    assert (mid.put.ltp, high.put.ltp, low.put.oi_change) == (70, 120, 0)
    assert chain.underlying_key == INDEX
    assert chain.underlying_price == 24060.0
    assert chain.atm_strike == 24100.0
    # puts 3000 + 2500 + 1500 over calls 1200 + 2000 + 500
    assert chain.pcr == pytest.approx(7000 / 3700)
    # settle 23900: puts pay 2500*100 + 1500*200 = 550000; 24000: 1200*100 + 1500*100 =
    # 270000; 24100: 1200*200 + 2000*100 = 440000.
    assert chain.max_pain == 24000.0


def test_a_contract_without_a_tick_yet_shows_empty_and_the_key_names_the_underlying(
    conn: psycopg.Connection,
) -> None:
    chain = option_chain(conn, INDEX, EXPIRY, at(1.5))
    low, mid, _high = chain.strikes
    assert low.call.ltp == 190
    assert low.call.oi_change == 0
    assert mid.call.ltp is None
    assert mid.call.instrument_key == contract_key(24000, "CE")
    assert chain.underlying_price == 24040.0
    assert chain.max_pain == 23900.0  # only the 23900 call holds OI: settling there pays 0


def test_expiries_and_the_nearest_expiry_not_yet_closed(conn: psycopg.Connection) -> None:
    assert expiries(conn, "nifty") == [EXPIRY, NEXT_EXPIRY]
    assert chain_contracts(conn, "NIFTY", None, MOMENT).expiry == EXPIRY
    after_first = datetime(2026, 1, 8, 10, 1, tzinfo=UTC)  # a minute past its close
    assert chain_contracts(conn, "NIFTY", None, after_first).expiry == NEXT_EXPIRY
    assert option_chain(conn, "NIFTY", NEXT_EXPIRY, MOMENT).strikes[0].call.ltp == 250


@pytest.mark.parametrize(
    ("underlying", "expiry", "moment", "error", "message"),
    [
        ("NOPE", EXPIRY, MOMENT, UnknownSymbol, "no options have 'NOPE'"),
        ("NIFTY", DAY, MOMENT, ChainError, "no options expiring 2026-01-05"),
        ("NIFTY", EXPIRY, at(-60), ChainError, "before any data"),
        ("NIFTY", EXPIRY, datetime.now(UTC) + timedelta(hours=1), ChainError, "in the future"),
    ],
)
def test_bad_input_is_one_error_naming_the_culprit(
    conn: psycopg.Connection, underlying, expiry, moment, error, message
) -> None:
    with pytest.raises(error, match=message):
        option_chain(conn, underlying, expiry, moment)


def test_the_chain_now_from_latest_ticks_has_the_same_shape_and_values(
    conn: psycopg.Connection,
) -> None:
    """What the API does for at=None, with the latest ticks read here from the database."""
    chain = chain_contracts(conn, "NIFTY", EXPIRY, MOMENT)
    latest = latest_ticks(conn, [INDEX, *chain.keys], MOMENT)
    now = chain_from_ticks(chain, latest, opening_oi(conn, chain.keys, DAY))
    stored = option_chain(conn, "NIFTY", EXPIRY, MOMENT)
    assert now.at is None
    assert now.strikes == stored.strikes
    assert (now.underlying_price, now.atm_strike, now.pcr, now.max_pain) == (
        stored.underlying_price,
        stored.atm_strike,
        stored.pcr,
        stored.max_pain,
    )


# --- history: option_chain_1m on both editions ---------------------------------------------------


def _history_rows(server: DbServer) -> list[tuple]:
    url = server.create_database()
    try:
        load_chain(url)
        with psycopg.connect(url, autocommit=True) as conn:
            live = conn.execute("SELECT * FROM option_chain_1m ORDER BY 1, 2").fetchall()
            refresh_bars(conn)
            # one more tick, late, into a minute already materialized
            conn.execute(
                "INSERT INTO ticks (instrument_key, ts, ltp, oi, iv, delta)"
                " VALUES (%s, %s, 205, 1300, 0.155, 0.73)",
                [contract_key(23900, "CE"), at(9.5)],
            )
            refresh_bars(conn)
            stored = conn.execute("SELECT * FROM option_chain_1m ORDER BY 1, 2").fetchall()
    finally:
        server.drop_database(url)
    return [live, stored]


@pytest.fixture(scope="module")
def apache_history(apache_server: DbServer) -> list[list[tuple]]:
    return _history_rows(apache_server)


def test_history_has_each_option_contracts_last_state_per_minute(
    apache_history: list[list[tuple]],
) -> None:
    live, stored = apache_history
    keys = {row[0] for row in stored}
    assert INDEX not in keys  # not an option: no greeks
    assert len(live) == 9
    assert len(stored) == 9
    [late_minute] = [
        row for row in stored if row[0] == contract_key(23900, "CE") and row[1] == at(9)
    ]
    # the late tick at 9.5 is the minute's last: its ltp, OI and IV, and two ticks counted
    assert (late_minute[2], late_minute[6], late_minute[7], late_minute[-1]) == (
        205,
        1300,
        0.155,
        2,
    )
    assert late_minute[-2] == at(9.5)


def test_both_editions_give_the_same_history(
    apache_history: list[list[tuple]], community_server: DbServer
) -> None:
    assert _history_rows(community_server) == apache_history


def test_option_chains_behind_the_bars_catch_up_by_their_own_read(
    apache_server: DbServer, apache_history: list[list[tuple]]
) -> None:
    """The bars and the option chains are rebuilt from one read of the ticks while their
    watermarks agree. Where they do not (the option chains rebuilt from the start, as here,
    or added by a migration to a store whose bars roll on), each layer gets its own range."""
    url = apache_server.create_database()
    try:
        load_chain(url)
        with psycopg.connect(url, autocommit=True) as conn:
            refresh_bars(conn)
            conn.execute(
                "UPDATE bar_rollup_state SET watermark = NULL, changed_since = NULL,"
                " snapshot = NULL WHERE relation = 'option_chain_1m'"
            )
            conn.execute("TRUNCATE option_chain_1m_store")
            written = refresh_bars(conn).buckets_written
            stored = conn.execute("SELECT * FROM option_chain_1m ORDER BY 1, 2").fetchall()
    finally:
        apache_server.drop_database(url)
    assert (written["ohlc_1m"], written["option_chain_1m"]) == (0, 9)
    live, _ = apache_history
    assert stored == live


def test_chain_history_gives_the_atm_contracts_minute_by_minute(chain_url: str) -> None:
    with psycopg.connect(chain_url, autocommit=True) as conn:
        refresh_bars(conn)
        every = chain_history(conn, "NIFTY", EXPIRY, at(0), at(60))
        atm = chain_history(conn, "NIFTY", EXPIRY, at(0), at(60), atm_only=True)
    assert len(every) == 8  # the expiry's 8 contract-minutes
    minute_9 = next(row for row in every if row["bucket"] == at(9))
    assert (minute_9["strike"], minute_9["option_type"], minute_9["iv"]) == (23900, "CE", 0.15)
    # The index's last tick by 09:24:59 is 24040 (minute 0): 24000 is at the money; by
    # 09:26 (minute 11) it is 24060, and 24100 is.
    assert (minute_9["underlying_price"], minute_9["atm_strike"]) == (24040, 24000)
    late = next(row for row in every if row["bucket"] == at(11))
    assert (late["underlying_price"], late["atm_strike"]) == (24060, 24100)
    # At the money in their minute: the 24000 call (minute 2) and put (minute 3) only.
    assert [(row["bucket"], row["strike"], row["option_type"], row["iv"]) for row in atm] == [
        (at(2), 24000, "CE", 0.13),
        (at(3), 24000, "PE", 0.14),
    ]


def test_history_starts_where_the_bars_stand_on_a_store_that_had_ticks(
    apache_server: DbServer, tmp_path: Path
) -> None:
    """Migrating a long store: option_chain_1m's first rollup does not read every old tick;
    refresh-bars over a window brings the old option ticks in."""
    for path in default_sql_dir().glob("*.sql"):
        if path.name < "022":
            shutil.copy(path, tmp_path / path.name)
    url = apache_server.create_database(migrated=False)
    try:
        migrate(url, sql_dir=tmp_path)
        load_chain(url)
        with psycopg.connect(url, autocommit=True) as conn:
            # What the bars' rollup left there (this code's rollup needs 022 to run at all).
            conn.execute(
                "UPDATE bar_rollup_state SET watermark = time_bucket('1 minute', now()),"
                " changed_since = now()"
            )
            migrate(url)
            watermarks = conn.execute(
                "SELECT relation, watermark IS NOT NULL FROM bar_rollup_state ORDER BY 1"
            ).fetchall()
            before = conn.execute("SELECT count(*) FROM option_chain_1m").fetchone()
            refresh_bars(conn, at(0), at(60))
            after = conn.execute("SELECT count(*) FROM option_chain_1m").fetchone()
    finally:
        apache_server.drop_database(url)
    assert watermarks == [("ohlc_1m", True), ("ohlc_5m", True), ("option_chain_1m", True)]
    assert before == (0,)  # the old option ticks lie below its watermark, not rolled up
    assert after == (9,)
