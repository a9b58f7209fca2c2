"""The daily schedule's arithmetic: given the time now (IST) and what has run, what is due and
when the next phase comes. No clock, no database, no I/O: the runner (runner.py) feeds it
and acts on its answer, and the tests drive it with any instant they like.

Rules, written here only:
- A phase (pre-open, post-close) runs once per trading day, at its IST time or as soon after
  as the ingest runs: an ingest started after the time runs the missed phase at once.
- A pre-open belongs to its day only: one missed on an earlier day is superseded by today's
  (refreshing yesterday's instrument master is no use today). A missed post-close is still
  due on later days (a day's ticks still need sealing and archiving), back `catch_up_days`
  but never before `since`, the first day this database's schedule ever ran: a fresh install
  does not seal and archive days it never saw.
- Due phases run oldest first, pre-open before post-close on the same day.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum

from core.ist import IST, ist_day

LOOKAHEAD_DAYS = 15  # the longest run of market holidays and weekends, with room to spare


class Phase(StrEnum):
    PREOPEN = "preopen"
    POSTCLOSE = "postclose"


# Whether the market trades on a day. One small function so that a calendar read from the
# database can take its place (ingest/jobs/schedule/steps.py chooses).
TradingDay = Callable[[date], bool]


def weekday_trading_day(day: date) -> bool:
    """Monday to Friday: the market's week, holidays not known."""
    return day.weekday() < 5


@dataclass(frozen=True)
class PhaseTimes:
    """The IST time of day of each phase."""

    preopen: time
    postclose: time

    def at(self, day: date, phase: Phase) -> datetime:
        moment = self.preopen if phase is Phase.PREOPEN else self.postclose
        return datetime.combine(day, moment, IST)


@dataclass(frozen=True, order=True)
class PhaseRun:
    """One phase of one trading day, at its scheduled instant (ordered by it)."""

    at: datetime
    day: date
    phase: Phase


def due_runs(
    now: datetime,
    times: PhaseTimes,
    done: Collection[tuple[date, Phase]],
    trading_day: TradingDay,
    *,
    since: date,
    catch_up_days: int,
) -> list[PhaseRun]:
    """The phases whose time has come and that are not done, in the order to run them."""
    today = ist_day(now)
    day = max(since, today - timedelta(days=catch_up_days))
    runs = []
    while day <= today:
        if trading_day(day):
            for phase in Phase:
                run = PhaseRun(times.at(day, phase), day, phase)
                superseded = phase is Phase.PREOPEN and day != today
                if run.at <= now and (day, phase) not in done and not superseded:
                    runs.append(run)
        day += timedelta(days=1)
    return sorted(runs)


def next_run(
    now: datetime, times: PhaseTimes, phase: Phase, trading_day: TradingDay
) -> PhaseRun | None:
    """The first scheduled instant of `phase` after `now`; None when no trading day comes
    within the look-ahead (a calendar with no sessions loaded)."""
    today = ist_day(now)
    for offset in range(LOOKAHEAD_DAYS + 1):
        day = today + timedelta(days=offset)
        run = PhaseRun(times.at(day, phase), day, phase)
        if run.at > now and trading_day(day):
            return run
    return None
