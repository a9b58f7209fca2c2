"""Trading symbols and instrument keys, both ways, for the instruments the ingest follows.

The feed speaks instrument keys (`NSE_EQ|INE009A01021`); people say INFY. The directory
learns the symbols of keys when they are subscribed (one query per subscription change), so
that a custom handler's TickData and a log line can name the symbol without a query per
tick, and `get_latest_tick("INFY")` is a dict lookup after its first resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import psycopg

from store.instruments import keys_of, resolve_symbols, trading_symbols

_INDEX_SEGMENTS = ("NSE_INDEX", "BSE_INDEX")  # an index's key is its segment and its name


class SymbolDirectory:
    """key -> trading symbol for followed keys; what people call an instrument -> its key.

    Both maps only grow with instruments that exist in the master (an unknown symbol is
    an error, not an entry), so they stay bounded by it. Blocking (a query when something is
    not known yet): call `learn` and a first `key_of` from a thread in async code.
    """

    def __init__(
        self, connection: Callable[[], AbstractContextManager[psycopg.Connection]]
    ) -> None:
        """`connection()` lends a database connection (a pool's `connection`, say)."""
        self._connection = connection
        self._symbols: dict[str, str] = {}
        self._keys: dict[str, str] = {}  # trading symbol -> key, of followed keys
        self._resolved: dict[str, str] = {}  # what a caller typed -> its key

    def learn(self, keys: Iterable[str]) -> None:
        """Look up the trading symbols of keys not known yet."""
        missing = [key for key in keys if key not in self._symbols]
        if not missing:
            return
        with self._connection() as conn:
            found = trading_symbols(conn, missing)
        for key in missing:
            self._symbols[key] = symbol = found.get(key, key)
            self._keys.setdefault(symbol, key)

    def followed_key(self, symbol: str) -> str | None:
        """The key of a followed instrument by its trading symbol or key, from memory only
        (a signal's symbol is checked on the event loop); None when it is not followed."""
        if symbol in self._symbols:
            return symbol
        key = self._keys.get(symbol) or self._resolved.get(symbol)
        if key is None:  # an index by its name, as Upstox keys it: `Nifty 50`
            indices = (f"{segment}|{symbol}" for segment in _INDEX_SEGMENTS)
            key = next((index for index in indices if index in self._symbols), None)
        return key

    def symbol_of(self, key: str) -> str:
        """The trading symbol of a followed key; the key itself when it is not known."""
        return self._symbols.get(key, key)

    def key_of(self, symbol: str) -> str:
        """The key of a trading symbol, index name or key; UnknownSymbol when none matches."""
        if symbol in self._symbols:
            return symbol
        key = self._resolved.get(symbol)
        if key is None:
            # The store's rules (NSE cash first, any case); a symbol listed in several
            # segments is not guessed from what happens to be followed.
            with self._connection() as conn:
                [key] = keys_of([symbol], resolve_symbols(conn, [symbol]))
            self._resolved[symbol] = key
        return key
