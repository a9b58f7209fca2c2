"""The daily schedule of a running ingest: every slot has its step, each step does its work
on the ingest's own parts (simulator feed, real database), and trading days come from the
stored market calendar."""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import psycopg

from core.config import Settings
from core.ist import ist_today
from ingest.jobs.schedule.plan import Phase
from ingest.jobs.schedule.steps import PHASE_STEPS, calendar_trading_day, token_problem
from ingest.service import WebSocketService
from ingest.status import TokenStatus
from store.calendar import save_day
from tests.conftest import DbServer
from tests.test_api import sample_database

# Phase times no test run reaches: the running schedule stays idle while the steps are run
# here one by one (a fresh database has no earlier day to catch up on).
NEVER = time(23, 59, 59)


async def _run_every_step(settings: Settings, url: str) -> tuple[dict[str, str], list[str]]:
    service = WebSocketService(settings, url)
    await service.start()
    try:
        for _ in range(300):  # ticks in the database, so there is something to seal and audit
            writer = service.status().writer
            if writer is not None and writer.rows_written > 0:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)
        assert service.schedule is not None
        empty = service.schedule.status().not_registered
        today = ist_today()
        results = {step.name: await step.run(today) for step in service.schedule.steps}
    finally:
        await service.stop()
    return results, empty


def test_a_running_ingest_schedules_every_step_and_each_does_its_work(
    apache_server: DbServer, tmp_path: Path
) -> None:
    with sample_database(apache_server) as url:
        settings = Settings(
            data_dir=tmp_path / "data",
            simulator_rate=2000,
            rollup_interval_s=1,
            preopen_at=NEVER,
            postclose_at=NEVER,
            ticks_retention_days=30,
            bars_retention_days=0,
        )
        results, empty = asyncio.run(_run_every_step(settings, url))
        with psycopg.connect(url) as conn:
            (audited,) = conn.execute(
                "SELECT count(*) FROM audit_results WHERE trading_date = %s", [ist_today()]
            ).fetchone()
            (calendar_days,) = conn.execute("SELECT count(*) FROM market_days").fetchone()

    assert empty == []
    assert list(results) == [*PHASE_STEPS[Phase.PREOPEN], *PHASE_STEPS[Phase.POSTCLOSE]]
    assert "universe" in results["instruments"], results["instruments"]
    assert results["token"] == "simulator token valid"
    assert calendar_days > 0, "the calendar step stored the simulator's timings and holidays"
    assert "exchange days of the calendar stored" in results["calendar"]
    assert "subscriptions renewed" in results["resubscribe"]
    assert f"bars of {ist_today()}" in results["seal"]
    assert audited > 0, "the audit step kept its verdicts"
    assert results["audit"].startswith(f"audit of {ist_today()}")
    # Only today's ticks exist: nothing finished to archive, nothing old enough to drop.
    assert results["archive"] == "every finished day is archived"
    assert results["retention"].startswith("0 tick chunks dropped")


def test_steps_switched_off_in_the_settings_are_not_registered(
    apache_server: DbServer, tmp_path: Path
) -> None:
    """No audit, no archive and retention kept forever: those slots stay empty, and say so."""
    with sample_database(apache_server) as url:
        settings = Settings(
            data_dir=tmp_path / "data",
            preopen_at=NEVER,
            postclose_at=NEVER,
            audit_after_close=False,
            archive_ticks=False,
            ticks_retention_days=0,
            bars_retention_days=0,
        )

        async def main() -> tuple[list[str], list[str]]:
            service = WebSocketService(settings, url)
            await service.start()
            try:
                assert service.schedule is not None
                names = [step.name for step in service.schedule.steps]
                return names, service.schedule.status().not_registered
            finally:
                await service.stop()

        names, empty = asyncio.run(main())
    assert empty == ["audit", "archive", "retention"]
    assert names == ["instruments", "token", "calendar", "resubscribe", "seal"]


def test_trading_days_come_from_the_stored_calendar(apache_server: DbServer) -> None:
    url = apache_server.create_database()
    try:
        connect = functools.partial(psycopg.connect, url)
        holiday, muhurat, monday = date(2026, 1, 26), date(2026, 11, 8), date(2026, 1, 19)
        with connect() as conn:
            save_day(conn, holiday, "NSE", [], "holidays", "TRADING_HOLIDAY", "Republic Day")
            start = datetime(2026, 11, 8, 12, 30, tzinfo=UTC)  # 18:00 IST on a Sunday: Muhurat
            save_day(conn, muhurat, "NSE", [(start, start + timedelta(hours=1))], "holidays")
        assert calendar_trading_day(connect, monday), "a weekday the calendar has not got yet"
        assert not calendar_trading_day(connect, holiday), "a holiday without a session"
        assert calendar_trading_day(connect, muhurat), "a special session on a Sunday"
        assert not calendar_trading_day(connect, date(2026, 1, 24)), "a Saturday"
    finally:
        apache_server.drop_database(url)


def test_the_token_step_fails_before_the_open_on_a_token_that_will_not_carry_the_day() -> None:
    now = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)  # 08:30 IST, the pre-open
    expired = (now - timedelta(hours=1)).isoformat()  # yesterday's daily token, ended 03:30 IST
    tomorrow = (now + timedelta(hours=23)).isoformat()
    assert "missing" in token_problem(TokenStatus("missing", "missing"), now)
    assert "rejected" in token_problem(TokenStatus("file", "rejected", "analytics"), now)
    assert "expired" in token_problem(TokenStatus("file", "valid", "daily", expired), now)
    assert token_problem(TokenStatus("file", "valid", "daily", tomorrow), now) is None
    assert token_problem(TokenStatus("env", "unchecked"), now) is None
