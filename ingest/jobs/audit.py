"""The parity audit of a trading day: our 1-minute bars against Upstox's candles for every
instrument we have bars of (or the ones named), the results kept in audit_results.

`run_audit` is what `tickvault audit`, the API and the post-close schedule call
(`Settings.audit_after_close` says whether the schedule does). Best run after the close:
during the session the minute in progress is still forming on both sides, so an audit of
today compares the minutes before it only; and Upstox's intraday candles trail by a minute or
so, so the last minute or two may still be missing on their side.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import psycopg

from core.ist import IST
from ingest.jobs.parity import InstrumentAudit, compare_day, failed_day
from ingest.tokens import UpstoxAccess
from ingest.upstox.candles import (
    UPSTOX_LIMITS,
    CandleAuthError,
    CandleClient,
    CandleError,
    RateLimits,
)
from store.audit import (
    AuditedInstrument,
    Bar,
    DayVolume,
    StoredResult,
    audited_instruments,
    day_bars,
    day_volume,
    report_json,
    save_results,
)


@dataclass(frozen=True)
class AuditReport:
    run_id: str
    run_at: datetime
    trading_date: date
    instruments: tuple[InstrumentAudit, ...]
    until: datetime | None = None  # the minutes compared start before it (None: the whole day)

    def rows(self) -> list[StoredResult]:
        return [
            StoredResult(
                self.run_id,
                self.run_at,
                self.trading_date,
                audit.instrument_key,
                audit.bars_verdict,
                audit.volume.verdict,
                audit.buckets_equal,
                audit.buckets_differing,
                len(audit.missing_ours),
                len(audit.missing_theirs),
                audit.details(),
            )
            for audit in self.instruments
        ]

    @property
    def clean(self) -> bool:
        return bool(report_json(self.trading_date, self.rows())["clean"])

    def as_json(self) -> dict[str, Any]:
        return {
            **report_json(self.trading_date, self.rows()),
            "compared_until": None
            if self.until is None
            else self.until.astimezone(IST).isoformat(),
        }


@dataclass(frozen=True)
class _Stored:
    """What the database holds of one instrument-day."""

    instrument: AuditedInstrument
    bars: list[Bar]
    volume: DayVolume


async def run_audit(
    database_url: str,
    access: UpstoxAccess,
    day: date,
    symbols: Sequence[str] = (),
    *,
    limits: RateLimits = UPSTOX_LIMITS,
) -> AuditReport:
    """Audit `day` (IST) for `symbols` (default: every instrument with bars that day), store
    the results and return them. Candles come from `access` (Upstox's base and token, or the
    simulator's); a refused token stops the whole audit (CandleAuthError), any other failure
    of one instrument's candles is that instrument's 'error' verdict."""
    if not access.token:
        raise CandleError(
            "the audit compares with Upstox's candles, which need UPSTOX_ACCESS_TOKEN"
            " (an Analytics Token will do)"
        )
    until = _forming_minute(day)
    stored = await asyncio.to_thread(_read_day, database_url, day, symbols, until)
    async with CandleClient(access.api_base, access.token, limits=limits) as client:
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(_audit_one(client, day, item, until)) for item in stored]
        except* CandleAuthError as refused:
            raise refused.exceptions[0] from None
    report = AuditReport(
        str(uuid.uuid4()), datetime.now(UTC), day, tuple(task.result() for task in tasks), until
    )
    await asyncio.to_thread(_save, database_url, report)
    return report


def _forming_minute(day: date) -> datetime | None:
    """The start of the minute in progress when `day` is today (IST): it and what follows
    are not compared. None for a day that is over."""
    now = datetime.now(IST)
    if day != now.date():
        return None
    return now.replace(second=0, microsecond=0)


async def _audit_one(
    client: CandleClient, day: date, stored: _Stored, until: datetime | None
) -> InstrumentAudit:
    instrument = stored.instrument
    try:
        candles = await client.minute_candles(instrument.instrument_key, day)
    except CandleAuthError:
        raise
    except CandleError as error:
        return failed_day(
            instrument.instrument_key,
            day,
            instrument.tick_size,
            stored.bars,
            stored.volume,
            str(error),
        )
    if until is not None:
        candles = [candle for candle in candles if candle.start < until]
    return compare_day(
        instrument.instrument_key, day, instrument.tick_size, stored.bars, candles, stored.volume
    )


def _read_day(
    database_url: str, day: date, symbols: Sequence[str], until: datetime | None
) -> list[_Stored]:
    with psycopg.connect(database_url) as conn:
        return [
            _Stored(
                instrument,
                day_bars(conn, instrument.instrument_key, day, until),
                day_volume(conn, instrument.instrument_key, day, until),
            )
            for instrument in audited_instruments(conn, day, symbols)
        ]


def _save(database_url: str, report: AuditReport) -> None:
    with psycopg.connect(database_url) as conn:
        save_results(conn, report.rows())
