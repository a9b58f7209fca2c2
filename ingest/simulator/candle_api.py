"""Upstox's 1-minute candle endpoints, answered from the simulator's minute book.

The candles are the minutes the simulator keeps as its market trades (minutes.py): a
minute it streamed is made of the ticks it wrote to clients, so its candle agrees with what
an ingest that heard every tick stores; a minute nobody was sent (its whole market trades
on, FeedSimulator's `whole_market`) is made of the trades nobody heard. A minute in which
an instrument did not trade has no candle; `oi` is 0 (the book does not keep it); an index
has volume 0, as on Upstox; days older than the book keeps have none.

Served: `GET /v3/historical-candle/intraday/{key}/minutes/1` (today, IST) and
`GET /v3/historical-candle/{key}/minutes/1/{to_date}[/{from_date}]`, with the token checked
like the authorize call (401 `UDAPI100050`), and a test hook that makes the next N calls
answer 429 `UDAPI10005` as Upstox does over its rate limits.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from urllib.parse import unquote

from websockets.http11 import Request, Response

from core.ist import IST
from ingest.simulator.minutes import MINUTE_MS, MinuteBook
from ingest.simulator.protocol import INVALID_TOKEN, Gate, error_response, json_response
from ingest.upstox.candles import CANDLE_PATH, THROTTLED

THROTTLED_ERROR = {"errorCode": THROTTLED, "message": "Too Many Request Sent"}
MAX_DAYS = 31  # one call spans at most a month of 1-minute candles

CandleRow = list[object]  # [ts with +05:30, open, high, low, close, volume, oi]


def book_candles(book: MinuteBook, key: str, first: date, last: date) -> list[CandleRow]:
    """The 1-minute candles of `key` on IST dates `first`..`last`, newest first as Upstox
    answers."""
    start = datetime.combine(first, time(), IST)
    end = datetime.combine(last + timedelta(days=1), time(), IST)
    first_minute = int(start.timestamp() * 1000) // MINUTE_MS
    last_minute = int(end.timestamp() * 1000) // MINUTE_MS - 1
    rows: list[CandleRow] = []
    for minute, open_, high, low, close, volume in reversed(
        book.minutes(key, first_minute, last_minute)
    ):
        moment = datetime.fromtimestamp(minute * 60, IST).isoformat()
        rows.append([moment, open_, high, low, close, volume, 0])
    return rows


class CandleEndpoints:
    """The candle paths of the simulator's REST side, answered from `book`."""

    def __init__(self, book: MinuteBook, gate: Gate) -> None:
        self._book = book
        self._gate = gate
        self._throttled = 0

    @staticmethod
    def serves(path: str) -> bool:
        return path.startswith(CANDLE_PATH + "/")

    def throttle(self, calls: int) -> None:
        """Answer the next `calls` candle requests 429 `UDAPI10005`."""
        self._throttled = max(0, calls)

    def answer(self, path: str, request: Request) -> Response:
        if not self._gate.token_accepted(request):
            return error_response(401, INVALID_TOKEN)
        if self._throttled:
            self._throttled -= 1
            return error_response(429, THROTTLED_ERROR)
        parts = [unquote(part) for part in path[len(CANDLE_PATH) + 1 :].split("/")]
        today = datetime.now(IST).date()
        try:
            if parts[0] == "intraday" and len(parts) == 4:
                key, unit, interval = parts[1:]
                first = last = today
            elif len(parts) in (4, 5) and parts[0] != "intraday":
                key, unit, interval, to_text = parts[:4]
                last = date.fromisoformat(to_text)
                first = date.fromisoformat(parts[4]) if len(parts) == 5 else last
            else:
                return _invalid("unknown candle path")
        except ValueError:
            return _invalid("dates must be YYYY-MM-DD")
        if (unit, interval) != ("minutes", "1"):
            return _invalid("the simulator serves minutes/1 candles only")
        if first > last:
            return _invalid("to_date must not be before from_date")
        if last - first > timedelta(days=MAX_DAYS):
            return _invalid(f"a call spans at most {MAX_DAYS} days of 1-minute candles")
        rows = book_candles(self._book, key, first, last)
        return json_response(200, {"status": "success", "data": {"candles": rows}})


def _invalid(message: str) -> Response:
    return error_response(
        400, {"errorCode": "SIM_INVALID_REQUEST", "message": f"Invalid request: {message}"}
    )
