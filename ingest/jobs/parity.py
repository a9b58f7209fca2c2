"""The parity audit's comparison: one instrument's day of our 1-minute bars against Upstox's
1-minute candles. Pure: the reads are store/audit.py, the fetching ingest/jobs/audit.py.

Prices are compared in ticks of the instrument's tick size (a bar is equal when every price
rounds to the same tick), volumes in percent of Upstox's. How Upstox builds candle volume is
not documented, so a difference is reported with its size, never explained away.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from core.ist import IST
from ingest.upstox.candles import Candle
from store.audit import Bar, DayVolume

PRICE_FIELDS = ("open", "high", "low", "close")
BarsVerdict = Literal["clean", "differs", "no_candles", "error"]
VolumeVerdict = Literal["conserved", "differs", "unknown"]


@dataclass(frozen=True)
class FieldDifference:
    """One field of one bucket apart: `size` in ticks for prices (ours - theirs), in percent
    of theirs for volume (None when theirs is 0)."""

    bucket: datetime
    field: str
    ours: float | None
    theirs: float
    size: float | None
    unit: Literal["ticks", "percent"]

    def as_json(self) -> dict[str, Any]:
        return {
            "bucket": _ist(self.bucket),
            "field": self.field,
            "ours": self.ours,
            "theirs": self.theirs,
            "size": self.size,
            "unit": self.unit,
        }


@dataclass(frozen=True)
class VolumeCheck:
    """Volume conservation over the day: what our bars add up to (live minutes from the
    ticks, the gaps from backfilled candles) against what Upstox's candles add up to. Beside
    them, what the ticks alone carry (their volume_delta) and the exchange's running total at
    our last tick (vtt): vtt above the ticks' sum is volume traded while we were not
    listening (before the first tick, or in a gap), which only backfill brings into bars."""

    volume_delta_sum: int
    last_vtt: int | None
    candles_volume: int | None
    bars_volume: int

    @property
    def verdict(self) -> VolumeVerdict:
        if self.candles_volume is None:
            return "unknown"
        return "conserved" if self.bars_volume == self.candles_volume else "differs"

    def as_json(self) -> dict[str, Any]:
        return {
            "bars_volume": self.bars_volume,
            "volume_delta_sum": self.volume_delta_sum,
            "last_vtt": self.last_vtt,
            "candles_volume": self.candles_volume,
            "unheard_volume": None
            if self.last_vtt is None
            else self.last_vtt - self.volume_delta_sum,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class InstrumentAudit:
    instrument_key: str
    trading_date: date
    tick_size: float  # rupees
    buckets_equal: int
    differences: tuple[FieldDifference, ...]
    missing_ours: tuple[datetime, ...]  # candles with no bar of ours
    missing_theirs: tuple[datetime, ...]  # bars of ours with no candle
    volume: VolumeCheck
    error: str | None = None

    @property
    def buckets_differing(self) -> int:
        return len({difference.bucket for difference in self.differences})

    @property
    def bars_verdict(self) -> BarsVerdict:
        if self.error is not None:
            return "error"
        if self.volume.candles_volume is None:
            return "no_candles"
        if self.differences or self.missing_ours or self.missing_theirs:
            return "differs"
        return "clean"

    def details(self) -> dict[str, Any]:
        """What the results table keeps in `details` and the JSON output shows."""
        return {
            "tick_size": self.tick_size,
            "differences": [difference.as_json() for difference in self.differences],
            "missing_ours": [_ist(bucket) for bucket in self.missing_ours],
            "missing_theirs": [_ist(bucket) for bucket in self.missing_theirs],
            "volume": self.volume.as_json(),
            "error": self.error,
        }


def compare_day(
    instrument_key: str,
    day: date,
    tick_size: float,
    bars: list[Bar],
    candles: list[Candle],
    volume: DayVolume,
) -> InstrumentAudit:
    """Our bars and Upstox's candles of one instrument-day, bucket by bucket."""
    ours = {bar.start: bar for bar in bars}
    theirs = {candle.start: candle for candle in candles}
    differences: list[FieldDifference] = []
    equal = 0
    for bucket in sorted(ours.keys() & theirs.keys()):
        apart = _bucket_differences(ours[bucket], theirs[bucket], tick_size)
        differences.extend(apart)
        equal += not apart
    check = VolumeCheck(
        volume.volume_delta_sum,
        volume.last_vtt,
        sum(candle.volume for candle in candles) if candles else None,
        sum(bar.volume or 0 for bar in bars),
    )
    return InstrumentAudit(
        instrument_key,
        day,
        tick_size,
        equal,
        tuple(differences),
        tuple(sorted(theirs.keys() - ours.keys())),
        tuple(sorted(ours.keys() - theirs.keys())),
        check,
    )


def failed_day(
    instrument_key: str,
    day: date,
    tick_size: float,
    bars: list[Bar],
    volume: DayVolume,
    error: str,
) -> InstrumentAudit:
    """An instrument whose candles could not be fetched: nothing compared, the reason kept."""
    return InstrumentAudit(
        instrument_key,
        day,
        tick_size,
        0,
        (),
        (),
        (),
        VolumeCheck(
            volume.volume_delta_sum, volume.last_vtt, None, sum(bar.volume or 0 for bar in bars)
        ),
        error,
    )


def _bucket_differences(bar: Bar, candle: Candle, tick_size: float) -> list[FieldDifference]:
    found = []
    for field in PRICE_FIELDS:
        ours, theirs = getattr(bar, field), getattr(candle, field)
        ticks = round((ours - theirs) / tick_size, 2)
        if abs(ticks) >= 0.5:  # half a tick or more apart: not the same printed price
            found.append(FieldDifference(bar.start, field, ours, theirs, ticks, "ticks"))
    if (bar.volume or 0) != candle.volume:
        percent = (
            round(((bar.volume or 0) - candle.volume) / candle.volume * 100, 3)
            if candle.volume
            else None
        )
        found.append(
            FieldDifference(bar.start, "volume", bar.volume, candle.volume, percent, "percent")
        )
    return found


def _ist(moment: datetime) -> str:
    return moment.astimezone(IST).isoformat()
