"""The `schedule_runs` table (sql/016_schedule.sql): every attempt of every step of the daily
schedule, so that a restart knows what is done and the status shows each step's last run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

import psycopg

Outcome = Literal["ok", "retrying", "failed"]
# Outcomes that close a step for its day: it is not run again, even after a restart.
FINAL: tuple[Outcome, ...] = ("ok", "failed")


@dataclass(frozen=True)
class StepRun:
    """One attempt of one step, as recorded."""

    day: date
    phase: str
    step: str
    attempt: int
    outcome: Outcome
    result: str
    started_at: datetime
    finished_at: datetime


_COLUMNS = "day, phase, step, attempt, outcome, result, started_at, finished_at"


def record(conn: psycopg.Connection, run: StepRun) -> None:
    conn.execute(
        f"INSERT INTO schedule_runs ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        [
            run.day,
            run.phase,
            run.step,
            run.attempt,
            run.outcome,
            run.result,
            run.started_at,
            run.finished_at,
        ],
    )


def finished_steps(conn: psycopg.Connection, since: date) -> set[tuple[date, str, str]]:
    """(day, phase, step) of every step closed for its day on `since` or later."""
    rows = conn.execute(
        "SELECT DISTINCT day, phase, step FROM schedule_runs WHERE day >= %s AND outcome = ANY(%s)",
        [since, list(FINAL)],
    ).fetchall()
    return {(day, phase, step) for day, phase, step in rows}


def attempts_made(conn: psycopg.Connection, day: date, phase: str, step: str) -> int:
    """How many attempts of the step were recorded for the day (a restart carries on)."""
    row = conn.execute(
        "SELECT coalesce(max(attempt), 0) FROM schedule_runs"
        " WHERE day = %s AND phase = %s AND step = %s",
        [day, phase, step],
    ).fetchone()
    return row[0] if row else 0


def first_day(conn: psycopg.Connection) -> date | None:
    """The first day the schedule ever ran in this database; None before it has."""
    row = conn.execute("SELECT min(day) FROM schedule_runs").fetchone()
    return row[0] if row else None


def last_runs(conn: psycopg.Connection) -> dict[str, StepRun]:
    """The latest attempt of each step, by step name."""
    rows = conn.execute(
        f"SELECT DISTINCT ON (step) {_COLUMNS} FROM schedule_runs"
        " ORDER BY step, finished_at DESC, attempt DESC"
    ).fetchall()
    return {row[2]: StepRun(*row) for row in rows}
