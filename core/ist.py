"""India Standard Time, the zone of every trading day, session and bar boundary here, and the
IST calendar day as the rest of the store counts it.

A fixed offset, not a tz database zone: India keeps no daylight saving, and a fixed offset
costs nothing to convert with in a hot loop. Where a zone must be named (PostgreSQL's
`SET TIME ZONE`, pandas' `tz_convert`), `IST_ZONE` is the tz database's name of the same clock.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone

IST_OFFSET = timedelta(hours=5, minutes=30)
IST = timezone(IST_OFFSET, "IST")
IST_ZONE = "Asia/Kolkata"
IST_OFFSET_US = IST_OFFSET // timedelta(microseconds=1)


def ist_day(moment: datetime) -> date:
    """The IST calendar date of an aware instant."""
    return moment.astimezone(IST).date()


def ist_today(now: datetime | None = None) -> date:
    return ist_day(now or datetime.now(UTC))


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The IST calendar day as an aware [start, end): midnight IST to the next midnight."""
    start = datetime.combine(day, time(), IST)
    return start, start + timedelta(days=1)
