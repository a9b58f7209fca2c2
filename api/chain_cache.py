"""What the chain "now" needs from the database, kept so that a warm request reads none.

`GET /api/v1/option-chain/{underlying}` without `at` answers from the latest ticks the ingest
publishes; the database only says which contracts make up the chain (the instrument master
changes once a day) and each contract's first OI of the day (fixed once seen), and both are
kept here. A chain's contracts are asked again after CONTRACTS_TTL_S, and the nearest
expiry's (asked without one) once that expiry has closed, since the nearest moves on; a
contract without an opening OI yet (no tick today) is asked again at most every
OPENING_RETRY_S.
"""

from __future__ import annotations

import threading
import time
from datetime import date, datetime

from psycopg_pool import ConnectionPool

from api.ingest_state import PublishedIngest
from core.ist import ist_day
from store.option_chain import Chain, OptionChain, chain_contracts, chain_from_ticks, opening_oi

CONTRACTS_TTL_S = 300.0
OPENING_RETRY_S = 30.0


class ChainCache:
    """Thread-safe: the API's threadpool shares one."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._chains: dict[tuple[str, date | None], tuple[float, Chain]] = {}
        self._opening: dict[str, float] = {}  # of `_day`'s contracts
        self._missing_asked: dict[str, float] = {}  # when a key without one was last asked
        self._day: date | None = None

    def now(
        self, published: PublishedIngest, underlying: str, expiry: date | None, now: datetime
    ) -> OptionChain:
        """The chain from the latest ticks `published`; IngestNotRunning or SlotBusy when
        they cannot be read, ChainError or UnknownSymbol for a chain that does not exist."""
        chain = self.chain(underlying, expiry, now)
        latest = published.latest([chain.underlying_key, *chain.keys])
        return chain_from_ticks(chain, latest, self.opening(chain, ist_day(now)))

    def chain(self, underlying: str, expiry: date | None, now: datetime) -> Chain:
        """The contracts of the chain (expiry None: the nearest not closed at `now`)."""
        wanted = (underlying.strip().upper(), expiry)
        kept = self._chains.get(wanted)
        if (
            kept is not None
            and time.monotonic() < kept[0]
            and (expiry is not None or now < kept[1].expires_at)  # the nearest moves on
        ):
            return kept[1]
        with self._pool.connection() as conn:
            chain = chain_contracts(conn, underlying, expiry, now)
        with self._lock:
            self._chains[wanted] = (time.monotonic() + CONTRACTS_TTL_S, chain)
        return chain

    def opening(self, chain: Chain, day: date) -> dict[str, float]:
        """The day's first OI of each of the chain's contracts that has one."""
        with self._lock:
            if day != self._day:
                self._day, self._opening, self._missing_asked = day, {}, {}
            clock = time.monotonic()
            ask = [
                key
                for key in chain.keys
                if key not in self._opening
                and clock - self._missing_asked.get(key, -OPENING_RETRY_S) >= OPENING_RETRY_S
            ]
            for key in ask:
                self._missing_asked[key] = clock
        if ask:
            with self._pool.connection() as conn:
                found = opening_oi(conn, ask, day)
            with self._lock:
                if day == self._day:
                    self._opening.update(found)
        return self._opening
