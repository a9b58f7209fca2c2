"""The daily schedule's steps, all registered here: which steps each phase has, in which
order, which function does each, and which days are trading days.

A step is a name and an async function of the trading day that returns a short report
(ingest/jobs/schedule/runner.py records it); a step that cannot do its work raises, and the schedule
retries and reports it. A slot with no function is not run and the status lists it under
`not_registered`: a step switched off in the settings (the audit, the archive, retention
kept forever) is left out that way, never pretended.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

import psycopg

from core.config import Settings
from ingest.jobs.audit import run_audit
from ingest.jobs.calendar import CalendarKeeper
from ingest.jobs.instrument_refresh import RefreshReport
from ingest.jobs.rollup import BarRollup
from ingest.jobs.schedule.plan import Phase
from ingest.jobs.schedule.runner import Clock, Connect, DailySchedule, Step, StepFunction
from ingest.status import TokenStatus
from ingest.subscriptions import SubscriptionManager
from ingest.tokens import TokenKeeper
from store.archive import archive_finished_days
from store.calendar import trading_sessions
from store.editions import Edition
from store.retention import apply_retention

# Each phase's steps, in the order they run.
PHASE_STEPS: dict[Phase, tuple[str, ...]] = {
    # The instrument master first: the calendar and the subscriptions follow from it.
    Phase.PREOPEN: ("instruments", "token", "calendar", "resubscribe"),
    # The last rollup first: the audit checks sealed bars; retention last, after the archive.
    Phase.POSTCLOSE: ("seal", "audit", "archive", "retention"),
}


def ordered_steps(functions: Mapping[str, StepFunction]) -> tuple[list[Step], list[str]]:
    """The steps `functions` gives, in PHASE_STEPS' order, and the slots it leaves empty."""
    slots = [(phase, name) for phase, names in PHASE_STEPS.items() for name in names]
    unknown = set(functions) - {name for _, name in slots}
    if unknown:
        raise ValueError(f"no slot in the daily schedule for {', '.join(sorted(unknown))}")
    steps = [Step(name, phase, functions[name]) for phase, name in slots if name in functions]
    return steps, [name for _, name in slots if name not in functions]


def service_steps(
    *, subscriptions: SubscriptionManager, rollup: BarRollup
) -> dict[str, StepFunction]:
    """The functions of the steps on the feed and the bars, by slot."""
    return {
        "resubscribe": functools.partial(resubscribe, subscriptions),
        "seal": rollup.seal,
    }


@dataclass(frozen=True)
class Upkeep:
    """What the upkeep steps work on, from the running ingest."""

    database_url: str
    edition: Edition
    tokens: TokenKeeper
    token_state: Callable[[], str | None]  # the feed client's verdict on its token
    calendar: CalendarKeeper
    refresh_instruments: Callable[[], Awaitable[RefreshReport]]


def upkeep_steps(settings: Settings, upkeep: Upkeep) -> dict[str, StepFunction]:
    """The functions of the steps that keep the store current and bounded, by slot; the
    ones the settings switch off are left out."""
    steps: dict[str, StepFunction] = {
        "instruments": functools.partial(refresh_master, upkeep),
        "token": functools.partial(check_token, upkeep),
        "calendar": functools.partial(load_calendar, upkeep),
    }
    if settings.audit_after_close:
        steps["audit"] = functools.partial(audit_day, upkeep)
    if settings.archive_ticks:
        steps["archive"] = functools.partial(archive_days, settings, upkeep)
    if settings.ticks_retention_days or settings.bars_retention_days:
        steps["retention"] = functools.partial(apply_retention_now, settings, upkeep)
    return steps


def daily_schedule(
    settings: Settings,
    connect: Connect,
    *,
    subscriptions: SubscriptionManager,
    rollup: BarRollup,
    upkeep: Upkeep,
    clock: Clock | None = None,
) -> DailySchedule:
    """The ingest's schedule of its steps, on the calendar's trading days."""
    functions = service_steps(subscriptions=subscriptions, rollup=rollup)
    steps, empty = ordered_steps({**functions, **upkeep_steps(settings, upkeep)})
    return DailySchedule(
        steps,
        connect,
        settings,
        not_registered=empty,
        clock=clock,
        trading_day=functools.partial(calendar_trading_day, connect),
    )


def calendar_trading_day(connect: Connect, day: date) -> bool:
    """NSE trades `day`: a session in the stored calendar (Monday to Friday where the
    calendar has not got that day yet: store/calendar.py)."""
    with connect() as conn:
        return bool(trading_sessions(conn, day, "NSE"))


async def resubscribe(subscriptions: SubscriptionManager, day: date) -> str:
    """The feed carries again everything the subscriptions table holds subscribed or
    pending, each in its mode: keys the feed lost or never confirmed are sent again."""
    count = await subscriptions.resume()
    return f"{count} subscriptions renewed for {day}"


async def refresh_master(upkeep: Upkeep, day: date) -> str:
    """The day's instrument master; the F&O universe's subscriptions follow it."""
    report = await upkeep.refresh_instruments()
    return "; ".join(report.lines())


class TokenProblem(RuntimeError):
    """The feed has no usable token: the step fails, and the status says so before the open."""


def token_problem(status: TokenStatus, now: datetime) -> str | None:
    """Why the token in `status` will not carry the day's session, or None."""
    if status.state in ("missing", "rejected"):
        return (
            f"the Upstox token ({status.source}) is {status.state}: store a new one with"
            " `tickvault token set` or `tickvault login`"
        )
    if status.expires_at is not None and datetime.fromisoformat(status.expires_at) <= now:
        return f"the daily token expired at {status.expires_at}: `tickvault login` for today's"
    return None


async def check_token(upkeep: Upkeep, day: date) -> str:
    """Before the open: is there a token, has Upstox not refused it, and does it outlive the
    session? A problem found here leaves time to store a new one."""
    status = upkeep.tokens.status(upkeep.token_state())
    problem = token_problem(status, datetime.now(UTC))
    if problem is not None:
        raise TokenProblem(problem)
    expiry = f", expires {status.expires_at}" if status.expires_at else ""
    return f"{status.source} token {status.state}{expiry}"


async def load_calendar(upkeep: Upkeep, day: date) -> str:
    stored = await upkeep.calendar.refresh(day)
    return f"{stored} exchange days of the calendar stored from {day}"


async def audit_day(upkeep: Upkeep, day: date) -> str:
    """Our bars of the day against Upstox's candles, kept in audit_results."""
    # Upstox's address, or the simulator's when it is the feed, with the token of the moment.
    report = await run_audit(upkeep.database_url, upkeep.tokens.access(), day)
    verdicts = [audit.bars_verdict for audit in report.instruments]
    counted = ", ".join(f"{verdicts.count(v)} {v}" for v in sorted(set(verdicts))) or "no bars"
    return f"audit of {day} ({report.run_id}): {counted}"


async def archive_days(settings: Settings, upkeep: Upkeep, day: date) -> str:
    """Every finished day not archived yet, to Parquet (retention waits for it)."""

    def archive() -> list[str]:
        with psycopg.connect(upkeep.database_url) as conn:
            done = archive_finished_days(conn, settings.archive_root)
        return [f"{item.day} {item.action} ({item.row_count} rows)" for item in done]

    archived = await asyncio.to_thread(archive)
    return "archived " + ", ".join(archived) if archived else "every finished day is archived"


async def apply_retention_now(settings: Settings, upkeep: Upkeep, day: date) -> str:
    """Tick chunks past their period whose days read back from the archive match the
    database (store/retention.py; under the app's role too), then bars as the role may."""

    def apply() -> str:
        with psycopg.connect(upkeep.database_url, autocommit=True) as conn:
            result = apply_retention(
                conn,
                upkeep.edition,
                settings.ticks_retention_days,
                settings.bars_retention_days,
                settings.archive_root if settings.archive_ticks else None,
            )
        kept = "".join(f", kept {day}: {why}" for day, why in sorted(result.kept.items()))
        bars = result.bars_skipped or (
            f"{result.bar_chunks_dropped} bar chunks and {result.backfilled_minutes_deleted}"
            " backfilled minutes dropped"
        )
        return (
            f"{result.tick_chunks_dropped} tick chunks dropped{kept}; {bars};"
            f" scheduled by {result.scheduled_by}"
        )

    return await asyncio.to_thread(apply)
