"""Upstox's 1-minute candles over REST: what backfill stores and what the parity audit checks.
The client's `get_json` serves Upstox's other market-data calls as well (the option chain,
`option_chain.py`).

Today's candles (IST) come from the intraday endpoint, a past day's from historical V3
(to_date before from_date in the URL, both the same day here). Upstox answers newest first;
this client answers oldest first. Every call stays within the rate limits of the standard
APIs (stacked leaky buckets, one per window), backs off exponentially on HTTP 429
(`UDAPI10005`, no Retry-After) and on transient server errors, and stops at once on a 401:
the token is gone, and retrying it in a loop only counts against the limits.

The access token travels only in the Authorization header: no message, exception or log
line built here contains it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from core.ist import IST

CANDLE_PATH = "/v3/historical-candle"
THROTTLED = "UDAPI10005"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candle:
    """One minute of an instrument as Upstox reports it; `start` is the start of the minute."""

    start: datetime
    open: float
    high: float
    low: float
    close: float
    volume: int
    oi: int


@dataclass(frozen=True)
class RateLimits:
    """The request windows (requests per seconds) and how 429s and 5xx are retried: after
    `backoff_s`, doubling up to `backoff_max_s`, `attempts` calls in all."""

    windows: tuple[tuple[int, float], ...]
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    attempts: int = 8


# Standard APIs, historical candles included: 50/s, 500/min, 2,000/30 min per API per user.
UPSTOX_LIMITS = RateLimits(((50, 1.0), (500, 60.0), (2000, 1800.0)))


class CandleError(Exception):
    """A candle request that failed for good; the message says which and why, never the token."""


class CandleAuthError(CandleError):
    """The token was refused (HTTP 401): wait for a new one rather than retry."""


class _Retryable(CandleError):
    """A 429 or a transient failure: worth another try after a pause."""


class CandleClient:
    """1-minute candles of one instrument-day at a time; an async context manager.

    `http`, when given, is used as it is and left open (its owner closes it); otherwise the
    client owns one. `token` may be an Analytics Token or the daily OAuth token.
    """

    def __init__(
        self,
        api_base: str,
        token: str,
        *,
        limits: RateLimits = UPSTOX_LIMITS,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if not token:
            raise CandleError("no access token: set UPSTOX_ACCESS_TOKEN")
        self._base = api_base.rstrip("/")
        self._headers = {"Accept": "application/json", "Authorization": f"Bearer {token}"}
        self._limits = limits
        self._limiters = [AsyncLimiter(count, seconds) for count, seconds in limits.windows]
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=30.0)

    async def __aenter__(self) -> CandleClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def minute_candles(self, instrument_key: str, day: date) -> list[Candle]:
        """The day's 1-minute candles of `instrument_key`, oldest first (IST dates)."""
        today = datetime.now(IST).date()
        if day > today:
            raise CandleError(f"no candles for {day}: it is after today ({today}, IST)")
        key = quote(instrument_key, safe="")
        if day == today:
            path = f"{CANDLE_PATH}/intraday/{key}/minutes/1"
        else:
            path = f"{CANDLE_PATH}/{key}/minutes/1/{day.isoformat()}/{day.isoformat()}"
        body = await self.get_json(path)
        candles = [_candle(row, path) for row in _rows(body, path)]
        return sorted(
            (candle for candle in candles if candle.start.astimezone(IST).date() == day),
            key=lambda candle: candle.start,
        )

    async def get_json(self, path: str) -> Any:
        """GET `path` (with its query) within the rate limits, retried as the module says;
        the JSON answer. Upstox's other market-data calls (the option chain) use it too."""
        limits = self._limits
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Retryable),
            wait=wait_exponential(multiplier=limits.backoff_s, max=limits.backoff_max_s),
            stop=stop_after_attempt(limits.attempts),
            reraise=True,
            before_sleep=lambda state: log.warning(
                "candles %s: %s; retrying (attempt %d)",
                path,
                state.outcome.exception() if state.outcome else "",
                state.attempt_number + 1,
            ),
        )
        try:
            return await retrying(self._get_once, path)
        except _Retryable as error:
            raise CandleError(f"{error} (gave up after {limits.attempts} attempts)") from None

    async def _get_once(self, path: str) -> Any:
        for limiter in self._limiters:
            await limiter.acquire()
        try:
            response = await self._http.get(self._base + path, headers=self._headers)
        except httpx.TransportError as error:
            raise _Retryable(f"GET {path}: {type(error).__name__}") from None
        if response.status_code == 200:
            try:
                return response.json()
            except ValueError:
                raise CandleError(f"GET {path}: the answer is not JSON") from None
        reason = _error_text(response)
        if response.status_code == 401:
            raise CandleAuthError(
                f"GET {path}: the access token was refused (401{reason}); "
                "set a new token: retrying the same one cannot help"
            )
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable(f"GET {path}: HTTP {response.status_code}{reason}")
        raise CandleError(f"GET {path}: HTTP {response.status_code}{reason}")


def _error_text(response: httpx.Response) -> str:
    """`: CODE message` from Upstox's error body, or nothing when it has none."""
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        return f": {first.get('errorCode') or first.get('error_code')} {first.get('message')}"
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""


def _rows(body: Any, path: str) -> list[Any]:
    try:
        rows = body["data"]["candles"]
    except (KeyError, TypeError):
        raise CandleError(f"GET {path}: no data.candles in the answer") from None
    if not isinstance(rows, list):
        raise CandleError(f"GET {path}: data.candles is not a list")
    return rows


def _candle(row: Any, path: str) -> Candle:
    """[ts, open, high, low, close, volume, oi] -> Candle."""
    try:
        ts, open_, high, low, close, volume, oi = row
        start = datetime.fromisoformat(ts)
        if start.tzinfo is None:
            raise ValueError("no time zone")
        return Candle(
            start, float(open_), float(high), float(low), float(close), int(volume), int(oi or 0)
        )
    except (TypeError, ValueError) as error:
        raise CandleError(f"GET {path}: a candle is malformed ({row!r}: {error})") from None
