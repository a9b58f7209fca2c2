"""The ingest's bar rollup: the Apache edition's stand-in for continuous aggregate policies
(every `rollup_interval_s`), and the daily schedule's seal of a finished day on both editions.

Each pass opens its own autocommit connection rather than borrowing the writer's pool:
Community's refresh cannot run in a transaction, and a long rebuild must not hold a
connection the writer waits for.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import date, datetime

import psycopg

from core.ist import day_bounds
from store.bars import RefreshResult, refresh_bars

log = logging.getLogger(__name__)


class BarRollup:
    """Refreshes the bars of one database; `last_error` is the status's `last_rollup_error`."""

    def __init__(self, database_url: str, interval_s: float) -> None:
        self._database_url = database_url
        self._interval_s = interval_s
        self.last_error: str | None = None

    async def run_forever(self) -> None:
        """Bring the bars up to date every interval; a failure is retried the next round."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await asyncio.to_thread(self._refresh)
                self.last_error = None
            except psycopg.Error as error:
                self.last_error = str(error).strip()[:200]
                log.warning("bar rollup failed, retrying next round: %s", self.last_error)

    async def catch_up(self) -> None:
        """One last pass at a clean stop, after the writer's final flush: otherwise the
        minutes written since the previous pass keep stale bars until the next start."""
        try:
            await asyncio.to_thread(self._refresh)
        except psycopg.Error as error:
            log.warning("the last bar rollup failed; the next start repeats it: %s", error)

    async def seal(self, day: date) -> str:
        """The last rollup of a trading day: rebuild its bars from its ticks as they stand
        after the close, late ticks included (the schedule's post-close `seal` step)."""
        start, end = day_bounds(day)
        try:
            result = await asyncio.to_thread(self._refresh, start, end)
        except psycopg.errors.InsufficientPrivilege:
            # Community under the app's role (deploy/app_role.py), which may not refresh:
            # the policies TimescaleDB runs as the owner materialize the day instead.
            return f"bars of {day} left to the continuous aggregate policies"
        if not result.buckets_written:  # Community: the continuous aggregates say nothing
            return f"bars of {day} refreshed ({result.edition.value} edition)"
        written = ", ".join(f"{view} {count}" for view, count in result.buckets_written.items())
        return f"bars of {day} rebuilt: {written} buckets"

    def _refresh(self, start: datetime | None = None, end: datetime | None = None) -> RefreshResult:
        with psycopg.connect(self._database_url, autocommit=True, connect_timeout=5) as conn:
            return refresh_bars(conn, start, end)
