"""Symbols to instrument keys and back, remembered so a hot endpoint asks the database once."""

from __future__ import annotations

from collections.abc import Iterable

from psycopg_pool import ConnectionPool

from ingest.store.instruments import UnknownSymbol, resolve_symbol


class SymbolResolver:
    """A bounded memory of `resolve_symbol` and of each key's trading symbol.

    Only answers are remembered, never misses, so an instrument loaded later is found. The
    bound matters because trading symbols resolve in any case: "infy", "Infy" and "INFY" are
    three entries, and a client could otherwise make the maps grow without end.
    """

    def __init__(self, pool: ConnectionPool, max_entries: int = 10_000) -> None:
        self._pool = pool
        self._max = max_entries
        self._keys: dict[str, str] = {}
        self._symbols: dict[str, str] = {}

    def resolve(self, symbols: Iterable[str]) -> list[str]:
        """The key of each symbol, in order; UnknownSymbol names every one that is not known."""
        symbols = list(symbols)
        found: dict[str, str] = {}
        missing = []
        for symbol in dict.fromkeys(symbols):
            key = self._keys.get(symbol)
            if key is None:
                missing.append(symbol)
            else:
                found[symbol] = key
        unknown = []
        if missing:
            with self._pool.connection() as conn:
                for symbol in missing:
                    try:
                        found[symbol] = resolve_symbol(conn, symbol)
                    except UnknownSymbol as exc:
                        unknown.append((symbol, exc))
                    else:
                        self._remember(self._keys, symbol, found[symbol])
        if len(unknown) == 1:
            raise unknown[0][1]
        if unknown:
            names = ", ".join(repr(symbol) for symbol, _ in unknown)
            raise UnknownSymbol(
                f"unknown symbols {names}: no trading symbol, index name or instrument key in "
                "the instrument master matches them"
            )
        return [found[symbol] for symbol in symbols]

    def remembered(self, symbols: list[str]) -> list[str] | None:
        """The keys of `symbols` when every one is already known, without the database."""
        keys = []
        for symbol in symbols:
            key = self._keys.get(symbol)
            if key is None:
                return None
            keys.append(key)
        return keys

    def trading_symbols(self, keys: Iterable[str]) -> dict[str, str]:
        """key -> trading symbol; a key missing from the master maps to itself."""
        found = {key: self._symbols.get(key) or key for key in keys}
        missing = [key for key in found if key not in self._symbols]
        if missing:
            with self._pool.connection() as conn:
                rows = conn.execute(
                    "SELECT instrument_key, trading_symbol FROM instruments"
                    " WHERE instrument_key = ANY(%s)",
                    [missing],
                ).fetchall()
            for key, symbol in rows:
                found[key] = symbol
                self._remember(self._symbols, key, symbol)
        return found

    def _remember(self, memory: dict[str, str], name: str, value: str) -> None:
        if len(memory) >= self._max:
            memory.clear()  # crude but bounded; a steady working set refills at once
        memory[name] = value
