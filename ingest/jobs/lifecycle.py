"""The jobs a running ingest keeps beside its feed, started and stopped together: coverage
spans and the backfill each new span asks for, the Apache edition's bar rollup, the market
calendar and the daily schedule.

The service hands them the parts of its feed they work on (`FeedParts`) and the task table
it cancels at its stop; nothing here reaches into the service itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core.config import Settings
from ingest.client import FeedClient
from ingest.jobs.backfill import AutoBackfill
from ingest.jobs.calendar import CalendarKeeper
from ingest.jobs.coverage import CoverageRecorder
from ingest.jobs.instrument_refresh import RefreshReport
from ingest.jobs.rollup import BarRollup
from ingest.jobs.schedule.runner import Connect, DailySchedule
from ingest.jobs.schedule.steps import Upkeep, daily_schedule
from ingest.subscriptions import SubscriptionManager
from ingest.tokens import TokenKeeper
from store.editions import Edition

Tasks = dict[str, asyncio.Task[Any]]


@dataclass(frozen=True)
class FeedParts:
    """What the jobs take of a started ingest. `tokens.access()` is the REST base the feed uses
    (the simulator's when it is the feed) with the token of the moment."""

    database_url: str
    settings: Settings
    edition: Edition
    connect: Connect
    tokens: TokenKeeper
    client: FeedClient
    market_status: Mapping[str, str]  # the live segment -> status map the pipeline keeps
    subscriptions: SubscriptionManager
    refresh_instruments: Callable[[], Awaitable[RefreshReport]]


class IngestJobs:
    """The jobs of one ingest service."""

    def __init__(self, database_url: str, settings: Settings) -> None:
        self.rollup = BarRollup(database_url, settings.rollup_interval_s)
        self.schedule: DailySchedule | None = None
        self._coverage: CoverageRecorder | None = None
        self._backfill: AutoBackfill | None = None

    def record_coverage(self, parts: FeedParts, tasks: Tasks) -> None:
        """From the first frame on: when the store was receiving, and today's gaps
        backfilled whenever a socket opens, with the token the feed has then."""
        self._backfill = AutoBackfill(parts.database_url, parts.tokens.access)
        self._coverage = CoverageRecorder(
            parts.client.frame_spans, parts.connect, on_new_span=self._backfill.request
        )
        tasks["coverage"] = asyncio.create_task(self._coverage.run_forever(), name="coverage")

    def start(self, parts: FeedParts, tasks: Tasks) -> None:
        """The rollup (Apache), the calendar and, when enabled, the daily schedule."""
        if parts.edition is Edition.APACHE:
            tasks["rollup"] = asyncio.create_task(self.rollup.run_forever(), name="rollup")
        feed = parts.tokens.access()
        calendar = CalendarKeeper(feed.api_base, feed.token, parts.connect, parts.market_status)
        schedule_enabled = parts.settings.schedule_enabled
        # Daily by itself only without the schedule, whose `calendar` step refreshes it.
        daily = calendar.run_forever(not schedule_enabled)
        tasks["calendar"] = asyncio.create_task(daily, name="calendar")
        if schedule_enabled:
            self.schedule = self._daily_schedule(parts, calendar)
            tasks["schedule"] = asyncio.create_task(self.schedule.run_forever(), name="schedule")

    def _daily_schedule(self, parts: FeedParts, calendar: CalendarKeeper) -> DailySchedule:
        client = parts.client
        upkeep = Upkeep(
            parts.database_url,
            parts.edition,
            parts.tokens,
            lambda: client.token_state,
            calendar,
            parts.refresh_instruments,
        )
        return daily_schedule(
            parts.settings,
            parts.connect,
            subscriptions=parts.subscriptions,
            rollup=self.rollup,
            upkeep=upkeep,
        )

    async def catch_up_bars(self, edition: Edition, database_reached: bool) -> None:
        """Apache's bars over the writer's last flush; none in an outage (the journal holds
        those ticks, and the next start writes and rolls them up)."""
        if edition is Edition.APACHE and database_reached:
            await self.rollup.catch_up()

    async def stop_backfill(self) -> None:
        if self._backfill is not None:
            await self._backfill.stop()

    async def flush_coverage(self) -> None:
        """The end of the spans, up to the last frame (after one attempt in an outage)."""
        if self._coverage is not None:
            await self._coverage.flush()
