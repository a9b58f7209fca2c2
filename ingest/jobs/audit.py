"""The parity audit of a trading day: our 1-minute bars against Upstox's candles for every
instrument we have bars of (or the ones named), the results kept in audit_results.

`run_audit` is what `tickvault audit`, the API and the post-close schedule call
(`Settings.audit_after_close` says whether the schedule does). Run after the close: during
the session the current minute is still forming on both sides, and Upstox's intraday
candles trail by a minute or so.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import psycopg

from ingest.config import Settings
from ingest.jobs.parity import InstrumentAudit, compare_day, failed_day
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
        return report_json(self.trading_date, self.rows())


@dataclass(frozen=True)
class _Stored:
    """What the database holds of one instrument-day."""

    instrument: AuditedInstrument
    bars: list[Bar]
    volume: DayVolume


async def run_audit(
    database_url: str,
    settings: Settings,
    day: date,
    symbols: Sequence[str] = (),
    *,
    limits: RateLimits = UPSTOX_LIMITS,
) -> AuditReport:
    """Audit `day` (IST) for `symbols` (default: every instrument with bars that day), store
    the results and return them. Candles come from `settings.upstox_api_base` with
    `settings.upstox_access_token`; a refused token stops the whole audit (CandleAuthError),
    any other failure of one instrument's candles is that instrument's 'error' verdict."""
    if not settings.upstox_access_token:
        raise CandleError(
            "the audit compares with Upstox's candles, which need UPSTOX_ACCESS_TOKEN"
            " (an Analytics Token will do)"
        )
    stored = await asyncio.to_thread(_read_day, database_url, day, symbols)
    async with CandleClient(
        settings.upstox_api_base, settings.upstox_access_token, limits=limits
    ) as client:
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(_audit_one(client, day, item)) for item in stored]
        except* CandleAuthError as refused:
            raise refused.exceptions[0] from None
    report = AuditReport(
        str(uuid.uuid4()), datetime.now(UTC), day, tuple(task.result() for task in tasks)
    )
    await asyncio.to_thread(_save, database_url, report)
    return report


async def _audit_one(client: CandleClient, day: date, stored: _Stored) -> InstrumentAudit:
    instrument = stored.instrument
    try:
        candles = await client.minute_candles(instrument.instrument_key, day)
    except CandleAuthError:
        raise
    except CandleError as error:
        return failed_day(
            instrument.instrument_key, day, instrument.tick_size, stored.volume, str(error)
        )
    return compare_day(
        instrument.instrument_key, day, instrument.tick_size, stored.bars, candles, stored.volume
    )


def _read_day(database_url: str, day: date, symbols: Sequence[str]) -> list[_Stored]:
    with psycopg.connect(database_url) as conn:
        return [
            _Stored(
                instrument,
                day_bars(conn, instrument.instrument_key, day),
                day_volume(conn, instrument.instrument_key, day),
            )
            for instrument in audited_instruments(conn, day, symbols)
        ]


def _save(database_url: str, report: AuditReport) -> None:
    with psycopg.connect(database_url) as conn:
        save_results(conn, report.rows())
