"""The daily schedule: an asyncio task of the ingest that runs each trading day's pre-open and
post-close steps (ingest/jobs/schedule/steps.py lists them), records every attempt in
`schedule_runs` and shows each step's last and next run in the status.

When: ingest/jobs/schedule/plan.py decides (IST times from settings, missed phases, catch-up). The
record makes a phase run once per day across restarts: a step with an `ok` or `failed`
attempt for the day is not run again; the others are, in order.

Failure: a step that raises is recorded (`retrying`), logged, and run again after a doubling
delay (ingest/backoff.py), up to `schedule_step_attempts` attempts; then it is recorded
`failed`, logged as an error, shown in the status, and not run again that day. A failure does
not stop its phase: the following steps still run. Steps are independent on purpose (a
failed instrument refresh still lets the resubscribe run on yesterday's master); a step that
needs another's work checks it itself (retention reads each day's archive back before
dropping anything).

Time: read only through a `Clock` (now() and sleep_until()), the system's by default, so a
test can run days of the schedule in milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Protocol, TypeVar

import psycopg

from core.config import Settings
from core.ist import IST, ist_day
from ingest.backoff import Backoff
from ingest.jobs.schedule.plan import (
    LOOKAHEAD_DAYS,
    Phase,
    PhaseRun,
    PhaseTimes,
    TradingDay,
    due_runs,
    next_run,
    weekday_trading_day,
)
from ingest.status import ScheduleStatus, StepStatus
from store import schedule as runs
from store.schedule import Outcome, StepRun

log = logging.getLogger(__name__)

# A step's work: given the trading day, do it and return a short report of what was done.
StepFunction = Callable[[date], Awaitable[str]]
Connect = Callable[[], AbstractContextManager[psycopg.Connection]]
T = TypeVar("T")

_RESULT_CHARS = 500
_MAX_SLEEP_S = 60.0  # the system clock re-reads the time this often: a clock set ahead is seen


@dataclass(frozen=True)
class Step:
    name: str
    phase: Phase
    run: StepFunction


class Clock(Protocol):
    def now(self) -> datetime:
        """The time now, aware."""
        ...

    async def sleep_until(self, when: datetime) -> None:
        """Return at `when` or soon after."""
        ...


class SystemClock:
    """The wall clock, in IST."""

    def now(self) -> datetime:
        return datetime.now(IST)

    async def sleep_until(self, when: datetime) -> None:
        left = (when - self.now()).total_seconds()
        while left > 0:  # in slices, each against the clock again: it may have been set
            await asyncio.sleep(min(left, _MAX_SLEEP_S))
            left = (when - self.now()).total_seconds()


@dataclass
class _Memory:
    """What the schedule knows between its reads of `schedule_runs`."""

    done: set[tuple[date, str, str]] = field(default_factory=set)  # (day, phase, step)
    last: dict[str, StepRun] = field(default_factory=dict)  # by step
    since: date | None = None
    running: str | None = None
    trading_days: frozenset[date] = frozenset()  # around today, as the check said


class DailySchedule:
    """Runs `steps` (each phase's in the order given) on the trading days `trading_day` names.

    `trading_day` may block (read a calendar from the database): it is called in a thread.
    """

    def __init__(
        self,
        steps: Sequence[Step],
        connect: Connect,
        settings: Settings,
        *,
        not_registered: Sequence[str] = (),
        clock: Clock | None = None,
        trading_day: TradingDay = weekday_trading_day,
    ) -> None:
        self._steps = list(steps)
        self._connect = connect
        self._settings = settings
        self._times = PhaseTimes(settings.preopen_at, settings.postclose_at)
        self._not_registered = list(not_registered)
        self._clock = clock or SystemClock()
        self._trading_day = trading_day
        self._memory = _Memory()

    @property
    def steps(self) -> tuple[Step, ...]:
        """The registered steps, in the order they run."""
        return tuple(self._steps)

    async def run_forever(self) -> None:
        """Run what is due, sleep until the next phase, forever. A database that cannot be
        read is waited for: nothing is run blind, since the record decides what is done."""
        if self._not_registered:
            log.info("daily schedule: no step registered for %s", ", ".join(self._not_registered))
        unreadable = self._backoff()
        while True:
            try:
                await self._read_record()
            except psycopg.Error as error:
                log.warning("daily schedule: cannot read its record, waiting: %s", error)
                await self._sleep(unreadable.delay())
                continue
            unreadable.reset()
            due = self._due()
            for run in due:
                await self._run_phase(run)
            if not due:
                await self._clock.sleep_until(self._wake_at())

    def status(self) -> ScheduleStatus:
        """From memory (the last read of the record and the attempts since)."""
        times = self._times
        # Once for all the steps: the ingest publishes this every half second, and working
        # out the due and next runs (calendar arithmetic) per step was most of its cost.
        due = self._due()
        upcoming = self._next_runs()
        return ScheduleStatus(
            preopen_at=f"{times.preopen:%H:%M} IST",
            postclose_at=f"{times.postclose:%H:%M} IST",
            running=self._memory.running,
            steps=[self._step_status(step, due, upcoming) for step in self._steps],
            not_registered=list(self._not_registered),
        )

    # --- the phases ---------------------------------------------------------------------

    async def _run_phase(self, run: PhaseRun) -> None:
        log.info("daily schedule: %s of %s", run.phase.value, run.day)
        for step in self._steps:
            if step.phase is run.phase and not self._is_done(run.day, step):
                await self._run_step(run.day, step)

    async def _run_step(self, day: date, step: Step) -> None:
        """Attempts until one succeeds or the attempts are spent, each one recorded."""
        settings = self._settings
        attempt = await self._read(
            lambda conn: runs.attempts_made(conn, day, step.phase, step.name)
        )
        backoff = self._backoff()
        while True:
            attempt += 1
            self._memory.running = f"{step.phase.value} {step.name} {day}"
            started = self._clock.now()
            outcome: Outcome
            try:
                result = str(await step.run(day))
                outcome = "ok"
            except Exception as error:  # any failure of a step is reported, none lost
                result = f"{type(error).__name__}: {error}"
                outcome = "retrying" if attempt < settings.schedule_step_attempts else "failed"
            finally:
                self._memory.running = None
            done = StepRun(
                day,
                step.phase.value,
                step.name,
                attempt,
                outcome,
                result.strip()[:_RESULT_CHARS],
                started,
                self._clock.now(),
            )
            await self._record(done)
            if outcome != "retrying":
                return
            await self._sleep(backoff.delay())

    async def _record(self, run: StepRun) -> None:
        """Keep the attempt in memory (it counts even when the database is away) and in the
        record, and say what happened in the log."""
        memory = self._memory
        memory.last[run.step] = run
        if run.outcome != "retrying":
            memory.done.add((run.day, run.phase, run.step))
        level = {"ok": logging.INFO, "retrying": logging.WARNING}.get(run.outcome, logging.ERROR)
        log.log(
            level,
            "daily schedule: %s %s of %s, attempt %d: %s: %s",
            run.phase,
            run.step,
            run.day,
            run.attempt,
            run.outcome,
            run.result,
        )
        try:
            await self._read(lambda conn: runs.record(conn, run))
        except psycopg.Error as error:
            log.error("daily schedule: could not record %s of %s: %s", run.step, run.day, error)

    # --- what is due --------------------------------------------------------------------

    async def _read_record(self) -> None:
        today = ist_day(self._clock.now())
        first = await self._read(runs.first_day)
        since = min(first or today, self._memory.since or today)
        done = await self._read(lambda conn: runs.finished_steps(conn, since))
        last = await self._read(runs.last_runs)
        window = [
            today + timedelta(days=n)
            for n in range(-self._settings.schedule_catch_up_days, LOOKAHEAD_DAYS + 1)
        ]
        # The check may read a calendar from the database: asked here, off the event loop,
        # once per read, so that status() and the plan only look at a set.
        trading = await asyncio.to_thread(lambda: frozenset(filter(self._trading_day, window)))
        memory = self._memory
        memory.trading_days = trading
        memory.since = since
        memory.done |= done
        memory.last = {**last, **{n: r for n, r in memory.last.items() if _newer(r, last.get(n))}}

    def _done_phases(self) -> set[tuple[date, Phase]]:
        """(day, phase) of the days the plan looks at whose every step is done; a phase
        with no step is always done."""
        today = ist_day(self._clock.now())
        days = [today - timedelta(days=n) for n in range(self._settings.schedule_catch_up_days + 1)]
        return {
            (day, phase)
            for day in days
            for phase in Phase
            if all(self._is_done(day, step) for step in self._steps if step.phase is phase)
        }

    def _is_done(self, day: date, step: Step) -> bool:
        return (day, step.phase.value, step.name) in self._memory.done

    def _due(self, now: datetime | None = None) -> list[PhaseRun]:
        now = now or self._clock.now()
        return due_runs(
            now,
            self._times,
            self._done_phases(),
            self._memory.trading_days.__contains__,
            since=self._memory.since or ist_day(now),
            catch_up_days=self._settings.schedule_catch_up_days,
        )

    def _next_runs(self) -> dict[Phase, PhaseRun | None]:
        """Each phase's next run; None where no trading day is in sight."""
        now, trading_days = self._clock.now(), self._memory.trading_days.__contains__
        return {phase: next_run(now, self._times, phase, trading_days) for phase in Phase}

    def _wake_at(self) -> datetime:
        """The next phase's time; a day ahead when no trading day is in sight."""
        upcoming = [run.at for run in self._next_runs().values() if run is not None]
        return min(upcoming, default=self._clock.now() + timedelta(days=1))

    def _step_status(
        self, step: Step, due: list[PhaseRun], upcoming: dict[Phase, PhaseRun | None]
    ) -> StepStatus:
        last = self._memory.last.get(step.name)
        overdue = [run for run in due if run.phase is step.phase]
        next_run = overdue[0] if overdue else upcoming[step.phase]
        return StepStatus(
            step=step.name,
            phase=step.phase.value,
            last_day=last.day if last else None,
            last_outcome=last.outcome if last else None,
            last_result=last.result if last else None,
            last_attempt=last.attempt if last else None,
            last_finished_at=last.finished_at if last else None,
            next_run_at=next_run.at if next_run else None,
        )

    # --- plumbing -----------------------------------------------------------------------

    def _backoff(self) -> Backoff:
        settings = self._settings
        return Backoff(settings.schedule_retry_initial_s, settings.schedule_retry_max_s)

    async def _sleep(self, seconds: float) -> None:
        await self._clock.sleep_until(self._clock.now() + timedelta(seconds=seconds))

    async def _read(self, query: Callable[[psycopg.Connection], T]) -> T:
        def run() -> T:
            with self._connect() as conn:
                return query(conn)

        return await asyncio.to_thread(run)


def _newer(run: StepRun, than: StepRun | None) -> bool:
    return than is None or run.finished_at > than.finished_at
