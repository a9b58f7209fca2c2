"""The feed's subscriptions kept to the option-chain windows (window.py) as the market moves.

Once a second the follower reads each underlying's last price from the latest-tick cache
(an index option's underlying is the index key itself, which the F&O universe subscribes),
plans the windows at the clock's time and changes only the difference: contracts that left
a window are unsubscribed first (freeing room), then those that joined are subscribed, through
the SubscriptionManager, so the `subscriptions` table records them like any other and a
restart resumes them. Contracts come from the instrument master (store.instruments), read
again every RELOAD_S so that a refreshed master's new expiries are seen. The F&O universe's
subscriptions are never touched: only contracts of the followed underlyings are the
follower's, and on its first round it adopts those the feed already carries (resumed from
the table), unsubscribing those outside the windows, expired ones included. An underlying
with no price yet keeps the contracts it holds until its first tick (no churn at a restart).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import psycopg

from core.config import Settings
from ingest.cache import AggregatedTickHandler
from ingest.chains.window import ChainPlanError, Contract, Plan, closes_at, plan
from ingest.client import FeedClient, SubscriptionLimitError
from ingest.status import ChainWindowStatus, OptionChainsStatus
from ingest.subscriptions import SubscriptionManager
from store.instruments import option_contracts
from store.tick_row import LTP

log = logging.getLogger(__name__)

INTERVAL_S = 1.0
RELOAD_S = 60.0
LEFT_WINDOW = "left the option-chain window"
EXPIRED = "expired"

T = TypeVar("T")
Reader = Callable[[Callable[[psycopg.Connection], T]], Awaitable[T]]


def _now() -> datetime:
    """The feed's clock (time.time_ns, which a test may move), as an aware datetime."""
    return datetime.fromtimestamp(time.time_ns() / 1e9, UTC)


class ChainFollower:
    """Follows TICKVAULT_OPTION_CHAINS through `subscriptions`; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        subscriptions: SubscriptionManager,
        client: FeedClient,
        cache: AggregatedTickHandler,
        read: Reader[list[tuple]],
    ) -> None:
        self._underlyings = [name.upper() for name in settings.option_chains]
        self._expiries = settings.option_expiries
        self._strikes = settings.option_strikes
        self.mode = settings.option_mode
        self._subscriptions = subscriptions
        self._client = client
        self._cache = cache
        self._read = read
        self._contracts: list[Contract] = []
        self._closes: dict[str, datetime] = {}  # every contract's close, expired ones too
        self._underlying_of: dict[str, str] = {}  # every contract's underlying key
        self._loaded_at = float("-inf")
        self._held: set[str] | None = None  # the contracts subscribed for the windows
        self._plan: Plan | None = None
        self._error: str | None = None

    async def run_forever(self) -> None:
        while True:
            try:
                await self.step()
            except (psycopg.Error, OSError) as error:  # a database outage: try next round
                self._error = f"{type(error).__name__}: {error}"
                log.warning("option chains: %s", self._error)
            await asyncio.sleep(INTERVAL_S)

    async def step(self) -> None:
        """One round: plan the windows now, subscribe and unsubscribe the difference."""
        if time.monotonic() - self._loaded_at >= RELOAD_S:
            await self._load()
        client = self._client
        if self._held is None:  # adopt what a resume subscribed
            held = client.subscribed_keys
            self._held = {key for key in self._closes if key in held}
        prices = {}
        for key in {contract.underlying_key for contract in self._contracts}:
            tick = self._cache.latest(key)
            if tick is not None:
                prices[key] = float(tick[LTP])
        now = _now()
        # An underlying with no price yet (its first tick after a restart) keeps what it
        # holds rather than churn: only its expired contracts go.
        kept = {
            key
            for key in self._held
            if self._underlying_of.get(key) not in prices and self._closes.get(key, now) > now
        }
        room = client.room(self.mode) + len(self._held) - len(kept)
        previous = self._plan.atm if self._plan else None
        try:
            planned = plan(
                self._contracts,
                prices,
                now,
                expiries=self._expiries,
                strikes=self._strikes,
                room=room,
                previous=previous,
            )
        except ChainPlanError as error:
            self._error = str(error)
            return
        self._plan = planned
        leaving = [key for key in self._held if key not in planned.keys and key not in kept]
        expired = [key for key in leaving if self._closes.get(key, now) <= now]
        for keys, reason in ((expired, EXPIRED), (list(set(leaving) - set(expired)), LEFT_WINDOW)):
            if keys:
                await self._subscriptions.unsubscribe_keys(keys, reason)
                self._held.difference_update(keys)
        joining = [key for w in planned.windows for key in w.keys if key not in self._held]
        if joining:
            try:
                await self._subscriptions.subscribe_keys(joining, self.mode)
            except SubscriptionLimitError as error:
                self._error = str(error)
                return
            self._held.update(joining)
        self._error = None

    async def _load(self) -> None:
        rows = await self._read(lambda conn: option_contracts(conn, self._underlyings))
        self._closes = {row[0]: closes_at(row[3]) for row in rows}
        self._underlying_of = {row[0]: row[2] for row in rows}
        self._contracts = [
            Contract(key, symbol, underlying_key, expiry, strike, kind)
            for key, symbol, underlying_key, expiry, strike, kind, active in rows
            if active
        ]
        self._loaded_at = time.monotonic()

    def status(self) -> OptionChainsStatus:
        planned = self._plan
        windows = planned.windows if planned else ()
        found = {contract.underlying for contract in self._contracts}
        waiting = {name for name in self._underlyings if name not in found}
        waiting.update(planned.waiting if planned else found)
        return OptionChainsStatus(
            mode=self.mode,
            underlyings=list(self._underlyings),
            strikes=planned.strikes if planned else self._strikes,
            windows=[
                ChainWindowStatus(
                    w.underlying, w.expiry, w.atm_strike, w.low_strike, w.high_strike, len(w.keys)
                )
                for w in windows
            ],
            waiting=sorted(waiting),
            last_error=self._error,
        )
