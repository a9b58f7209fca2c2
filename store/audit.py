"""The parity audit's reads and writes: a day's 1-minute bars and tick volumes per instrument,
and the results table of sql/013_audit.sql. The comparison itself is ingest/jobs/parity.py.

A trading date is an IST calendar date: [00:00 IST, next 00:00 IST).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from core.ist import day_bounds
from store.errors import StoreError

DEFAULT_TICK_PAISE = 5.0  # NSE's common tick, for an instrument the master does not price


@dataclass(frozen=True)
class Bar:
    """One of our 1-minute bars (ohlc_1m); volume None when no tick of it carried volume."""

    start: datetime
    open: float
    high: float
    low: float
    close: float
    volume: int | None


@dataclass(frozen=True)
class DayVolume:
    """An instrument's day in the ticks table: the sum of `volume_delta` (what our bars
    count) and the last `vtt` (the exchange's own running total at our last tick)."""

    volume_delta_sum: int
    last_vtt: int | None
    ticks: int


@dataclass(frozen=True)
class AuditedInstrument:
    """An instrument to audit and its tick size in rupees: the master's, or
    DEFAULT_TICK_PAISE for an instrument the master does not price (an index)."""

    instrument_key: str
    tick_size: float


@dataclass(frozen=True)
class StoredResult:
    """One row of audit_results, as read back."""

    run_id: str
    run_at: datetime
    trading_date: date
    instrument_key: str
    bars_verdict: str
    volume_verdict: str
    buckets_equal: int
    buckets_differing: int
    missing_ours: int
    missing_theirs: int
    details: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(run_at=self.run_at.isoformat(), trading_date=self.trading_date.isoformat())
        return row


def report_json(day: date, results: Sequence[StoredResult]) -> dict[str, Any]:
    """The one JSON shape of an audit, whether just run or read back from the table:
    `clean` when every instrument's bars and volume agree; `verdict` the day's in a word
    (see `day_verdict`)."""
    clean = bool(results) and all(
        r.bars_verdict == "clean" and r.volume_verdict == "conserved" for r in results
    )
    return {
        "trading_date": day.isoformat(),
        "clean": clean,
        "verdict": day_verdict(results, clean),
        "instruments": [result.as_json() for result in results],
    }


def day_verdict(results: Sequence[StoredResult], clean: bool) -> str:
    """'nothing to audit' (no bars that day), 'could not run' (no instrument's candles could
    be fetched: nothing was compared), 'clean', or 'differences found'."""
    if not results:
        return "nothing to audit"
    if all(r.bars_verdict == "error" for r in results):
        return "could not run"
    return "clean" if clean else "differences found"


def audited_instruments(
    conn: psycopg.Connection, day: date, symbols: Sequence[str] = ()
) -> list[AuditedInstrument]:
    """The instruments to audit on `day`: those named (trading symbols, index names or
    instrument keys, resolved as the API and bars() do), else every one with a bar that day.
    An unknown symbol is an error, not a silent skip."""
    if symbols:
        keys: list[str] = []
        for symbol in symbols:
            row = conn.execute("SELECT resolve_symbol(%s)", [symbol]).fetchone()
            if row is None or row[0] is None:
                raise StoreError(
                    f"unknown symbol {symbol!r}: no trading symbol, index name or instrument key"
                    " in the instrument master matches it"
                )
            keys.append(row[0])
    else:
        start, end = day_bounds(day)
        keys = [
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT instrument_key FROM ohlc_1m WHERE bucket >= %s AND bucket < %s",
                [start, end],
            )
        ]
    sizes = dict(
        conn.execute(
            "SELECT instrument_key, tick_size FROM instruments"
            " WHERE instrument_key = ANY(%s) AND tick_size > 0",
            [keys],
        ).fetchall()
    )
    return [
        AuditedInstrument(key, sizes.get(key, DEFAULT_TICK_PAISE) / 100)
        for key in sorted(set(keys))
    ]


def day_bars(
    conn: psycopg.Connection, instrument_key: str, day: date, until: datetime | None = None
) -> list[Bar]:
    """The instrument's 1-minute bars of the day that start before `until` (default: the
    whole day), oldest first."""
    start, end = _bounds(day, until)
    rows = conn.execute(
        "SELECT bucket, open, high, low, close, volume FROM ohlc_1m"
        " WHERE instrument_key = %s AND bucket >= %s AND bucket < %s ORDER BY bucket",
        [instrument_key, start, end],
    )
    return [Bar(*row) for row in rows]


def day_volume(
    conn: psycopg.Connection, instrument_key: str, day: date, until: datetime | None = None
) -> DayVolume:
    """The day's ticks before `until` (default: the whole day)."""
    start, end = _bounds(day, until)
    total, ticks = conn.execute(
        "SELECT coalesce(sum(volume_delta), 0)::bigint, count(*) FROM ticks"
        " WHERE instrument_key = %s AND ts >= %s AND ts < %s",
        [instrument_key, start, end],
    ).fetchone() or (0, 0)
    last = conn.execute(
        "SELECT vtt FROM ticks WHERE instrument_key = %s AND ts >= %s AND ts < %s"
        " AND vtt IS NOT NULL ORDER BY ts DESC LIMIT 1",
        [instrument_key, start, end],
    ).fetchone()
    return DayVolume(int(total), None if last is None else int(last[0]), int(ticks))


def _bounds(day: date, until: datetime | None) -> tuple[datetime, datetime]:
    start, end = day_bounds(day)
    return start, end if until is None else max(start, min(end, until))


def save_results(conn: psycopg.Connection, rows: Iterable[StoredResult]) -> None:
    """Record a run's rows, in the caller's transaction."""
    conn.cursor().executemany(
        "INSERT INTO audit_results (run_id, run_at, trading_date, instrument_key, bars_verdict,"
        " volume_verdict, buckets_equal, buckets_differing, missing_ours, missing_theirs,"
        " details) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [
            (
                row.run_id,
                row.run_at,
                row.trading_date,
                row.instrument_key,
                row.bars_verdict,
                row.volume_verdict,
                row.buckets_equal,
                row.buckets_differing,
                row.missing_ours,
                row.missing_theirs,
                Jsonb(row.details, dumps=json.dumps),
            )
            for row in rows
        ],
    )


def latest_results(conn: psycopg.Connection, day: date) -> list[StoredResult]:
    """Each instrument's latest audit of `day`, by instrument key."""
    rows = conn.cursor(row_factory=dict_row).execute(
        "SELECT DISTINCT ON (instrument_key) run_id::text, run_at, trading_date, instrument_key,"
        " bars_verdict, volume_verdict, buckets_equal, buckets_differing, missing_ours,"
        " missing_theirs, details FROM audit_results WHERE trading_date = %s"
        " ORDER BY instrument_key, run_at DESC",
        [day],
    )
    return [StoredResult(**row) for row in rows]
