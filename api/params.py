"""Request parameters that need more than a type: symbols, time windows, page cursors."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, StringConstraints

from api.error_responses import invalid
from store.tick_row import from_datetime, to_datetime


def _storable(value: str) -> str:
    """PostgreSQL text holds neither NUL nor a lone surrogate (which a JSON body can spell as
    `\\ud800`); without this check such a symbol would reach the driver and fail there."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode: it contains a lone surrogate") from None
    return value


MAX_SYMBOL_CHARS = 100
Symbol = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_SYMBOL_CHARS), AfterValidator(_storable)
]
SearchText = Annotated[str, StringConstraints(max_length=100), AfterValidator(_storable)]
MAX_SYMBOLS = 200
# A list in a query: the longest MAX_SYMBOLS symbols, each with its comma and a space. The
# request head's limit (api/limits.py) is made from this, so any list within the rules fits.
MAX_SYMBOL_LIST_CHARS = MAX_SYMBOLS * (MAX_SYMBOL_CHARS + 2)
SYMBOL_LIST_RULES = f"at most {MAX_SYMBOLS} symbols of at most {MAX_SYMBOL_CHARS} characters each"


def _shaped(pattern: str, what: str) -> BeforeValidator:
    """Text must start as `pattern` before pydantic reads it: alone it would also take a bare
    date for a date-time, and numbers as Unix times (`end=0`), which nobody means in a URL."""
    shape = re.compile(pattern)

    def check(value: object) -> object:
        if isinstance(value, str) and not shape.match(value):
            raise ValueError(f"must be {what}")
        return value

    return BeforeValidator(check)


# A date, then a time: what ISO 8601 calls a date-time.
DateTime = Annotated[
    datetime,
    _shaped(
        r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}",
        "an ISO 8601 date-time, e.g. 2026-01-05T09:15:00+05:30",
    ),
]
Date = Annotated[date, _shaped(r"\d{4}-\d{2}-\d{2}$", "a date, YYYY-MM-DD")]

# A calendar date as YYYY-MM-DD only: pydantic alone would take `0` as 1970-01-01.
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")


def _date_text(value: object) -> object:
    if isinstance(value, str) and not _DATE.match(value):
        raise ValueError("must be a date YYYY-MM-DD, e.g. 2026-01-05")
    return value


IsoDate = Annotated[date, BeforeValidator(_date_text)]


def symbol_list(raw: str) -> list[str]:
    """`INFY, TCS,NIFTY` as distinct names in order; empty items are skipped."""
    names, problem = checked_symbol_list(raw)
    if problem:
        raise invalid("query", "symbols", problem, raw[:200])
    return names


def checked_symbol_list(raw: str) -> tuple[list[str], str | None]:
    """The names of `symbol_list`, and why they are refused (None when they are not).

    The count is checked before the whole length, so that a list one symbol too long is
    told the cap. Splitting first costs little: the request head bounds `raw`.
    """
    names = list(dict.fromkeys(filter(None, (part.strip() for part in raw.split(",")))))
    problem = None
    if not names:
        problem = "name at least one symbol, or leave the parameter out for all"
    elif len(names) > MAX_SYMBOLS:
        problem = f"at most {MAX_SYMBOLS} symbols per request, got {len(names)}"
    elif any(len(name) > MAX_SYMBOL_CHARS or "\x00" in name for name in names):
        problem = f"a symbol is longer than {MAX_SYMBOL_CHARS} characters or contains NUL"
    elif len(raw) > MAX_SYMBOL_LIST_CHARS:
        problem = (
            f"the list is longer than the {MAX_SYMBOL_LIST_CHARS} characters that"
            f" {SYMBOL_LIST_RULES} take, with a comma and a space between them"
        )
    return names, problem


def as_utc(moment: datetime, name: str) -> datetime:
    """An aware UTC datetime; a time without an offset is taken as UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise invalid("query", name, "time is out of range", moment.isoformat()) from None


def time_window(
    start: datetime | None,
    end: datetime | None,
    *,
    default_span: timedelta,
    max_span: timedelta | None = None,
) -> tuple[datetime, datetime]:
    """[start, end) in UTC: end defaults to now, start to `default_span` before end."""
    end_utc = as_utc(end, "end") if end is not None else datetime.now(UTC)
    if start is not None:
        start_utc = as_utc(start, "start")
    else:
        try:
            start_utc = end_utc - default_span
        except OverflowError:
            raise invalid("query", "end", "end is too early", end_utc.isoformat()) from None
    if start_utc > end_utc:
        raise invalid(
            "query",
            "start",
            f"start ({start_utc.isoformat()}) is after end ({end_utc.isoformat()})",
            start_utc.isoformat(),
        )
    if max_span is not None and end_utc - start_utc > max_span:
        raise invalid(
            "query",
            "start",
            f"the window from start to end may span at most {max_span.days} days",
            start_utc.isoformat(),
        )
    return start_utc, end_utc


# base64url without padding, as encode_cursor writes it.
CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"


def encode_cursor(ts: datetime, received_at: datetime) -> str:
    """The position after a tick, opaque to clients: base64url of its two tick times."""
    raw = f"{from_datetime(ts)}:{from_datetime(received_at)}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, datetime]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        ts, received_at = (to_datetime(int(part)) for part in raw.split(":"))
    except (ValueError, OverflowError, binascii.Error):  # UnicodeDecodeError is a ValueError
        raise invalid("query", "cursor", "not a cursor this API gave out", cursor) from None
    return ts, received_at
