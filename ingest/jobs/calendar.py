"""The ingest's side of the market calendar: fetch it from Upstox daily, log segment changes.

At start, and then after every IST midnight unless the daily schedule's `calendar` step
refreshes it instead, `CalendarKeeper` reads `/v2/market/holidays`
(the year's list) and `/v2/market/timings/{date}` for today and tomorrow, and stores every
exchange's day through store.calendar: holidays first, then the timings, which are the day's
own answer and win where both speak. A holiday that lists an exchange in `open_exchanges`
(Muhurat trading) gives that exchange its special session; `closed_exchanges` gives it none.
An answer that cannot be read stores nothing and is tried again in `retry_s`.

It also logs the feed's segment statuses (from market_info frames, as the pipeline keeps
them) to `market_segment_status` when they change, checking once a second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import httpx
import psycopg

from store.calendar import (
    IST,
    SEGMENT_STATUSES,
    Session,
    Source,
    record_segment_status,
    save_day,
)

log = logging.getLogger(__name__)


class CalendarError(ValueError):
    """An Upstox calendar answer this code cannot read; nothing of it was stored."""


@dataclass(frozen=True)
class ExchangeDayRecord:
    """One exchange's day as an Upstox answer gives it, ready for store.calendar.save_day."""

    day: date
    exchange: str
    source: Source
    sessions: list[Session] = field(default_factory=list)
    holiday_type: str | None = None
    description: str | None = None


def _instant(ms: object) -> datetime:
    if not isinstance(ms, int) or isinstance(ms, bool):
        raise CalendarError(f"a session time must be epoch milliseconds, got {ms!r}")
    return datetime.fromtimestamp(ms / 1000, IST)


def _sessions(entries: object) -> dict[str, list[Session]]:
    """exchange -> its sessions, in order, from `[{exchange, start_time, end_time}]`."""
    if not isinstance(entries, list):
        raise CalendarError(f"expected a list of sessions, got {type(entries).__name__}")
    by_exchange: dict[str, list[Session]] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("exchange"), str):
            raise CalendarError(f"a session needs an exchange: {entry!r}")
        start, end = _instant(entry.get("start_time")), _instant(entry.get("end_time"))
        if end <= start:
            raise CalendarError(f"a session ends before it starts: {entry!r}")
        by_exchange.setdefault(entry["exchange"], []).append((start, end))
    return {exchange: sorted(sessions) for exchange, sessions in by_exchange.items()}


def parse_timings(day: date, data: object) -> list[ExchangeDayRecord]:
    """`/v2/market/timings/{day}`'s `data`: one record per exchange it names."""
    return [
        ExchangeDayRecord(day, exchange, "timings", sessions)
        for exchange, sessions in _sessions(data).items()
    ]


def parse_holidays(data: object) -> list[ExchangeDayRecord]:
    """`/v2/market/holidays`' `data`: per holiday, each closed exchange with no session and
    each open exchange with its special sessions (open wins if an exchange is in both)."""
    if not isinstance(data, list):
        raise CalendarError(f"expected a list of holidays, got {type(data).__name__}")
    records = []
    for holiday in data:
        if not isinstance(holiday, dict):
            raise CalendarError(f"a holiday must be an object: {holiday!r}")
        try:
            day = date.fromisoformat(str(holiday.get("date")))
        except ValueError:
            raise CalendarError(f"a holiday needs a YYYY-MM-DD date: {holiday!r}") from None
        about = {
            "holiday_type": holiday.get("holiday_type"),
            "description": holiday.get("description"),
        }
        opened = _sessions(holiday.get("open_exchanges") or [])
        closed = holiday.get("closed_exchanges") or []
        if not isinstance(closed, list) or not all(isinstance(e, str) for e in closed):
            raise CalendarError(f"closed_exchanges must be a list of names: {holiday!r}")
        for exchange in dict.fromkeys(closed):
            if exchange not in opened:
                records.append(ExchangeDayRecord(day, exchange, "holidays", [], **about))
        for exchange, sessions in opened.items():
            records.append(ExchangeDayRecord(day, exchange, "holidays", sessions, **about))
    return records


def with_holiday_names(
    timings: list[ExchangeDayRecord], holidays: list[ExchangeDayRecord]
) -> list[ExchangeDayRecord]:
    """Timings records that keep the holiday's name and type where the day is one."""
    about = {(h.day, h.exchange): h for h in holidays}
    about_day = {h.day: h for h in holidays}
    named = []
    for record in timings:
        holiday = about.get((record.day, record.exchange)) or about_day.get(record.day)
        if holiday is None:
            named.append(record)
        else:
            named.append(
                ExchangeDayRecord(
                    record.day,
                    record.exchange,
                    record.source,
                    record.sessions,
                    holiday.holiday_type,
                    holiday.description,
                )
            )
    return named


Connect = Callable[[], AbstractContextManager[psycopg.Connection]]


class CalendarKeeper:
    """Keeps the store's calendar current and logs segment status changes (module docstring)."""

    def __init__(
        self,
        api_base: str,
        token: str,
        connect: Connect,
        market_status: Mapping[str, str],
        retry_s: float = 300.0,
    ) -> None:
        """`market_status` is the live segment -> status map the pipeline keeps."""
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(base_url=api_base, headers=headers, timeout=15.0)
        self._connect = connect
        self._market_status = market_status
        self._recorded: dict[str, str] = {}
        self._retry_s = retry_s
        self.last_error: str | None = None

    async def refresh(self, today: date) -> int:
        """Fetch and store the holidays and the timings of `today` and the day after; the
        number of exchange days stored. Raises CalendarError or httpx.HTTPError, storing
        nothing, when an answer cannot be had or read."""
        holidays = parse_holidays(await self._get("/v2/market/holidays"))
        timings: list[ExchangeDayRecord] = []
        for day in (today, today + timedelta(days=1)):
            timings += parse_timings(day, await self._get(f"/v2/market/timings/{day}"))
        records = holidays + with_holiday_names(timings, holidays)
        await asyncio.to_thread(self._store, records)
        return len(records)

    async def _get(self, path: str) -> object:
        response = await self._http.get(path)
        response.raise_for_status()
        try:
            body = response.json()
        except ValueError:
            raise CalendarError(f"{path} answered something that is not JSON") from None
        if not isinstance(body, dict) or body.get("status") != "success" or "data" not in body:
            raise CalendarError(f"{path} answered without success and data")
        return body["data"]

    def _store(self, records: list[ExchangeDayRecord]) -> None:
        with self._connect() as conn:
            for r in records:
                save_day(
                    conn, r.day, r.exchange, r.sessions, r.source, r.holiday_type, r.description
                )

    async def run_forever(self, daily: bool = True) -> None:
        """Refresh now (again until it succeeds) and, `daily`, after each IST midnight; log
        segment changes every second. Without `daily` the daily schedule's `calendar` step
        refreshes it (ingest/jobs/schedule/steps.py): once a day is enough."""
        next_refresh: datetime | None = datetime.now(IST)
        try:
            while True:
                now = datetime.now(IST)
                if next_refresh is not None and now >= next_refresh:
                    next_refresh = await self._refresh_once(now, daily)
                changed = self._changed_statuses()
                if changed:  # a database write only when a segment moved
                    await asyncio.to_thread(self._record, changed)
                await asyncio.sleep(1.0)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client (run_forever does, when it is cancelled)."""
        await self._http.aclose()

    async def _refresh_once(self, now: datetime, daily: bool) -> datetime | None:
        """One refresh; when the next one is due (None: none is, without `daily`)."""
        try:
            stored = await self.refresh(now.date())
        except (CalendarError, httpx.HTTPError, psycopg.Error) as error:
            self.last_error = f"{type(error).__name__}: {error}"
            log.warning(
                "market calendar not refreshed, retrying in %.0f s: %s",
                self._retry_s,
                self.last_error,
            )
            return now + timedelta(seconds=self._retry_s)
        self.last_error = None
        log.info("market calendar refreshed: %d exchange days", stored)
        if not daily:
            return None
        tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), IST)
        return tomorrow + timedelta(minutes=5)

    def _changed_statuses(self) -> dict[str, str]:
        """The segments whose status differs from the one last logged by this keeper (a
        status this code does not know, a number, is left out)."""
        return {
            segment: status
            for segment, status in dict(self._market_status).items()
            if self._recorded.get(segment) != status and status in SEGMENT_STATUSES
        }

    def _record(self, changed: dict[str, str]) -> None:
        at = datetime.now(IST)
        try:
            with self._connect() as conn:
                for segment, status in changed.items():
                    record_segment_status(conn, segment, status, at)
        except psycopg.Error as error:
            log.warning("segment status not recorded, retrying: %s", error)
            return
        self._recorded.update(changed)
