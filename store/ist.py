"""India Standard Time, the zone of every trading day, session and bar boundary here.

A fixed offset, not a tz database zone: India keeps no daylight saving, and a fixed offset
costs nothing to convert with in a hot loop.
"""

from __future__ import annotations

from datetime import timedelta, timezone

IST = timezone(timedelta(hours=5, minutes=30), "IST")
