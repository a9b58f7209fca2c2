"""Gap backfill: Upstox's 1-minute candles for the minutes the store was not receiving.

`backfill_day` takes the gaps of a trading day (store/coverage.py), fetches each instrument's
candles once (the intraday endpoint for today, the historical one for past days, within the
rate limits: ingest/upstox/candles.py) and stores those of gap minutes as bars marked
`source = 'backfill'` (store/backfill.py). A gap minute heard in part (the ingest stopped or
started inside it) is repaired too: its candle replaces the partial live bar, so the volume
of a window across a gap is the exchange's, counted once. `tickvault backfill` runs it for
any day; `AutoBackfill` runs it for today after the ingest connects again during a session,
and once more when the minute it connected in is over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from core.ist import IST
from ingest.tokens import UpstoxAccess
from ingest.upstox.candles import (
    UPSTOX_LIMITS,
    CandleAuthError,
    CandleClient,
    CandleError,
    RateLimits,
)
from store.backfill import MinuteBar, backfilled_minutes, store_minute_bars
from store.calendar import trading_sessions
from store.coverage import Gap, gaps_of_day
from store.instruments import resolve_symbols
from store.pool_check import check_quietly

log = logging.getLogger(__name__)

# How long a store waits for the run's connection, the database being down, before the run
# fails (it is retried at the next reconnect, or by running `tickvault backfill` again).
STORE_WAIT_S = 10.0


class UnknownSymbols(ValueError):
    """Symbols that name no instrument; nothing was backfilled."""


@dataclass(frozen=True)
class InstrumentFill:
    """What backfill did for one instrument's gaps of the day."""

    instrument_key: str
    symbol: str
    gap_minutes: int  # gap minutes not yet backfilled before this run (heard in part or not)
    candles: int  # candles Upstox had for those minutes (a minute without trades has none)
    filled: int  # minutes stored new or changed (those, and corrections of earlier candles)
    error: str | None = None


@dataclass(frozen=True)
class BackfillReport:
    day: date
    instruments: tuple[InstrumentFill, ...]

    @property
    def filled(self) -> int:
        return sum(item.filled for item in self.instruments)

    def as_json(self) -> dict[str, Any]:
        return {
            "date": self.day.isoformat(),
            "filled": self.filled,
            "instruments": [asdict(item) for item in self.instruments],
        }


async def backfill_day(
    database_url: str,
    api_base: str,
    token: str,
    day: date,
    symbols: Sequence[str] = (),
    *,
    ending_after: datetime | None = None,
    until: datetime | None = None,
    limits: RateLimits = UPSTOX_LIMITS,
) -> BackfillReport:
    """Fill the gaps of `day` (IST) for `symbols` (default: every subscription) from the
    candles at `api_base`, among the minutes over by `until` (default: now); with
    `ending_after`, only the gaps that end after it. Only instruments with minutes to fill are
    asked for candles. A refused token stops it all (CandleAuthError); another failure of one
    instrument's candles is reported on that instrument and the others go on."""
    open_gaps = await asyncio.to_thread(_open_gaps, database_url, day, symbols, ending_after, until)
    if not open_gaps:
        return BackfillReport(day, ())
    async with (
        CandleClient(api_base, token, limits=limits) as client,
        _CandleStore(database_url) as store,
    ):
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(_fill(store, client, day, key, gaps))
                    for key, gaps in open_gaps.items()
                ]
        except* CandleAuthError as refused:
            raise refused.exceptions[0] from None
        except* psycopg.Error as failed:  # the database: its callers handle psycopg's errors
            raise failed.exceptions[0] from None
    return BackfillReport(day, tuple(task.result() for task in tasks))


def _open_gaps(
    database_url: str,
    day: date,
    symbols: Sequence[str],
    ending_after: datetime | None,
    until: datetime | None,
) -> dict[str, list[Gap]]:
    """The day's gaps that still have minutes to fill, by instrument."""
    with psycopg.connect(database_url) as conn:
        keys = None
        if symbols:
            found = resolve_symbols(conn, list(symbols))
            unknown = [symbol for symbol in symbols if symbol not in found]
            if unknown:
                raise UnknownSymbols(f"unknown symbol(s): {', '.join(unknown)}")
            keys = list(found.values())
        by_key: dict[str, list[Gap]] = {}
        for gap in gaps_of_day(conn, day, keys, until):
            if gap.fillable and (ending_after is None or gap.end > ending_after):
                by_key.setdefault(gap.instrument_key, []).append(gap)
        return by_key


async def _fill(
    store: _CandleStore, client: CandleClient, day: date, key: str, gaps: list[Gap]
) -> InstrumentFill:
    missing = sum(gap.fillable for gap in gaps)
    symbol = gaps[0].symbol
    try:
        candles = await client.minute_candles(key, day)
    except CandleAuthError:
        raise
    except CandleError as error:
        return InstrumentFill(key, symbol, missing, 0, 0, str(error))
    bars = [
        MinuteBar(c.start, c.open, c.high, c.low, c.close, c.volume, c.oi)
        for c in candles
        if any(gap.start <= c.start < gap.end for gap in gaps)
    ]
    candles, filled = await store.store(key, bars)
    return InstrumentFill(key, symbol, missing, candles, filled)


class _CandleStore:
    """Where one run's candles go: one connection for the whole run, one instrument at a time.

    A connection of its own for each instrument cost the database a new backend each time,
    up to 50 a second at Upstox's rate limit, for a run over thousands of instruments that
    lasts the better part of an hour; and the stores, each in a thread of the default
    executor, could take every one of its threads from the writer, which shares them. The
    pool checks its connection before each store and opens another if the server dropped
    it, so a run outlives a restart of the database that is over within `STORE_WAIT_S`."""

    def __init__(self, database_url: str) -> None:
        self._pool = ConnectionPool(
            database_url,
            min_size=1,
            max_size=1,
            open=False,
            timeout=STORE_WAIT_S,
            check=check_quietly,
            name="tickvault-backfill",
        )
        self._turn = asyncio.Lock()

    async def __aenter__(self) -> _CandleStore:
        self._pool.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self._pool.close)

    async def store(self, key: str, bars: list[MinuteBar]) -> tuple[int, int]:
        """(candles of minutes not shown from backfill before, minutes stored new or
        changed)."""
        async with self._turn:
            return await asyncio.to_thread(self._store, key, bars)

    def _store(self, key: str, bars: list[MinuteBar]) -> tuple[int, int]:
        with self._pool.connection() as conn:
            shown = backfilled_minutes(conn, key, [bar.bucket for bar in bars])
            return sum(bar.bucket not in shown for bar in bars), store_minute_bars(conn, key, bars)


class AutoBackfill:
    """Today's gaps backfilled after the ingest connects again (a reconnect or a restart)
    while a session is open; one run at a time, a request during a run runs once more.

    After its first run it asks only for the gaps that ended since the last one began, so a
    minute no candle can fill (no trade in it) costs no requests on every reconnect. The
    minute the ingest connected in was heard only in part; it is over, and Upstox's candle of
    it published (`settle_s` later: the intraday candles trail by a minute or so), only after
    the run a connect starts, so each such run is followed by one more then.
    """

    def __init__(
        self,
        database_url: str,
        access: Callable[[], UpstoxAccess],
        settle_s: float = 60.0,
    ) -> None:
        """`access` is asked at each run: a token swapped while the ingest runs is used."""
        self._database_url = database_url
        self._access = access
        self._settle_s = settle_s
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._follow_up = False
        self._last_run: datetime | None = None
        self._stopped = False
        self.last_report: BackfillReport | None = None

    def request(self) -> None:
        if self._stopped:  # the coverage's last flush at a stop may still find a span
            return
        self._follow_up = True
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._run(), name="backfill")

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            follow_up, self._follow_up = self._follow_up, False
            started = await self._pass()
            if started is None:
                return
            if follow_up and not self._again:
                minute_left = 60 - started.second - started.microsecond / 1_000_000
                await asyncio.sleep(minute_left + self._settle_s)
                self._again = True

    async def _pass(self) -> datetime | None:
        """One backfill of today; when it started, or None when it did not run."""
        now = datetime.now(IST)
        if not await asyncio.to_thread(self._in_session, now):
            return None
        since = self._last_run if self._last_run and self._last_run.date() == now.date() else None
        try:
            access = self._access()
            report = await backfill_day(
                self._database_url, access.api_base, access.token, now.date(), ending_after=since
            )
        except (CandleError, psycopg.Error) as error:
            log.warning("backfill of today's gaps failed: %s", error)
            return None
        self._last_run, self.last_report = now, report
        if report.instruments:
            log.info(
                "backfill of %s: %d minutes filled for %d instruments with gaps",
                report.day,
                report.filled,
                len(report.instruments),
            )
        return now

    def _in_session(self, now: datetime) -> bool:
        with psycopg.connect(self._database_url) as conn:
            sessions = trading_sessions(conn, now.date())
        return any(opens <= now < closes for opens, closes in sessions)
