"""Symbols to instrument keys and back, remembered so a hot endpoint asks the database once."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from cachetools import Cache, LRUCache, TTLCache
from psycopg_pool import ConnectionPool

from store.instruments import keys_of, resolve_symbols, trading_symbols

# How long a symbol that names nothing is taken as unknown without asking again. Long enough
# that a client repeating a list of wrong names costs one query per few seconds rather than
# one per name per request; short enough that an instrument loaded meanwhile (`tickvault
# instruments load`) is found by the next request after it, without restarting the API.
UNKNOWN_TTL_S = 5.0
# How long a symbol's key is remembered: after `tickvault instruments refresh` relists a
# symbol under a new key (the old one kept, inactive), the API means the live one within
# this long, while a hot symbol still costs one query per few minutes.
KNOWN_TTL_S = 300.0


class SymbolResolver:
    """Bounded memories of which key each symbol names, of the symbols that name none, and
    of each key's trading symbol.

    Keys are kept for KNOWN_TTL_S (or until the bound pushes them out), unknown symbols for
    UNKNOWN_TTL_S. The
    bounds matter because trading symbols resolve in any case: "infy", "Infy" and "INFY" are
    three entries, and a client could otherwise make the memories grow without end.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        max_entries: int = 10_000,
        unknown_ttl_s: float = UNKNOWN_TTL_S,
        known_ttl_s: float = KNOWN_TTL_S,
    ) -> None:
        self._pool = pool
        self._keys: TTLCache[str, str] = TTLCache(max_entries, ttl=known_ttl_s)
        self._unknown: TTLCache[str, bool] = TTLCache(max_entries, ttl=unknown_ttl_s)
        self._symbols: LRUCache[str, str] = LRUCache(max_entries)
        self._lock = threading.Lock()  # the caches are shared by the request threads

    def _get(self, cache: Cache, key: str) -> Any:
        with self._lock:
            return cache.get(key)

    def _put(self, cache: Cache, key: str, value: object) -> None:
        with self._lock:
            cache[key] = value

    def resolve(self, symbols: Iterable[str]) -> list[str]:
        """The key of each symbol, in order, asking the database (once) for those not in
        memory; UnknownSymbol names every one that is not known."""
        symbols = list(symbols)
        keys = self._recall(symbols)
        missing = self._unanswered(symbols, keys)
        if missing:
            with self._pool.connection() as conn:
                found = resolve_symbols(conn, missing)
            for symbol in missing:
                if symbol in found:
                    keys[symbol] = found[symbol]
                    self._put(self._keys, symbol, found[symbol])
                else:
                    self._put(self._unknown, symbol, True)
        return keys_of(symbols, keys)

    def remembered(self, symbols: Sequence[str]) -> list[str] | None:
        """The keys of `symbols` from memory alone, or None when one needs the database.

        UnknownSymbol when memory has every answer and one of them is "unknown".
        """
        keys = self._recall(symbols)
        return None if self._unanswered(symbols, keys) else keys_of(symbols, keys)

    def trading_symbols(self, keys: Iterable[str]) -> dict[str, str]:
        """key -> trading symbol; a key missing from the master maps to itself."""
        remembered = {key: self._get(self._symbols, key) for key in keys}
        found = {key: symbol or key for key, symbol in remembered.items()}
        missing = [key for key, symbol in remembered.items() if symbol is None]
        if missing:
            with self._pool.connection() as conn:
                stored = trading_symbols(conn, missing)
            for key, symbol in stored.items():
                found[key] = symbol
                self._put(self._symbols, key, symbol)
        return found

    def _recall(self, symbols: Iterable[str]) -> dict[str, str]:
        """symbol -> key for the symbols memory knows a key of."""
        keys = {}
        for symbol in symbols:
            key = self._get(self._keys, symbol)
            if key is not None:
                keys[symbol] = key
        return keys

    def _unanswered(self, symbols: Iterable[str], keys: dict[str, str]) -> list[str]:
        """The symbols memory knows neither a key of nor as unknown, once each, in order."""
        return [
            symbol
            for symbol in dict.fromkeys(symbols)
            if symbol not in keys and not self._get(self._unknown, symbol)
        ]
