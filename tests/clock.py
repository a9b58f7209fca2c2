"""The feed's wall clock, moved for a test: faster, or behind, than the real one.

The simulator's trade times and the ingest's arrival times (so its coverage spans) are read
from `time.time_ns`; with this clock installed there, a scenario of minutes takes seconds
(speed), or the ticks of a few seconds land in minutes that are already over (offset), while
asyncio, the database's now() and every subprocess keep real time.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest


class FeedClock:
    """`speed` times as fast as the real clock from now on, `offset_s` seconds apart from it."""

    def __init__(self, speed: int = 1, offset_s: float = 0.0) -> None:
        self._real = time.time_ns
        self._start = self._real()
        self._offset_ns = int(offset_s * 1e9)
        self.speed = speed

    def __call__(self) -> int:
        return self._start + self._offset_ns + (self._real() - self._start) * self.speed

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(time, "time_ns", self)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self() / 1e9, UTC)

    async def sleep_until(self, moment: datetime) -> None:
        await asyncio.sleep(max(0.0, (moment - self.now()).total_seconds() / self.speed))
