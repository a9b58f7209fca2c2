"""The daily schedule on a simulated clock, against a real database: its phases' steps in
order on trading days, retries and their record, restarts that neither miss nor repeat a
phase, and the real steps (the seal rebuilds a day's bars, the resubscribe renews the feed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import date, datetime, time, timedelta

import psycopg
import pytest

from core.config import Settings
from core.ist import IST
from ingest.jobs.rollup import BarRollup
from ingest.jobs.schedule.plan import (
    Phase,
    PhaseTimes,
    due_runs,
    next_run,
    weekday_trading_day,
)
from ingest.jobs.schedule.runner import DailySchedule
from ingest.jobs.schedule.steps import PHASE_STEPS, ordered_steps, service_steps
from store.bars import BAR_VIEWS, LIVE_VIEWS, Interval, refresh_bars
from store.instruments import default_sample_path
from tests.test_bars import copy_ticks, expected_bars, generate_day, trading_day
from tests.test_client import INFY, NIFTY, TCS
from tests.test_subscriptions import load, simulator, stack

FRIDAY = date(2026, 1, 9)
MONDAY = date(2026, 1, 12)
PREOPEN = list(PHASE_STEPS[Phase.PREOPEN])
POSTCLOSE = list(PHASE_STEPS[Phase.POSTCLOSE])
SETTINGS = Settings(
    preopen_at=time(8, 30),
    postclose_at=time(15, 45),
    schedule_step_attempts=3,
    schedule_retry_initial_s=30,
    schedule_retry_max_s=600,
)


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), IST)


class SimulatedClock:
    """Time that moves only when the test says. The schedule sleeps through it at once up to
    the limit `run_until` sets, and parks when it would sleep past it."""

    def __init__(self, start: datetime) -> None:
        self._now = self._limit = start
        self._moved = asyncio.Event()
        self._parked = asyncio.Event()

    def now(self) -> datetime:
        return self._now

    async def sleep_until(self, when: datetime) -> None:
        while when > self._limit:
            self._now = self._limit
            self._moved.clear()
            self._parked.set()
            await self._moved.wait()
        self._now = max(self._now, when)
        await asyncio.sleep(0)

    def advance(self, limit: datetime) -> None:
        """Let the schedule run up to `limit`, without waiting for it."""
        self._limit = limit
        self._parked.clear()
        self._moved.set()

    async def run_until(self, limit: datetime) -> None:
        """Let the schedule run up to `limit`; return once it sleeps past it."""
        self.advance(limit)
        await asyncio.wait_for(self._parked.wait(), 30)


class Calls:
    """Steps that say who ran, when and for which day."""

    def __init__(self, clock: SimulatedClock) -> None:
        self.clock = clock
        self.made: list[tuple[str, datetime, date]] = []

    def step(self, name: str, fail_first: int = 0) -> Callable[[date], asyncio.Future[str]]:
        async def run(day: date) -> str:
            self.made.append((name, self.clock.now(), day))
            if sum(made == name for made, _, _ in self.made) <= fail_first:
                raise RuntimeError(f"{name} is not reachable")
            return f"{name} done"

        return run  # type: ignore[return-value]

    def names(self) -> list[str]:
        return [name for name, _, _ in self.made]


@contextlib.asynccontextmanager
async def running(schedule: DailySchedule) -> AsyncIterator[asyncio.Task[None]]:
    """The schedule as the ingest runs it, cancelled afterwards (as at a stop or a crash)."""
    task = asyncio.create_task(schedule.run_forever())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def schedule_of(db_url: str, clock: SimulatedClock, functions: dict, **settings: object):
    steps, empty = ordered_steps(functions)
    return DailySchedule(
        steps,
        functools.partial(psycopg.connect, db_url),
        replace(SETTINGS, **settings),
        not_registered=empty,
        clock=clock,
    )


def recorded(db_url: str) -> list[tuple]:
    """(day, phase, step, attempt, outcome, result, started_at) in the order they ran."""
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT day, phase, step, attempt, outcome, result, started_at FROM schedule_runs"
            " ORDER BY finished_at, started_at"
        ).fetchall()


def test_steps_run_in_order_at_their_phase_and_never_on_a_weekend(db_url: str) -> None:
    clock = SimulatedClock(at(FRIDAY, 7))
    calls = Calls(clock)
    schedule = schedule_of(db_url, clock, {name: calls.step(name) for name in PREOPEN + POSTCLOSE})

    async def main() -> None:
        async with running(schedule):
            await clock.run_until(at(FRIDAY, 8, 29))
            assert calls.made == []
            await clock.run_until(at(FRIDAY, 12))
            assert calls.made == [(name, at(FRIDAY, 8, 30), FRIDAY) for name in PREOPEN]
            await clock.run_until(at(FRIDAY, 23, 59))
            assert calls.names() == PREOPEN + POSTCLOSE
            assert {when for _, when, _ in calls.made[4:]} == {at(FRIDAY, 15, 45)}
            await clock.run_until(at(MONDAY, 8))  # Saturday and Sunday pass
            assert len(calls.made) == 8
            status = schedule.status()
            await clock.run_until(at(MONDAY, 9))
            assert calls.made[8:] == [(name, at(MONDAY, 8, 30), MONDAY) for name in PREOPEN]

        assert status.not_registered == []
        assert [step.step for step in status.steps] == PREOPEN + POSTCLOSE
        for step in status.steps:
            assert (step.last_day, step.last_outcome) == (FRIDAY, "ok")
            assert step.last_result == f"{step.step} done"
            phase_time = at(MONDAY, 8, 30) if step.phase == "preopen" else at(MONDAY, 15, 45)
            assert step.next_run_at == phase_time

    asyncio.run(main())
    runs = recorded(db_url)
    assert [(day, step, outcome) for day, _, step, _, outcome, _, _ in runs] == [
        *[(FRIDAY, name, "ok") for name in PREOPEN + POSTCLOSE],
        *[(MONDAY, name, "ok") for name in PREOPEN],
    ]


def test_a_failing_step_is_retried_and_reported_and_the_phase_goes_on(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Decided: a failure does not stop its phase. `token` fails twice and then works;
    `audit` never works and is given up after 3 attempts; the steps after each still run."""
    clock = SimulatedClock(at(FRIDAY, 7))
    calls = Calls(clock)
    functions = {name: calls.step(name) for name in PREOPEN + POSTCLOSE}
    functions["token"] = calls.step("token", fail_first=2)
    functions["audit"] = calls.step("audit", fail_first=99)
    schedule = schedule_of(db_url, clock, functions)

    async def main() -> None:
        async with running(schedule):
            await clock.run_until(at(FRIDAY, 23))
            status = {step.step: step for step in schedule.status().steps}
            await clock.run_until(at(MONDAY, 8))  # given up is given up: not tried again
        return status

    with caplog.at_level(logging.WARNING, logger="ingest.jobs.schedule.runner"):
        status = asyncio.run(main())
    assert calls.names() == [
        "instruments",
        "token",
        "token",
        "token",
        "calendar",
        "resubscribe",
        "seal",
        "audit",
        "audit",
        "audit",
        "archive",
        "retention",
    ]
    runs = {
        (step, attempt): (outcome, result, started)
        for _, _, step, attempt, outcome, result, started in recorded(db_url)
    }
    assert runs["token", 1][:2] == ("retrying", "RuntimeError: token is not reachable")
    assert runs["token", 2][0] == "retrying"
    assert runs["token", 3][:2] == ("ok", "token done")
    assert [runs["audit", n][0] for n in (1, 2, 3)] == ["retrying", "retrying", "failed"]
    # Doubling delays with jitter: 15-30 s, then 30-60 s.
    first_wait = runs["token", 2][2] - runs["token", 1][2]
    second_wait = runs["token", 3][2] - runs["token", 2][2]
    assert timedelta(seconds=15) <= first_wait <= timedelta(seconds=30)
    assert timedelta(seconds=30) <= second_wait <= timedelta(seconds=60)
    assert (status["audit"].last_outcome, status["audit"].last_attempt) == ("failed", 3)
    assert status["audit"].last_result == "RuntimeError: audit is not reachable"
    assert status["token"].last_outcome == "ok"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"daily schedule: postclose audit of {FRIDAY}, attempt 3: failed:"
        " RuntimeError: audit is not reachable"
    ]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4  # two retries of each


def test_a_restart_runs_a_missed_phase_once_and_never_twice(db_url: str) -> None:
    made: list[str] = []
    entered = asyncio.Event()

    def step(name: str, hang: bool = False):
        async def run(day: date) -> str:
            made.append(name)
            if hang:
                entered.set()
                await asyncio.Event().wait()  # cut off by the crash below
            return f"{name} of {day}"

        return run

    async def main() -> None:
        # The ingest runs at 08:30 and dies during `calendar`.
        clock = SimulatedClock(at(FRIDAY, 7))
        functions = {name: step(name, hang=name == "calendar") for name in PREOPEN}
        async with running(schedule_of(db_url, clock, functions)):
            clock.advance(at(FRIDAY, 9))
            await asyncio.wait_for(entered.wait(), 30)
        assert made == ["instruments", "token", "calendar"]

        # Restarted at 10:00: the rest of the pre-open, once.
        clock = SimulatedClock(at(FRIDAY, 10))
        functions = {name: step(name) for name in PREOPEN}
        async with running(schedule_of(db_url, clock, functions)):
            await clock.run_until(at(FRIDAY, 11))
        assert made == ["instruments", "token", "calendar", "calendar", "resubscribe"]

        # Restarted again: nothing is due until the post-close (no step here) and Monday.
        clock = SimulatedClock(at(FRIDAY, 12))
        schedule = schedule_of(db_url, clock, functions)
        async with running(schedule):
            await clock.run_until(at(FRIDAY, 13))
            status = schedule.status()
        assert len(made) == 5
        assert status.not_registered == POSTCLOSE
        for item in status.steps:
            assert (item.last_day, item.last_outcome) == (FRIDAY, "ok")
            assert item.last_result == f"{item.step} of {FRIDAY}"
            assert item.last_finished_at is not None
            assert item.last_finished_at.date() == FRIDAY
            assert item.next_run_at == at(MONDAY, 8, 30)

    asyncio.run(main())
    assert [(step, outcome) for _, _, step, _, outcome, _, _ in recorded(db_url)] == [
        (name, "ok") for name in PREOPEN
    ]


def test_the_plan_catches_up_a_missed_post_close_but_not_a_missed_pre_open() -> None:
    times = PhaseTimes(time(8, 30), time(15, 45))
    now = at(MONDAY, 7)  # the ingest was down since Friday morning
    plan = functools.partial(due_runs, now, times, trading_day=weekday_trading_day, catch_up_days=3)
    assert [(run.day, run.phase) for run in plan(set(), since=FRIDAY)] == [
        (FRIDAY, Phase.POSTCLOSE)
    ]
    assert plan({(FRIDAY, Phase.POSTCLOSE)}, since=FRIDAY) == []
    assert plan(set(), since=MONDAY) == []  # nothing before the schedule's first day
    assert next_run(now, times, Phase.PREOPEN, weekday_trading_day).at == at(MONDAY, 8, 30)
    saturday = at(FRIDAY + timedelta(days=1), 9)
    assert next_run(saturday, times, Phase.POSTCLOSE, weekday_trading_day).at == at(MONDAY, 15, 45)


def materialized(conn: psycopg.Connection, interval: Interval) -> list[tuple]:
    """The live bars stored for `interval`, not computed on read: the Apache edition's store
    table, or Community's materialization hypertable (of the `_live` continuous aggregate)."""
    relation = f"{BAR_VIEWS[interval]}_store"
    found = conn.execute(
        "SELECT format('%%I.%%I', materialization_hypertable_schema,"
        " materialization_hypertable_name)"
        " FROM timescaledb_information.continuous_aggregates WHERE view_name = %s",
        [LIVE_VIEWS[interval]],
    ).fetchone()
    if found is not None:
        relation = found[0]
    return sorted(
        conn.execute(
            f"SELECT instrument_key, bucket, open, high, low, close, volume, tick_count"
            f" FROM {relation}"
        ).fetchall()
    )


def expected_live_bars(ticks: list) -> dict[str, list[tuple]]:
    """expected_bars without the `source` column, which the stored live bars do not carry."""
    return {view: [row[:-1] for row in rows] for view, rows in expected_bars(ticks).items()}


def test_the_seal_step_rebuilds_the_bars_of_the_day(edition_db_url: str) -> None:
    """The day is rolled up while it trades; then a correction deletes one instrument's
    ticks, which no plain rollup sees (it looks at inserts only); the seal rebuilds the day
    as its ticks stand after the close."""
    day = trading_day()
    ticks = generate_day(day, seed=12)
    corrected = "NSE_EQ|INE009A01021"
    with psycopg.connect(edition_db_url, autocommit=True) as conn:
        copy_ticks(conn, ticks)
        refresh_bars(conn)
        conn.execute("DELETE FROM ticks WHERE instrument_key = %s", [corrected])
        assert materialized(conn, "1m") == expected_live_bars(ticks)["ohlc_1m"]
    clock = SimulatedClock(at(day, 15))
    rollup = BarRollup(edition_db_url, interval_s=5)
    schedule = schedule_of(edition_db_url, clock, {"seal": rollup.seal})

    async def main() -> None:
        async with running(schedule):
            await clock.run_until(at(day, 16))

    asyncio.run(main())
    with psycopg.connect(edition_db_url) as conn:
        stored = {view: materialized(conn, interval) for interval, view in BAR_VIEWS.items()}
    assert stored == expected_live_bars([t for t in ticks if t.instrument_key != corrected])
    [(_, phase, step, _, outcome, result, started)] = recorded(edition_db_url)
    assert (phase, step, outcome, started) == ("postclose", "seal", "ok", at(day, 15, 45))
    assert str(day) in result


def test_the_resubscribe_step_renews_what_the_feed_lost(db_url: str) -> None:
    """A key left pending (a request a crash cut off) is subscribed by the pre-open."""
    load(db_url, default_sample_path())
    clock = SimulatedClock(at(FRIDAY, 8))

    async def main() -> None:
        async with simulator() as sim, stack(db_url, sim.url) as (client, manager, _):
            await client.connect()
            await manager.subscribe_to_symbols(["INFY", "Nifty 50"], "full")
            with psycopg.connect(db_url) as conn:
                conn.execute(
                    "INSERT INTO subscriptions (instrument_key, mode, status)"
                    " VALUES (%s, 'ltpc', 'pending')",
                    [TCS],
                )
            assert TCS not in client.subscribed_keys
            functions = service_steps(subscriptions=manager, rollup=BarRollup(db_url, 5))
            async with running(schedule_of(db_url, clock, functions)):
                await clock.run_until(at(FRIDAY, 9))
            assert client.get_subscribed_symbols() == {INFY: "full", NIFTY: "full", TCS: "ltpc"}

    asyncio.run(main())
    [(_, phase, step, _, outcome, result, _)] = recorded(db_url)
    assert (phase, step, outcome) == ("preopen", "resubscribe", "ok")
    assert result == f"3 subscriptions renewed for {FRIDAY}"
