"""The instruments the simulator knows: made from the universe when first followed (or, for
a whole market, at start), trading at the feed's rate while any session follows them, and
in the background otherwise (server.py)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable

from ingest.simulator.market import Instrument, Universe


class Following:
    """Instrument key -> how many sessions follow it. An instrument is kept, with its price
    path, after its last session leaves, so a new subscriber sees it go on from there."""

    def __init__(self, universe: Universe) -> None:
        self._universe = universe
        self._instruments: dict[str, Instrument] = {}
        self._subscribers: Counter[str] = Counter()  # key -> sessions following it
        self._active: list[Instrument] | None = []  # None: rebuild from _subscribers
        self._idle: list[Instrument] | None = []  # None: rebuild from both
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        """Keys that at least one session follows."""
        return len(self._subscribers)

    def keys(self) -> list[str]:
        """The keys at least one session follows."""
        return list(self._subscribers)

    def __getitem__(self, key: str) -> Instrument:
        return self._instruments[key]

    def universe_keys(self, now_ms: int) -> list[str]:
        """The keys of the universe's listing (its records and option chains) at `now_ms`."""
        return [str(record["instrument_key"]) for record in self._universe.listing(now_ms)]

    @property
    def universe(self) -> Universe:
        return self._universe

    def known(self, key: str) -> Instrument | None:
        """`key`'s instrument if it was made already."""
        return self._instruments.get(key)

    def know(self, key: str, now_ms: int) -> Instrument:
        """`key`'s instrument, made (its day so far) if it is new."""
        instrument = self._instruments.get(key)
        if instrument is None:
            profile = self._universe.profile(key, now_ms)
            # An option prices itself on its underlying, which is known (and trades, if
            # anyone follows it or the whole market trades) with it.
            underlying = self.know(profile.underlying, now_ms) if profile.underlying else None
            instrument = Instrument(profile, self._universe, now_ms, underlying)
            self._instruments[key] = instrument
            self._idle = None
        return instrument

    def follow(self, key: str, now_ms: int) -> None:
        """One more session follows `key`."""
        self.know(key, now_ms)
        self._subscribers[key] += 1
        self._active = self._idle = None
        self._wake.set()

    def unfollow(self, key: str) -> None:
        """One session fewer follows `key`."""
        self._subscribers[key] -= 1
        if self._subscribers[key] <= 0:
            del self._subscribers[key]
        self._active = self._idle = None

    def leave(self, modes: dict[str, str], keys: Iterable[str] | None = None) -> None:
        """A session whose followed keys are `modes` (key -> mode) stops following `keys`
        (all of them by default): they leave `modes`, and are followed one session fewer."""
        for key in list(modes) if keys is None else keys:
            if modes.pop(key, None) is not None:
                self.unfollow(key)

    def active(self) -> list[Instrument]:
        """The followed instruments, in the order they were first followed."""
        if self._active is None:
            self._active = [self._instruments[key] for key in self._subscribers]
        return self._active

    def idle(self) -> list[Instrument]:
        """The instruments known and followed by no session."""
        if self._idle is None:
            followed = self._subscribers
            self._idle = [i for key, i in self._instruments.items() if key not in followed]
        return self._idle

    async def wait(self) -> None:
        """Until a session follows an instrument (again), for a market with nothing to trade."""
        self._wake.clear()
        await self._wake.wait()
