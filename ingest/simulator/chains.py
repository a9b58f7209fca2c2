"""The option chains the simulator lists: NIFTY's weekly and BANKNIFTY's monthly contracts,
rolled on the simulator's clock.

NSE lists NIFTY options for weekly expiries (Tuesdays) and BANKNIFTY for monthly ones (the
last Tuesday of the month); each contract trades until 15:30 IST on its expiry date, its
close, and leaves the master after it. The simulator lists the nearest EXPIRIES of each,
with STRIKES strikes each side of the underlying's previous close, in the instrument-master
format, so that tickvault's instrument refresh loads them like Upstox's. The records are a
function of the underlying's close and the clock alone: the same keys on every start, and an
expiry that passes is replaced by the next one.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

IST = timedelta(hours=5, minutes=30)
CLOSE_IST = timedelta(hours=15, minutes=30)
TUESDAY = 1
EXPIRIES = 3
STRIKES = 40


@dataclass(frozen=True)
class ChainSpec:
    """How NSE lists one index's options."""

    underlying_key: str
    symbol: str
    step: float  # strike interval
    weekly: bool
    lot: int
    level: float  # a typical price, for a master record that carries no previous close
    base_iv: float  # at-the-money IV of the smile
    code: int  # one digit that keeps the underlyings' exchange tokens apart


INDEX_CHAINS: dict[str, ChainSpec] = {
    spec.underlying_key: spec
    for spec in (
        ChainSpec("NSE_INDEX|Nifty 50", "NIFTY", 50.0, True, 75, 26000.0, 0.13, 7),
        ChainSpec("NSE_INDEX|Nifty Bank", "BANKNIFTY", 100.0, False, 35, 59000.0, 0.16, 8),
    )
}


def close_ms(day: date) -> int:
    """15:30 IST of `day` in epoch ms: an NSE contract's last moment of trading."""
    moment = datetime(day.year, day.month, day.day, tzinfo=UTC) + CLOSE_IST - IST
    return int(moment.timestamp() * 1000)


def expiry_dates(spec: ChainSpec, now_ms: int, count: int = EXPIRIES) -> list[date]:
    """The nearest `count` expiry dates whose close is after `now_ms`."""
    today = (datetime.fromtimestamp(now_ms / 1000, UTC) + IST).date()
    found: list[date] = []
    day = today + timedelta(days=(TUESDAY - today.weekday()) % 7)
    while len(found) < count:
        last_of_month = (day + timedelta(days=7)).month != day.month
        if (spec.weekly or last_of_month) and close_ms(day) > now_ms:
            found.append(day)
        day += timedelta(days=7)
    return found


Slot = tuple[date, float, str]  # expiry date (IST), strike, CE or PE


def slot_of(record: Mapping[str, object]) -> Slot | None:
    """Where a dated option record sits in its chain; None for any other record."""
    expiry, strike, kind = (
        record.get(name) for name in ("expiry", "strike_price", "instrument_type")
    )
    if kind not in ("CE", "PE") or not isinstance(expiry, int | float):
        return None
    day = (datetime.fromtimestamp(expiry / 1000, UTC) + IST).date()
    return (day, float(strike) if isinstance(strike, int | float) else 0.0, str(kind))


def chain_records(
    spec: ChainSpec, spot: float, now_ms: int, taken: Set[Slot] = frozenset()
) -> list[dict[str, object]]:
    """The instrument-master records of `spec`'s listed contracts around `spot`, but for the
    slots the master lists already (`taken`: its own contracts stand in the chain)."""
    atm = round(spot / spec.step) * spec.step
    records: list[dict[str, object]] = []
    for expiry in expiry_dates(spec, now_ms):
        label = expiry.strftime("%d %b %y").upper()
        for i in range(-STRIKES, STRIKES + 1):
            strike = atm + i * spec.step
            for side, kind in enumerate(("CE", "PE")):
                if (expiry, strike, kind) in taken:
                    continue
                token = f"{spec.code}{expiry:%y%m%d}{round(strike):06d}{side}"
                records.append(
                    {"instrument_key": f"NSE_FO|{token}", "segment": "NSE_FO",
                     "exchange": "NSE", "name": spec.symbol, "instrument_type": kind,
                     "trading_symbol": f"{spec.symbol} {strike:g} {kind} {label}",
                     "exchange_token": token, "lot_size": spec.lot, "minimum_lot": spec.lot,
                     "tick_size": 5.0, "strike_price": strike, "expiry": close_ms(expiry),
                     "weekly": spec.weekly, "underlying_key": spec.underlying_key,
                     "underlying_symbol": spec.symbol, "asset_symbol": spec.symbol,
                     "asset_key": spec.underlying_key, "underlying_type": "INDEX"}
                )  # fmt: skip
    return records


def _listed_here(spec: ChainSpec, key: str) -> bool:
    """Whether `key` is one of the keys chain_records makes for `spec`."""
    token = key.removeprefix("NSE_FO|")
    return len(token) == 14 and token.isdigit() and token[0] == str(spec.code)


def chain_specs(records: Mapping[str, Mapping[str, object]]) -> list[ChainSpec]:
    """The chains to list for a master: those of the index records it holds, unless it
    lists a chain of that index itself, at least as many dated options as one expiry of
    ours (Upstox's own master, loaded for a run on the simulator: its contracts trade as
    they are), not counting those an earlier run listed (saved in the store's master). A
    few options of the index (the sample master's) take their places in the chain."""
    specs = []
    for key, spec in INDEX_CHAINS.items():
        own = sum(
            record.get("underlying_key") == key
            and slot_of(record) is not None
            and not _listed_here(spec, str(record_key))
            for record_key, record in records.items()
        )
        if key in records and own < 2 * (2 * STRIKES + 1):
            specs.append(spec)
    return specs
