"""The chain audit: our stored option chain against Upstox's option-chain answer at one moment
(`tickvault audit --chain NIFTY`), contract by contract, on LTP, OI and IV.

Upstox answers with the chain as it stands while the request is in flight, so the moment is
known only to lie between the request's start and its answer. Each contract is therefore
compared with our chain at both ends (`store.option_chain.option_chain(at=...)`, after the
writer had time to commit what came before the answer) and agrees when either is within the
tolerances: a tick that landed in flight is not a difference. Contracts with no tick stored
that day (outside the window of strikes the ingest follows, `ingest/chains/`) and contracts
our instrument master does not list are counted, not compared.

Tolerances (what "agrees" means; the feed and the chain carry the same numbers, so they are
tight): LTP within one tick (0.05) or 0.1 % of Upstox's; OI within 0.5 %; IV within 1 % of
Upstox's (relative) or 0.001 (absolute, for an IV near zero).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import psycopg

from ingest.tokens import UpstoxAccess
from ingest.upstox.candles import UPSTOX_LIMITS, CandleClient, CandleError, RateLimits
from ingest.upstox.option_chain import QuotedSide, QuotedStrike, quoted_chain
from store.option_chain import Chain, OptionChain, Side, chain_contracts, option_chain

# What the writer needs to commit the ticks that came before Upstox's answer.
SETTLE_S = 2.0
FIELDS = ("ltp", "oi", "iv")


def within(name: str, ours: float | None, theirs: float | None) -> bool:
    """Whether our value of field `name` agrees with Upstox's (the tolerances above)."""
    if ours is None or theirs is None:
        return ours is None and theirs is None
    apart = abs(ours - theirs)
    if name == "ltp":
        return apart <= max(0.05, 0.001 * abs(theirs)) + 1e-9
    if name == "oi":
        return apart <= 0.005 * abs(theirs) + 1e-9
    return apart <= max(0.001, 0.01 * abs(theirs))


@dataclass(frozen=True)
class ContractCheck:
    instrument_key: str
    strike: float
    option_type: str  # CE or PE
    agrees: bool
    ours: dict[str, float | None]  # the end (request start or answer) that was nearer theirs
    theirs: dict[str, float | None]


@dataclass(frozen=True)
class ChainAuditReport:
    underlying: str
    expiry: date
    asked_at: datetime
    answered_at: datetime
    contracts: tuple[ContractCheck, ...]
    unknown: int  # contracts Upstox lists that our instrument master does not
    no_tick: int  # contracts with no tick stored that day (outside the followed window)
    missing_theirs: int  # contracts we follow that Upstox does not list

    @property
    def differences(self) -> list[ContractCheck]:
        return [c for c in self.contracts if not c.agrees]

    @property
    def verdict(self) -> str:
        if not self.contracts:
            return "nothing compared"
        return "clean" if not self.differences and not self.missing_theirs else "differs"

    def as_json(self) -> dict[str, Any]:
        return {
            "underlying": self.underlying,
            "expiry": self.expiry.isoformat(),
            "asked_at": self.asked_at.isoformat(),
            "answered_at": self.answered_at.isoformat(),
            "verdict": self.verdict,
            "compared": len(self.contracts),
            "agree": len(self.contracts) - len(self.differences),
            "differ": len(self.differences),
            "unknown": self.unknown,
            "no_tick": self.no_tick,
            "missing_theirs": self.missing_theirs,
            "differences": [
                {
                    "instrument_key": c.instrument_key,
                    "strike": c.strike,
                    "option_type": c.option_type,
                    "ours": c.ours,
                    "theirs": c.theirs,
                }
                for c in self.differences
            ],
        }


def compare_chains(
    before: OptionChain,
    after: OptionChain,
    theirs: list[QuotedStrike],
    asked_at: datetime,
    answered_at: datetime,
) -> ChainAuditReport:
    """Each contract of Upstox's answer against ours at the request's start (`before`) and
    at its answer (`after`): pure, so every verdict can be tested on made-up chains."""
    ours_then = _sides(before)
    ours_now = _sides(after)
    checks: list[ContractCheck] = []
    unknown = no_tick = 0
    listed: set[str] = set()
    for row in theirs:
        for option_type, quoted in (("CE", row.call), ("PE", row.put)):
            if quoted is None:
                continue
            listed.add(quoted.instrument_key)
            ends = [s for s in (ours_then.get(quoted.instrument_key),
                                ours_now.get(quoted.instrument_key)) if s is not None]  # fmt: skip
            if not ends:
                unknown += 1
                continue
            if all(side.ts is None for side in ends):
                no_tick += 1
                continue
            checks.append(_check(row.strike, option_type, quoted, ends))
    missing = sum(1 for key, side in ours_now.items() if key not in listed and side.ts)
    return ChainAuditReport(
        after.underlying,
        after.expiry,
        asked_at,
        answered_at,
        tuple(checks),
        unknown,
        no_tick,
        missing,
    )


def _sides(chain: OptionChain) -> dict[str, Side]:
    return {
        side.instrument_key: side
        for row in chain.strikes
        for side in (row.call, row.put)
        if side is not None
    }


def _check(strike: float, option_type: str, quoted: QuotedSide, ends: list[Side]) -> ContractCheck:
    theirs = {name: getattr(quoted, name) for name in FIELDS}
    best: dict[str, float | None] = {}
    best_misses = math.inf
    for side in ends:
        ours = {name: getattr(side, name) for name in FIELDS}
        misses = sum(not within(name, ours[name], theirs[name]) for name in FIELDS)
        if misses < best_misses:
            best, best_misses = ours, misses
    return ContractCheck(quoted.instrument_key, strike, option_type, best_misses == 0, best, theirs)


async def run_chain_audit(
    database_url: str,
    access: UpstoxAccess,
    underlying: str,
    expiry: date | None = None,
    *,
    settle_s: float = SETTLE_S,
    limits: RateLimits = UPSTOX_LIMITS,
) -> ChainAuditReport:
    """Ask Upstox (or the simulator: `access` says which) for `underlying`'s chain of `expiry`
    (None: the nearest not closed), wait `settle_s` for the writer, and compare."""
    if not access.token:
        raise CandleError(
            "the chain audit compares with Upstox's option chain, which needs"
            " UPSTOX_ACCESS_TOKEN (an Analytics Token will do)"
        )
    chain = await asyncio.to_thread(_contracts, database_url, underlying, expiry)
    async with CandleClient(access.api_base, access.token, limits=limits) as client:
        asked_at = datetime.now(UTC)
        theirs = await quoted_chain(client, chain.underlying_key, chain.expiry)
        answered_at = datetime.now(UTC)
    await asyncio.sleep(settle_s)
    before, after = await asyncio.to_thread(
        _ours, database_url, underlying, chain.expiry, asked_at, answered_at
    )
    return compare_chains(before, after, theirs, asked_at, answered_at)


def _contracts(database_url: str, underlying: str, expiry: date | None) -> Chain:
    with psycopg.connect(database_url) as conn:
        return chain_contracts(conn, underlying, expiry, datetime.now(UTC))


def _ours(
    database_url: str, underlying: str, expiry: date, asked_at: datetime, answered_at: datetime
) -> tuple[OptionChain, OptionChain]:
    with psycopg.connect(database_url) as conn:
        return (
            option_chain(conn, underlying, expiry, asked_at),
            option_chain(conn, underlying, expiry, answered_at),
        )
