"""What the feed should carry, kept in the `subscriptions` table so a restart resumes it.

The client holds the live subscriptions; this module turns symbols into instrument keys,
sends them to the client in batches, and records each key's state. Rows are written `pending`
before the request and `subscribed` after it, so a crash in between leaves keys that
`resume()` subscribes again rather than keys nobody remembers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from core.config import Settings
from ingest.client import FeedClient, SubscriptionLimitError
from ingest.status import SubscriptionSummary
from ingest.symbols import SymbolDirectory
from store.instruments import fno_universe, keys_of, resolve_symbols
from store.subscriptions import listing, resumable, set_status, upsert

log = logging.getLogger(__name__)

BATCH_SIZE = 50  # keys per `sub` request

T = TypeVar("T")


def summarize(subscribed: int, failed: int, pending: int = 0) -> SubscriptionSummary:
    """The subscription figures the status endpoint shows, from counts."""
    total = subscribed + failed + pending
    return SubscriptionSummary(
        total_symbols=total,
        subscribed_count=subscribed,
        failed_count=failed,
        pending_count=pending,
        subscription_rate=f"{100 * subscribed / total if total else 0:.2f}%",
    )


def _named(keys: list[str], symbols: SymbolDirectory) -> str:
    """`INFY (NSE_EQ|INE009A01021), NSE_EQ|INE467B01029`: each key with its trading symbol
    where known, so that `grep INFY trading.log` finds the lines about INFY."""
    named = ((key, symbols.symbol_of(key)) for key in keys)
    return ", ".join(key if symbol == key else f"{symbol} ({key})" for key, symbol in named)


def _count(keys: list[str]) -> str:
    return f"{len(keys)} key" if len(keys) == 1 else f"{len(keys)} keys"


class SubscriptionManager:
    """Symbols in, subscriptions out, with their state in the database."""

    def __init__(
        self,
        client: FeedClient,
        pool: ConnectionPool,
        settings: Settings,
        *,
        symbols: SymbolDirectory | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        """`symbols` learns the trading symbol of every key before it is subscribed, so that
        its first tick and the log lines name it (the service shares one with its cache)."""
        self._client = client
        self._pool = pool
        self._symbols = symbols or SymbolDirectory(pool.connection)
        self._index_keys = settings.index_keys
        self._batch_size = batch_size
        # Serializes writes: a refusal from the server must not be overwritten by the
        # `subscribed` of the batch it refused.
        self._write_lock = asyncio.Lock()
        # Serializes changes: a resume (the daily schedule's resubscribe) reads the table and
        # then subscribes; an unsubscribe or a mode change in between must not be undone.
        self._changing = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        client.add_failure_listener(self._on_refused)

    async def subscribe_to_universe(self, mode: str = "full") -> list[str]:
        """NSE's F&O stocks (from the instrument master) and the configured indices."""
        stocks = await self._read(fno_universe)
        keys = list(dict.fromkeys([*stocks, *self._index_keys]))
        async with self._changing:
            await self._subscribe(keys, mode)
        log.info("subscribed %d F&O stocks and %d indices", len(stocks), len(self._index_keys))
        return keys

    async def subscribe_to_symbols(self, symbols: Iterable[str], mode: str = "full") -> list[str]:
        """Subscribe trading symbols, index names or instrument keys; return their keys.

        An unknown symbol raises UnknownSymbol naming it, and nothing of the call is subscribed.
        """
        keys = await self._resolve(symbols)
        await self.subscribe_keys(keys, mode)
        return keys

    async def subscribe_keys(self, keys: list[str], mode: str = "full") -> None:
        """Subscribe instrument keys that were resolved already (the API resolves and caches)."""
        async with self._changing:
            await self._subscribe(keys, mode)

    async def unsubscribe_symbols(self, symbols: Iterable[str]) -> list[str]:
        """Unsubscribe symbols (as subscribe_to_symbols takes them); return their keys."""
        keys = await self._resolve(symbols)
        await self.unsubscribe_keys(keys)
        return keys

    async def unsubscribe_keys(self, keys: list[str], reason: str | None = None) -> None:
        """Unsubscribe instrument keys that were resolved already; `reason` is recorded with
        them (the F&O universe's refresh says a stock left it)."""
        async with self._changing:
            await self._client.unsubscribe(keys)
            await self._write(set_status, keys, "unsubscribed", reason)
        if keys:
            log.info("unsubscribed %s: %s", _count(keys), _named(keys, self._symbols))

    async def resume(self) -> int:
        """Subscribe again, in its mode, every key left subscribed or pending; return how many."""
        async with self._changing:
            rows = await self._read(resumable)
            by_mode: dict[str, list[str]] = {}
            for mode, key in rows:
                by_mode.setdefault(mode, []).append(key)
            for mode, keys in by_mode.items():
                await self._subscribe(keys, mode)
        if rows:
            log.info("resumed %d subscriptions", len(rows))
        return len(rows)

    def get_subscription_status(self) -> dict[str, Any]:
        """Counts and every subscription not unsubscribed.

        Blocking (one query): call it from a thread in async code that must not wait.
        """
        with self._pool.connection() as conn:
            rows = listing(conn)
        status = asdict(
            summarize(
                sum(row[3] == "subscribed" for row in rows),
                sum(row[3] == "failed" for row in rows),
                sum(row[3] == "pending" for row in rows),
            )
        )
        status["subscriptions"] = [
            {"symbol": symbol, "instrument_key": key, "mode": mode, "status": st, "error": err}
            for symbol, key, mode, st, err in rows
        ]
        return status

    async def _subscribe(self, keys: list[str], mode: str) -> None:
        """Check that all keys fit, record them pending, then send them batch by batch."""
        try:
            self._client.check_capacity(keys, mode)
        except SubscriptionLimitError as exc:
            held = self._client.subscribed_keys
            refused = [key for key in keys if key not in held]
            await self._write(upsert, refused, mode, "failed", str(exc))
            log.warning(
                "refused %s in %s mode (%s): %s",
                _count(refused),
                mode,
                exc,
                _named(refused, self._symbols),
            )
            raise
        await self._write(upsert, keys, mode, "pending")
        await asyncio.to_thread(self._symbols.learn, keys)
        for start in range(0, len(keys), self._batch_size):
            batch = keys[start : start + self._batch_size]
            await self._client.subscribe(batch, mode)
            async with self._write_lock:
                refused = self._client.failed_subscriptions()
                accepted = [key for key in batch if key not in refused]
                await asyncio.to_thread(self._execute, upsert, accepted, mode, "subscribed")
            if accepted:
                log.info(
                    "subscribed %s in %s mode: %s",
                    _count(accepted),
                    mode,
                    _named(accepted, self._symbols),
                )

    def _on_refused(self, failed: dict[str, str]) -> None:
        """The client heard the server refuse keys: record it (called on the event loop)."""
        task = asyncio.get_running_loop().create_task(self._record_refused(failed))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _record_refused(self, failed: dict[str, str]) -> None:
        symbols = self._symbols
        try:
            for error in set(failed.values()):
                keys = [key for key, e in failed.items() if e == error]
                log.warning(
                    "the feed refused %s (%s): %s", _count(keys), error, _named(keys, symbols)
                )
                await self._write(set_status, keys, "failed", error)
        except psycopg.Error as exc:
            log.warning(
                "could not record %d refused subscriptions (%s): %s",
                len(failed),
                _named(list(failed), symbols),
                exc,
            )

    async def _resolve(self, symbols: Iterable[str]) -> list[str]:
        if isinstance(symbols, str):
            raise TypeError("symbols must be a list of symbols, not one string")
        wanted = list(symbols)
        found = await self._read(lambda conn: resolve_symbols(conn, wanted))
        return list(dict.fromkeys(keys_of(wanted, found)))

    async def _read(self, query: Callable[[psycopg.Connection], T]) -> T:
        def run() -> T:
            with self._pool.connection() as conn:
                return query(conn)

        return await asyncio.to_thread(run)

    async def _write(self, write: Callable[..., None], keys: list[str], *args: Any) -> None:
        async with self._write_lock:
            await asyncio.to_thread(self._execute, write, keys, *args)

    def _execute(self, write: Callable[..., None], keys: list[str], *args: Any) -> None:
        """`write(conn, keys, *args)`, a write of store.subscriptions; no keys, no connection."""
        if keys:
            with self._pool.connection() as conn:
                write(conn, keys, *args)
