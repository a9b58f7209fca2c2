"""A small NIFTY chain written straight into a test database: instruments rows (the index, two
expiries' CE/PE contracts) and ticks with hand-picked values, so a chain's numbers can be
checked by hand. Shared by the store, API and notebook tests of option chains."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg.types.json import Jsonb

from store.tick_row import TICK_COLUMNS, TIME_COLUMNS, Tick, from_datetime

INDEX = "NSE_INDEX|Nifty 50"
DAY = date(2026, 1, 5)  # a Monday
OPEN = datetime(2026, 1, 5, 3, 45, tzinfo=UTC)  # 09:15 IST
EXPIRY = date(2026, 1, 8)
NEXT_EXPIRY = date(2026, 1, 15)
STRIKES = (23900.0, 24000.0, 24100.0)


def contract_key(strike: float, kind: str, expiry: date = EXPIRY) -> str:
    return f"NSE_FO|NIFTY{expiry:%d%m}{int(strike)}{kind}"


def _close(expiry: date) -> datetime:
    return datetime(expiry.year, expiry.month, expiry.day, 10, 0, tzinfo=UTC)  # 15:30 IST


def insert_instruments(conn: psycopg.Connection) -> None:
    rows = [(INDEX, "NIFTY", "Nifty 50", "NSE_INDEX", "INDEX", None, None, None, None)]
    for expiry, strikes in ((EXPIRY, STRIKES), (NEXT_EXPIRY, STRIKES[1:2])):
        for strike in strikes:
            for kind in ("CE", "PE"):
                key = contract_key(strike, kind, expiry)
                rows.append(
                    (key, key.split("|")[1], "NIFTY", "NSE_FO", kind, _close(expiry), strike,
                     INDEX, "NIFTY")
                )  # fmt: skip
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO instruments (instrument_key, trading_symbol, name, segment,"
            " instrument_type, expiry, strike_price, underlying_key, underlying_symbol, raw)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(*row, Jsonb({"instrument_key": row[0]})) for row in rows],
        )


def at(minutes: float) -> datetime:
    """The moment `minutes` after the session's open on DAY."""
    return OPEN + timedelta(minutes=minutes)


# (key, minutes after open, ltp, vtt, oi, iv, delta): the index has no volume, OI or greeks.
TICKS = [
    (INDEX, 0, 24040.0, None, None, None, None),
    (INDEX, 10, 24060.0, None, None, None, None),
    (contract_key(23900, "CE"), 1, 190.0, 100, 1000.0, 0.14, 0.70),
    (contract_key(23900, "CE"), 9, 200.0, 300, 1200.0, 0.15, 0.72),
    (contract_key(23900, "PE"), 2, 40.0, 50, 3000.0, 0.16, -0.28),
    (contract_key(24000, "CE"), 2, 110.0, 500, 2000.0, 0.13, 0.55),
    (contract_key(24000, "CE"), 11, 130.0, 900, 2600.0, 0.13, 0.58),  # after the moment
    (contract_key(24000, "PE"), 3, 70.0, 400, 2500.0, 0.14, -0.45),
    (contract_key(24100, "CE"), 4, 60.0, 200, 500.0, 0.12, 0.35),
    (contract_key(24100, "PE"), 5, 120.0, 100, 1500.0, 0.15, -0.65),
    (contract_key(24000, "CE", NEXT_EXPIRY), 6, 250.0, 10, 100.0, 0.11, 0.52),
]
MOMENT = at(10)  # the chain the tests check: every tick above but the one at minute 11


def insert_ticks(conn: psycopg.Connection) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO ticks (instrument_key, ts, ltp, vtt, oi, iv, delta, theta, gamma, vega,"
            " rho, bid_price, bid_qty, ask_price, ask_qty)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (key, at(minute), ltp, vtt, oi, iv, delta,
                 *((None,) * 4 if delta is None else (-5.0, 0.001, 12.0, 3.0)),
                 *((None,) * 4 if delta is None else (ltp - 0.5, 75, ltp + 0.5, 150)))
                for key, minute, ltp, vtt, oi, iv, delta in TICKS
            ],
        )  # fmt: skip


def load_chain(url: str) -> None:
    with psycopg.connect(url) as conn:
        insert_instruments(conn)
        insert_ticks(conn)


def latest_ticks(conn: psycopg.Connection, keys: list[str], moment: datetime) -> dict[str, Tick]:
    """Each key's last stored tick at or before `moment`, as the ingest would publish it."""
    latest = {}
    for key in keys:
        row = conn.execute(
            f"SELECT {', '.join(TICK_COLUMNS)} FROM ticks WHERE instrument_key = %s AND ts <= %s"
            " ORDER BY ts DESC LIMIT 1",
            [key, moment],
        ).fetchone()
        if row:
            latest[key] = tuple(
                from_datetime(value) if index in TIME_COLUMNS and value is not None else value
                for index, value in enumerate(row)
            )
    return latest
