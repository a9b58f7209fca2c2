"""Upstox's 1-minute candle endpoints, answered from the simulator's own tape.

The simulator's history is exactly what it streamed: the candles of a minute are built from
the ticks it wrote to clients (`Tape.sent_ticks`), so they agree with what an ingest that
heard every tick stores. Per instrument and IST minute (the candle's start): open, high,
low and close of the LTP, and volume the rise of the day's traded quantity (`vtt`) from the
instrument's previously sent tick; the first tick sent of an instrument adds nothing (what
traded before it was never streamed), the rule tickvault's decoder follows for the first
tick it hears. A minute the simulator did not stream has no candle; `oi` is 0 (the tape
does not keep it); an index has volume 0, as on Upstox.

Served: `GET /v3/historical-candle/intraday/{key}/minutes/1` (today, IST) and
`GET /v3/historical-candle/{key}/minutes/1/{to_date}[/{from_date}]`, with the token checked
like the authorize call (401 `UDAPI100050`), and a test hook that makes the next N calls
answer 429 `UDAPI10005` as Upstox does over its rate limits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from urllib.parse import unquote

from websockets.http11 import Request, Response

from core.ist import IST
from ingest.simulator.protocol import INVALID_TOKEN, Gate, error_response, json_response
from ingest.simulator.tape import SentTick
from ingest.upstox.candles import CANDLE_PATH, THROTTLED

THROTTLED_ERROR = {"errorCode": THROTTLED, "message": "Too Many Request Sent"}
MAX_DAYS = 31  # one call spans at most a month of 1-minute candles
_MINUTE_MS = 60_000

CandleRow = list[object]  # [ts with +05:30, open, high, low, close, volume, oi]


@dataclass
class _Bucket:
    open: float
    high: float
    low: float
    close: float
    volume: int


def tape_candles(ticks: Iterable[SentTick], key: str, first: date, last: date) -> list[CandleRow]:
    """The 1-minute candles of `key` on IST dates `first`..`last` from sent ticks, newest
    first as Upstox answers; see the module docstring for the rules."""
    buckets: dict[int, _Bucket] = {}
    previous_vtt: int | None = None
    for tick_key, ltt, ltp, _ltq, vtt in ticks:
        if tick_key != key:
            continue
        traded = 0
        if vtt is not None and previous_vtt is not None:
            traded = vtt - previous_vtt if vtt >= previous_vtt else vtt  # a restarted counter
        if vtt is not None:
            previous_vtt = vtt
        minute = ltt // _MINUTE_MS
        bucket = buckets.get(minute)
        if bucket is None:
            buckets[minute] = _Bucket(ltp, ltp, ltp, ltp, traded)
        else:
            bucket.high = max(bucket.high, ltp)
            bucket.low = min(bucket.low, ltp)
            bucket.close = ltp
            bucket.volume += traded
    rows: list[CandleRow] = []
    for minute in sorted(buckets, reverse=True):
        start = datetime.fromtimestamp(minute * 60, IST)
        if first <= start.date() <= last:
            b = buckets[minute]
            rows.append([start.isoformat(), b.open, b.high, b.low, b.close, b.volume, 0])
    return rows


class CandleEndpoints:
    """The candle paths of the simulator's REST side; `sent_ticks` reads the tape and
    `recording` says whether it keeps one."""

    def __init__(
        self, sent_ticks: Callable[[], list[SentTick]], recording: Callable[[], bool], gate: Gate
    ) -> None:
        self._sent_ticks = sent_ticks
        self._recording = recording
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
        if not self._recording():
            return error_response(
                503, {"errorCode": "SIM_NO_TAPE", "message": "the simulator keeps no tape"}
            )
        rows = tape_candles(self._sent_ticks(), key, first, last)
        return json_response(200, {"status": "success", "data": {"candles": rows}})


def _invalid(message: str) -> Response:
    return error_response(
        400, {"errorCode": "SIM_INVALID_REQUEST", "message": f"Invalid request: {message}"}
    )
