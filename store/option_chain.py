"""An option chain as it stood at a moment, rebuilt from stored ticks (or from the latest ones).

The contracts of a chain are rows of `instruments` (CE/PE, a strike, an expiry, the
underlying's key); each side of a strike is its contract's last tick at or before the moment
(ASOF). Each contract costs one probe of `ticks_instrument_ts` (a LATERAL `ORDER BY ts DESC
LIMIT 1`), bounded below by the IST day's start so the planner excludes every older chunk: the
chain at 10:42 of a day with millions of option ticks reads about a hundred index entries, never
the day. A contract with no tick yet that day shows no values (it did not trade).

"OI change" is against the contract's first tick of the same IST day (the day's opening OI),
read by the same kind of probe in the other direction; Upstox's own chain compares with the
previous day's close, which the feed does not carry.

The chain "now" (`chain_from_ticks`) is the same computation over the latest ticks the ingest
publishes, handed in by the caller (this layer never reads the ingest's channels itself).
The summary numbers (at-the-money strike, PCR, max pain) are pure functions, below.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import psycopg

from core.ist import day_bounds, ist_day
from store.bars import OPTION_CHAIN_COLUMNS
from store.instruments import UnknownSymbol
from store.tick_row import TICK_COLUMNS, Tick, to_datetime

# What a side of a strike shows of its contract's tick, in this order.
SIDE_FIELDS = (
    "ltp",
    "bid_price",
    "bid_qty",
    "ask_price",
    "ask_qty",
    "vtt",
    "oi",
    "iv",
    "delta",
    "theta",
    "gamma",
    "vega",
    "rho",
)
_TICK_INDEX = {name: TICK_COLUMNS.index(name) for name in (*SIDE_FIELDS, "ts")}


class ChainError(LookupError):
    """A chain that cannot be given as asked: no such expiry, a moment outside the data."""


@dataclass(frozen=True)
class Contract:
    instrument_key: str
    strike: float
    option_type: str  # CE or PE


@dataclass(frozen=True)
class Chain:
    """What a chain is made of, from the instrument master alone (cacheable for a day)."""

    underlying: str  # as asked, e.g. NIFTY
    underlying_key: str
    expiry: date  # the IST date of the expiry
    expires_at: datetime  # the expiry's close
    contracts: tuple[Contract, ...]

    @property
    def keys(self) -> list[str]:
        return [contract.instrument_key for contract in self.contracts]


@dataclass(frozen=True)
class Side:
    """One contract's state at the moment: its last tick's values and the day's OI change."""

    instrument_key: str
    ts: datetime | None = None  # its tick's time; None: no tick yet that day
    ltp: float | None = None
    bid_price: float | None = None
    bid_qty: int | None = None
    ask_price: float | None = None
    ask_qty: int | None = None
    volume: int | None = None  # the day's volume so far (the tick's vtt)
    oi: float | None = None
    oi_change: float | None = None  # since the day's first tick of this contract
    iv: float | None = None
    delta: float | None = None
    theta: float | None = None
    gamma: float | None = None
    vega: float | None = None
    rho: float | None = None


@dataclass(frozen=True)
class StrikeRow:
    strike: float
    call: Side | None
    put: Side | None


@dataclass(frozen=True)
class OptionChain:
    underlying: str
    underlying_key: str
    expiry: date
    at: datetime | None  # None: the latest ticks
    underlying_price: float | None
    atm_strike: float | None
    pcr: float | None  # put OI / call OI
    max_pain: float | None
    strikes: list[StrikeRow] = field(default_factory=list)


# --- the summary numbers ------------------------------------------------------------------


def atm_strike(strikes: Iterable[float], price: float | None) -> float | None:
    """The strike nearest the underlying's price (the lower of two equally near)."""
    if price is None:
        return None
    return min(strikes, key=lambda strike: (abs(strike - price), strike), default=None)


def put_call_ratio(call_oi: Iterable[float | None], put_oi: Iterable[float | None]) -> float | None:
    """Total put OI over total call OI; None while no call has any."""
    calls = sum(oi for oi in call_oi if oi)
    puts = sum(oi for oi in put_oi if oi)
    return puts / calls if calls else None


def max_pain(open_interest: Mapping[float, tuple[float | None, float | None]]) -> float | None:
    """The settlement strike at which option holders would be paid least in total.

    `open_interest` maps each strike to its (call OI, put OI). At settlement S a call of
    strike K pays max(0, S - K) per unit and a put max(0, K - S); the candidates are the
    strikes themselves (the payout is piecewise linear with its corners there). The lowest of
    equal minima; None while there is no OI at all. Linear in the strikes once sorted, with
    running sums (the chain "now" computes it on every request): the calls below S pay
    S * sum(c) - sum(c * K), the puts above it sum(p * K) - S * sum(p).
    """
    strikes = sorted(open_interest)
    calls = [open_interest[k][0] or 0.0 for k in strikes]
    puts = [open_interest[k][1] or 0.0 for k in strikes]
    if not any(calls) and not any(puts):
        return None
    puts_above = sum(puts)
    puts_value_above = sum(p * k for p, k in zip(puts, strikes, strict=True))
    calls_below = calls_value_below = 0.0
    best, least = None, float("inf")
    for strike, c, p in zip(strikes, calls, puts, strict=True):
        puts_above -= p  # strictly above this strike from here
        puts_value_above -= p * strike
        payout = strike * calls_below - calls_value_below + puts_value_above - strike * puts_above
        if best is None or payout < least - 1e-9 * max(1.0, abs(least)):
            best, least = strike, payout
        calls_below += c
        calls_value_below += c * strike
    return best


# --- the contracts --------------------------------------------------------------------------

_OPTIONS = "instrument_type IN ('CE', 'PE')"


def underlying_key(conn: psycopg.Connection, underlying: str) -> str:
    """The key options name as their underlying, from a symbol ('NIFTY', 'INFY') or a key.

    UnknownSymbol (the API's 404) when nothing answers to it or it has no options.
    """
    row = conn.execute(
        f"""SELECT coalesce(
              (SELECT underlying_key FROM instruments
               WHERE underlying_key = resolve_symbol(%(name)s) AND {_OPTIONS} LIMIT 1),
              (SELECT underlying_key FROM instruments
               WHERE upper(underlying_symbol) = upper(btrim(%(name)s)) AND {_OPTIONS} LIMIT 1))""",
        {"name": underlying},
    ).fetchone()
    if row is None or row[0] is None:
        raise UnknownSymbol(
            f"no options have {underlying!r} as their underlying in the instrument master"
        )
    return row[0]


def expiries(conn: psycopg.Connection, underlying: str) -> list[date]:
    """Every expiry (IST date) of the underlying's options in the master, expired ones too:
    their contracts are kept for history."""
    key = underlying_key(conn, underlying)
    rows = conn.execute(
        f"SELECT DISTINCT (expiry AT TIME ZONE 'Asia/Kolkata')::date FROM instruments"
        f" WHERE underlying_key = %s AND {_OPTIONS} AND expiry IS NOT NULL ORDER BY 1",
        [key],
    ).fetchall()
    return [row[0] for row in rows]


def chain_contracts(
    conn: psycopg.Connection, underlying: str, expiry: date | None, moment: datetime
) -> Chain:
    """The contracts of one expiry; without one, of the nearest expiry not closed at `moment`.

    ChainError naming the expiries there are when `expiry` is not one of them.
    """
    key = underlying_key(conn, underlying)
    if expiry is None:
        row = conn.execute(
            f"SELECT min(expiry) FROM instruments"
            f" WHERE underlying_key = %s AND {_OPTIONS} AND expiry > %s",
            [key, moment],
        ).fetchone()
        if row is None or row[0] is None:
            raise ChainError(f"{underlying} has no expiry after {moment.isoformat()}")
        expiry = ist_day(row[0])
    start, end = day_bounds(expiry)
    rows = conn.execute(
        f"SELECT instrument_key, strike_price, instrument_type, expiry FROM instruments"
        f" WHERE underlying_key = %s AND {_OPTIONS} AND expiry >= %s AND expiry < %s"
        f" AND strike_price IS NOT NULL ORDER BY strike_price, instrument_type",
        [key, start, end],
    ).fetchall()
    if not rows:
        known = ", ".join(str(day) for day in expiries(conn, underlying)) or "none"
        raise ChainError(f"{underlying} has no options expiring {expiry} (its expiries: {known})")
    return Chain(
        underlying,
        key,
        expiry,
        max(row[3] for row in rows),
        tuple(Contract(k, strike, kind) for k, strike, kind, _ in rows),
    )


# --- the chain at a moment ------------------------------------------------------------------

_PROBE_COLUMNS = ", ".join(f"last.{name}" for name in ("ts", *SIDE_FIELDS))
# One backward probe per contract for its state, one forward probe for the day's opening OI;
# both bounded to [day start, at] so only the chunks holding that IST day are opened (two:
# chunks are UTC days, and an IST day starts at 18:30 UTC the day before).
_ASOF_SQL = f"""
SELECT wanted.key, {_PROBE_COLUMNS}, first.oi
FROM unnest(%(keys)s::text[]) AS wanted(key)
CROSS JOIN LATERAL (
    SELECT {", ".join(("ts", *SIDE_FIELDS))} FROM ticks
    WHERE instrument_key = wanted.key AND ts <= %(at)s AND ts >= %(day_start)s
    ORDER BY ts DESC LIMIT 1
) AS last
LEFT JOIN LATERAL (
    SELECT oi FROM ticks
    WHERE instrument_key = wanted.key AND ts <= %(at)s AND ts >= %(day_start)s
      AND oi IS NOT NULL
      -- The underlying has no OI: without this its probe would read its whole day so far.
      AND wanted.key <> %(underlying)s
    ORDER BY ts LIMIT 1
) AS first ON true
"""


def option_chain(
    conn: psycopg.Connection,
    underlying: str,
    expiry: date | None,
    at: datetime,
) -> OptionChain:
    """The chain of `underlying`'s `expiry` (None: the nearest not closed at `at`) as of the
    last tick at or before `at` of each contract, and the underlying's price then.

    ChainError when `at` is in the future or before the chain's first tick, or the expiry
    does not exist; UnknownSymbol when nothing has options on `underlying`.
    """
    if at > datetime.now(UTC):
        raise ChainError(f"at={at.isoformat()} is in the future")
    chain = chain_contracts(conn, underlying, expiry, at)
    day_start, _ = day_bounds(ist_day(at))
    rows = conn.execute(
        _ASOF_SQL,
        {
            "keys": [chain.underlying_key, *chain.keys],
            "underlying": chain.underlying_key,
            "at": at,
            "day_start": day_start,
        },
    ).fetchall()
    if not rows:
        _explain_empty(conn, chain, at)
    found = {row[0]: row for row in rows}
    under = found.get(chain.underlying_key)
    sides = {key: _side_of_row(row) for key, row in found.items() if key != chain.underlying_key}
    return assemble(chain, sides, under[2] if under else None, at)


def _side_of_row(row: tuple) -> Side:
    key, ts, ltp, bid_price, bid_qty, ask_price, ask_qty, vtt, oi, iv, *greeks, opening_oi = row
    return Side(
        key,
        ts,
        ltp,
        bid_price,
        bid_qty,
        ask_price,
        ask_qty,
        vtt,
        oi,
        None if oi is None or opening_oi is None else oi - opening_oi,
        iv,
        *greeks,
    )


def _explain_empty(conn: psycopg.Connection, chain: Chain, at: datetime) -> None:
    """Why a moment has no tick of the chain that day: before its data, or no data at all."""
    row = conn.execute(
        "SELECT min(first.ts) FROM unnest(%s::text[]) AS wanted(key)"
        " CROSS JOIN LATERAL (SELECT ts FROM ticks WHERE instrument_key = wanted.key"
        " ORDER BY ts LIMIT 1) AS first",
        [chain.keys],
    ).fetchone()
    first = row[0] if row else None
    if first is None:
        raise ChainError(f"no ticks are stored for {chain.underlying} options of {chain.expiry}")
    if at < first:
        raise ChainError(
            f"at={at.isoformat()} is before any data of {chain.underlying} {chain.expiry}"
            f" options: the first tick is at {first.isoformat()}"
        )
    raise ChainError(
        f"no {chain.underlying} {chain.expiry} option traded on {ist_day(at)} up to"
        f" {at.isoformat()}"
    )


def newest_tick_time(conn: psycopg.Connection, chain: Chain) -> datetime | None:
    """The time of the chain's newest tick (one probe per contract); None without one."""
    row = conn.execute(
        "SELECT max(newest.ts) FROM unnest(%s::text[]) AS wanted(key)"
        " CROSS JOIN LATERAL (SELECT ts FROM ticks WHERE instrument_key = wanted.key"
        " ORDER BY ts DESC LIMIT 1) AS newest",
        [chain.keys],
    ).fetchone()
    return row[0] if row else None


def opening_oi(conn: psycopg.Connection, keys: Sequence[str], day: date) -> dict[str, float]:
    """The day's first OI of each key that has one: what the chain "now" compares OI with."""
    day_start, day_end = day_bounds(day)
    rows = conn.execute(
        "SELECT wanted.key, first.oi FROM unnest(%(keys)s::text[]) AS wanted(key)"
        " CROSS JOIN LATERAL (SELECT oi FROM ticks WHERE instrument_key = wanted.key"
        " AND ts >= %(day_start)s AND ts < %(day_end)s AND oi IS NOT NULL"
        " ORDER BY ts LIMIT 1) AS first",
        {"keys": list(keys), "day_start": day_start, "day_end": day_end},
    ).fetchall()
    return dict(rows)


def chain_from_ticks(
    chain: Chain, latest: Mapping[str, Tick], opening: Mapping[str, float]
) -> OptionChain:
    """The chain now, from the latest tick of each key (as the ingest publishes them) and
    the day's opening OI of each contract (`opening_oi`, which a caller caches)."""
    sides = {}
    for key in chain.keys:
        tick = latest.get(key)
        if tick is None:
            continue
        values = {name: tick[index] for name, index in _TICK_INDEX.items()}
        oi, first = values["oi"], opening.get(key)
        sides[key] = Side(
            key,
            to_datetime(values.pop("ts")),
            volume=values.pop("vtt"),
            oi_change=None if oi is None or first is None else oi - first,
            **values,
        )
    under = latest.get(chain.underlying_key)
    return assemble(chain, sides, under[_LTP] if under else None, None)


_LTP = TICK_COLUMNS.index("ltp")


def assemble(
    chain: Chain, sides: Mapping[str, Side], underlying_price: float | None, at: datetime | None
) -> OptionChain:
    """Strikes as rows, calls and puts side by side, and the chain's summary numbers."""
    by_strike: dict[float, dict[str, Side]] = {}
    for contract in chain.contracts:
        side = sides.get(contract.instrument_key) or Side(contract.instrument_key)
        by_strike.setdefault(contract.strike, {})[contract.option_type] = side
    rows = [
        StrikeRow(strike, pair.get("CE"), pair.get("PE"))
        for strike, pair in sorted(by_strike.items())
    ]
    calls = [row.call.oi if row.call else None for row in rows]
    puts = [row.put.oi if row.put else None for row in rows]
    return OptionChain(
        chain.underlying,
        chain.underlying_key,
        chain.expiry,
        at,
        underlying_price,
        atm_strike(by_strike, underlying_price),
        put_call_ratio(calls, puts),
        max_pain({row.strike: (c, p) for row, c, p in zip(rows, calls, puts, strict=True)}),
        rows,
    )


# --- history: the chain minute by minute ------------------------------------------------------

HISTORY_COLUMNS = (
    "bucket",
    "strike",
    "option_type",
    "instrument_key",
    *OPTION_CHAIN_COLUMNS[1:-1],  # ltp .. last_ts: the stored minute, less its tick count
    "underlying_price",
    "atm_strike",
)
# Each contract's minutes from option_chain_1m (only the minutes it traded in), with the
# underlying's price at each minute's end (its last tick by then: one index probe per minute)
# and the at-the-money strike that price makes.
_HISTORY_SQL = """
WITH contracts AS (
    SELECT * FROM unnest(%(keys)s::text[], %(strikes)s::float8[], %(types)s::text[])
        AS c(instrument_key, strike, option_type)
),
snap AS (
    SELECT h.*, c.strike, c.option_type
    FROM option_chain_1m AS h JOIN contracts AS c USING (instrument_key)
    WHERE h.instrument_key = ANY(%(keys)s) AND h.bucket >= %(start)s AND h.bucket < %(end)s
),
minutes AS (
    SELECT m.bucket, under.ltp AS price
    FROM (SELECT DISTINCT bucket FROM snap) AS m
    LEFT JOIN LATERAL (
        SELECT ltp FROM ticks
        WHERE instrument_key = %(underlying)s AND ts >= %(start)s
          AND ts < m.bucket + INTERVAL '1 minute'
        ORDER BY ts DESC LIMIT 1
    ) AS under ON true
),
atm AS (
    SELECT m.bucket, m.price, nearest.strike
    FROM minutes AS m
    LEFT JOIN LATERAL (
        SELECT strike FROM contracts ORDER BY abs(strike - m.price), strike LIMIT 1
    ) AS nearest ON m.price IS NOT NULL
)
SELECT s.bucket, s.strike, s.option_type, s.instrument_key, s.ltp, s.bid_price, s.ask_price,
       s.volume, s.oi, s.iv, s.delta, s.theta, s.gamma, s.vega, s.rho, s.last_ts,
       atm.price, atm.strike
FROM snap AS s JOIN atm USING (bucket)
WHERE NOT %(atm_only)s OR s.strike = atm.strike
ORDER BY s.bucket, s.strike, s.option_type
"""


def chain_history(
    conn: psycopg.Connection,
    underlying: str,
    expiry: date | None,
    start: datetime,
    end: datetime,
    *,
    atm_only: bool = False,
) -> list[dict]:
    """The chain minute by minute over [start, end): each contract's last state in each
    minute it traded (option_chain_1m; `last_ts` the tick it comes from), with the
    underlying's price and the ATM strike at the minute's end. `atm_only`: only the
    contracts at the money in their minute, so "IV of the ATM call through the day" is the
    CE rows of one call. Expiry None: the nearest not closed at `start`."""
    chain = chain_contracts(conn, underlying, expiry, start)
    rows = conn.execute(
        _HISTORY_SQL,
        {
            "keys": chain.keys,
            "strikes": [contract.strike for contract in chain.contracts],
            "types": [contract.option_type for contract in chain.contracts],
            "underlying": chain.underlying_key,
            "start": start,
            "end": end,
            "atm_only": atm_only,
        },
    ).fetchall()
    return [dict(zip(HISTORY_COLUMNS, row, strict=True)) for row in rows]
