"""The daily schedule's steps, all registered here: which steps each phase has, in which
order, which function does each, and which days are trading days.

A step is a name and an async function of the trading day that returns a short report
(ingest/schedule.py records it). A slot below with no function in `service_steps` is not run
and the status lists it under `not_registered`: a feature not built yet is never pretended.
To add one, give its function in `service_steps` under its slot's name.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import date

from ingest.config import Settings
from ingest.rollup import BarRollup
from ingest.schedule import Clock, Connect, DailySchedule, Step, StepFunction
from ingest.schedule_plan import Phase, weekday_trading_day
from ingest.subscriptions import SubscriptionManager

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
    """The functions of the ingest's own steps, by slot."""
    return {
        "resubscribe": functools.partial(resubscribe, subscriptions),
        "seal": rollup.seal,
    }


def daily_schedule(
    settings: Settings,
    connect: Connect,
    *,
    subscriptions: SubscriptionManager,
    rollup: BarRollup,
    clock: Clock | None = None,
) -> DailySchedule:
    """The ingest's schedule of its steps, on Monday-to-Friday trading days."""
    steps, empty = ordered_steps(service_steps(subscriptions=subscriptions, rollup=rollup))
    return DailySchedule(
        steps,
        connect,
        settings,
        not_registered=empty,
        clock=clock,
        trading_day=weekday_trading_day,
    )


async def resubscribe(subscriptions: SubscriptionManager, day: date) -> str:
    """The feed carries again everything the subscriptions table holds subscribed or
    pending, each in its mode: keys the feed lost or never confirmed are sent again."""
    count = await subscriptions.resume()
    return f"{count} subscriptions renewed for {day}"
