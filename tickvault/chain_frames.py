"""The option chains as pandas frames, for the notebooks: what `tickvault.notebook` re-exports
as `option_chain`, `option_expiries` and `chain_history`.

The store answers with the chain's dataclasses (store/option_chain.py); a notebook wants one
row per strike with the call and put side by side, times in IST and numbers as floats, so the
turning of one into the other lives here, apart from the notebook helper's tick and bar reads.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime
from typing import Any

import pandas as pd

from core.ist import IST_ZONE, ist_day
from ingest.channels.latest_reader import LatestTickReader
from ingest.channels.latest_table import published_path
from store.option_chain import (
    HISTORY_COLUMNS,
    OptionChain,
    Side,
    chain_contracts,
    chain_from_ticks,
    expiries,
    opening_oi,
)
from store.option_chain import chain_history as _chain_history
from store.option_chain import newest_tick_time as newest_chain_tick
from store.option_chain import option_chain as _option_chain
from tickvault.arrow_frames import day_bounds, ist_moment, with_attrs
from tickvault.checkout import checkout_settings, connect

# A side's columns in the chain frame, each as call_<name> and put_<name>.
_SIDE_COLUMNS = tuple(field.name for field in dataclasses.fields(Side))


def option_expiries(underlying: str) -> list[date]:
    """The expiries (IST dates) of an underlying's options, expired ones included."""
    with connect() as conn:
        return expiries(conn, underlying)


def option_chain(
    underlying: str,
    expiry: date | str | None = None,
    at: datetime | date | str | None = None,
) -> pd.DataFrame:
    """The chain at `at` (a naive time is IST; None: now, from the latest ticks the ingest on
    this checkout publishes) as a frame: one row per strike (the index), call_* and put_*
    columns side by side. `attrs` holds the underlying's price, the ATM strike, the PCR by OI
    and max pain. Expiry None: the nearest not yet closed."""
    wanted = None if expiry is None else pd.Timestamp(expiry).date()
    with connect() as conn:
        if at is None:
            now = datetime.now(UTC)
            chain = chain_contracts(conn, underlying, wanted, now)
            with LatestTickReader(published_path(checkout_settings().data_dir)) as reader:
                latest = reader.latest([chain.underlying_key, *chain.keys])
            result = chain_from_ticks(chain, latest, opening_oi(conn, chain.keys, ist_day(now)))
        else:
            result = _option_chain(conn, underlying, wanted, ist_moment(at))
    return _chain_frame(result)


def _chain_frame(chain: OptionChain) -> pd.DataFrame:
    rows = []
    for row in chain.strikes:
        values: dict[str, Any] = {"strike": row.strike}
        for prefix, side in (("call", row.call), ("put", row.put)):
            for name in _SIDE_COLUMNS:
                values[f"{prefix}_{name}"] = getattr(side, name) if side else None
        rows.append(values)
    columns = ["strike"] + [f"{p}_{n}" for p in ("call", "put") for n in _SIDE_COLUMNS]
    frame = pd.DataFrame(rows, columns=columns).set_index("strike")
    for prefix in ("call", "put"):
        frame[f"{prefix}_ts"] = pd.to_datetime(frame[f"{prefix}_ts"], utc=True).dt.tz_convert(
            IST_ZONE
        )
    numeric = [c for c in frame.columns if not c.endswith(("_instrument_key", "_ts"))]
    frame[numeric] = frame[numeric].apply(pd.to_numeric).astype("float64")
    summary = ("underlying", "underlying_key", "expiry", "at", "underlying_price", "atm_strike")
    attrs = {name: getattr(chain, name) for name in (*summary, "pcr", "max_pain")}
    return with_attrs(frame, attrs)


def chain_history(
    underlying: str,
    expiry: date | str | None = None,
    day: date | str | None = None,
    *,
    atm_only: bool = False,
) -> pd.DataFrame:
    """The chain minute by minute on `day` (default: the chain's latest day with ticks): each
    contract's last state in every minute it traded (option_chain_1m), with the underlying's
    price and the ATM strike at the minute's end, times in IST. `atm_only`: only the
    contracts at the money in their minute, e.g. `chain_history("NIFTY", atm_only=True)
    .query("option_type == 'CE'")[["bucket", "iv"]]` is the ATM call's IV through the day."""
    wanted = None if expiry is None else pd.Timestamp(expiry).date()
    with connect() as conn:
        if day is None:
            chain = chain_contracts(conn, underlying, wanted, datetime.now(UTC))
            newest = newest_chain_tick(conn, chain)
            if newest is None:
                raise LookupError(f"no ticks are stored for {underlying} options of {chain.expiry}")
            day, wanted = ist_day(newest), chain.expiry
        start, end = day_bounds(day)
        rows = _chain_history(conn, underlying, wanted, start, end, atm_only=atm_only)
    frame = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    for column in ("bucket", "last_ts"):
        frame[column] = pd.to_datetime(frame[column], utc=True).dt.tz_convert(IST_ZONE)
    text = ("bucket", "last_ts", "option_type", "instrument_key")
    numeric = [c for c in frame.columns if c not in text]
    frame[numeric] = frame[numeric].apply(pd.to_numeric).astype("float64")
    return frame
