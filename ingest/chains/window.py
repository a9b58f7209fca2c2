"""Which contracts of a chain to follow, worked out with no I/O.

A chain is an underlying's options of one expiry. Its window is the at-the-money strike and
`strikes` strikes each side of it, calls and puts, for each of the nearest `expiries`
expiries not yet closed. The window moves with the underlying, with hysteresis: the
at-the-money strike changes only once the price has reached a neighbouring strike (a full
strike interval away), and then becomes the strike nearest the price. A price hovering about
the midpoint between two strikes therefore never churns subscriptions; it must travel a
whole interval first.

An expiry closes at 15:30 IST on its date (the NSE close): Upstox's master gives expiries
as 23:59:59 IST of that date, the simulator's as the close itself; the earlier of the two
counts. All the windows together must fit the room the feed has for their mode: if not,
each window is narrowed by the same number of strikes until they fit (`narrowed`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time

from core.ist import IST

NSE_CLOSE = time(15, 30)


class ChainPlanError(ValueError):
    """The windows cannot fit the feed's limits even at one strike each side."""


@dataclass(frozen=True, slots=True)
class Contract:
    """An option contract from the instrument master."""

    key: str
    underlying: str  # the underlying's symbol: NIFTY
    underlying_key: str  # NSE_INDEX|Nifty 50
    expiry: datetime  # as the master gives it
    strike: float
    kind: str  # CE or PE


def closes_at(expiry: datetime) -> datetime:
    """When a contract stops trading: 15:30 IST of its expiry date, or `expiry` if earlier."""
    day = expiry.astimezone(IST).date()
    return min(expiry, datetime.combine(day, NSE_CLOSE, IST))


@dataclass(frozen=True, slots=True)
class Window:
    """One chain's window: what status shows, and the keys it subscribes."""

    underlying: str
    underlying_key: str
    expiry: date
    closes_at: datetime
    atm_strike: float
    low_strike: float
    high_strike: float
    keys: tuple[str, ...]

    def summary(self) -> dict[str, object]:
        return {
            "underlying": self.underlying,
            "expiry": self.expiry.isoformat(),
            "atm_strike": self.atm_strike,
            "low_strike": self.low_strike,
            "high_strike": self.high_strike,
            "key_count": len(self.keys),
        }


@dataclass(frozen=True)
class Plan:
    """Every window, the keys they want, and the at-the-money strikes to carry into the next
    plan (underlying, expiry) -> strike; `narrowed`: strikes each side actually taken."""

    windows: tuple[Window, ...]
    atm: Mapping[tuple[str, date], float]
    strikes: int
    waiting: tuple[str, ...] = ()  # underlyings with no price yet
    keys: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", frozenset(k for w in self.windows for k in w.keys))


def at_the_money(strikes: list[float], price: float, previous: float | None) -> float:
    """The at-the-money strike for `price`, keeping `previous` until the price reaches one
    of its neighbouring strikes (see the module docstring). `strikes` sorted, not empty."""
    nearest = min(strikes, key=lambda strike: (abs(strike - price), strike))
    if previous is None or previous not in strikes:
        return nearest
    i = strikes.index(previous)
    below = strikes[i - 1] if i > 0 else float("-inf")
    above = strikes[i + 1] if i + 1 < len(strikes) else float("inf")
    return nearest if price <= below or price >= above else previous


def plan(
    contracts: Iterable[Contract],
    prices: Mapping[str, float],
    now: datetime,
    *,
    expiries: int,
    strikes: int,
    room: int,
    previous: Mapping[tuple[str, date], float] | None = None,
) -> Plan:
    """The windows of every underlying in `contracts` at `now`.

    `prices`: underlying key -> its last price (an underlying without one waits, no window);
    `room`: how many keys the windows may hold in all; `previous`: the last plan's `atm`.
    """
    if expiries < 1 or strikes < 1:
        raise ValueError(f"expiries and strikes must be at least 1, got {expiries}, {strikes}")
    previous = previous or {}
    by_chain: dict[tuple[str, str, date, datetime], dict[float, dict[str, str]]] = {}
    for contract in contracts:
        close = closes_at(contract.expiry)
        if close <= now:
            continue
        chain = (contract.underlying, contract.underlying_key, close.astimezone(IST).date(), close)
        by_chain.setdefault(chain, {}).setdefault(contract.strike, {})[contract.kind] = contract.key
    chosen: dict[str, list[tuple[str, str, date, datetime]]] = {}
    for chain in sorted(by_chain, key=lambda c: (c[0], c[3])):
        taken = chosen.setdefault(chain[0], [])
        if len(taken) < expiries:
            taken.append(chain)
    waiting = tuple(sorted(u for u, chains in chosen.items() if chains[0][1] not in prices))
    live = [chain for chains in chosen.values() for chain in chains if chain[1] in prices]
    width = strikes
    while width > 0 and len(live) * 2 * (2 * width + 1) > room:
        width -= 1
    if live and width == 0:
        raise ChainPlanError(
            f"{len(live)} option chains do not fit the feed's room of {room} keys even at one"
            " strike each side: follow fewer (TICKVAULT_OPTION_CHAINS, TICKVAULT_OPTION_EXPIRIES)"
        )
    windows = []
    atm_of: dict[tuple[str, date], float] = {}
    for underlying, underlying_key, day, close in live:
        by_strike = by_chain[(underlying, underlying_key, day, close)]
        ladder = sorted(by_strike)
        atm = at_the_money(ladder, prices[underlying_key], previous.get((underlying, day)))
        atm_of[(underlying, day)] = atm
        i = bisect.bisect_left(ladder, atm)
        taken = ladder[max(0, i - width) : i + width + 1]
        keys = tuple(key for strike in taken for _, key in sorted(by_strike[strike].items()))
        windows.append(
            Window(underlying, underlying_key, day, close, atm, taken[0], taken[-1], keys)
        )
    return Plan(tuple(windows), atm_of, width, waiting)
