"""Which connection takes which key: the feed's per-mode key limits, worked out with no I/O.

Upstox caps the keys one websocket may carry per mode, with a higher cap when a mode is the
only one on the connection than when modes are combined. The client refuses a request that
would exceed those caps before anything is sent, because the server would refuse part of it
with an error frame later, leaving a half-subscribed universe. Keeping the arithmetic here,
away from sockets and the event loop, lets it be tested case by case and lets the facade ask
"would this fit?" without changing anything.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


class SubscriptionLimitError(ValueError):
    """More keys than the configured connections may carry in a mode; nothing was subscribed."""


@dataclass
class Assignment:
    """What one connection is to send for a request: keys it newly takes, keys changing mode."""

    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


def unique(keys: Iterable[str]) -> list[str]:
    """The keys once each, in their first order.

    A lone string is refused: iterating it would subscribe one "key" per character.
    """
    if isinstance(keys, str):
        raise TypeError("keys must be a list of instrument keys, not one string")
    return list(dict.fromkeys(keys))


@dataclass(frozen=True)
class Capacity:
    """The limits of `max_connections` connections, `limits` being mode -> (alone, combined).

    "alone" is how many keys a connection may carry in a mode when it carries no other mode;
    "combined" is the cap for each mode once a connection carries two or more.
    """

    limits: Mapping[str, tuple[int, int]]
    max_connections: int

    def plan(
        self, keys: Sequence[str], mode: str, held: Sequence[Mapping[str, str]]
    ) -> dict[int, Assignment]:
        """Where `keys` go in `mode`, given what each open connection holds (key -> mode).

        Returns {connection index: Assignment}; an index past `held` is a connection still
        to be opened. A key already held stays on its connection and changes mode there (a
        key never moves, so its ticks never pause); new keys fill the connections in order.
        All or nothing: raises SubscriptionLimitError if any part does not fit, and
        ValueError for a mode without configured limits. `keys` must hold no duplicates
        (see `unique`). Nothing passed in is changed.
        """
        if mode not in self.limits:
            raise ValueError(f"unknown mode {mode!r}; configured modes: {', '.join(self.limits)}")
        held = [*held, *({} for _ in range(len(held), self.max_connections))]
        counts = [Counter(modes.values()) for modes in held]
        plan: dict[int, Assignment] = {}
        new: list[str] = []
        for key in keys:
            index = next((i for i, modes in enumerate(held) if key in modes), None)
            if index is None:
                new.append(key)
            elif (old := held[index][key]) != mode:
                plan.setdefault(index, Assignment()).changed.append(key)
                counts[index][old] -= 1
                counts[index][mode] += 1
        if any(self.room(counts[index], mode) < 0 for index in plan):
            raise self.limit_error(len(keys), mode, counts)
        rest = new
        for index, count in enumerate(counts):
            if not rest:
                break
            take = min(max(self.room(count, mode), 0), len(rest))
            if take:
                plan.setdefault(index, Assignment()).new.extend(rest[:take])
                count[mode] += take
                rest = rest[take:]
        if rest:
            raise self.limit_error(len(new), mode, [Counter(modes.values()) for modes in held])
        return plan

    def free(self, mode: str, held: Sequence[Mapping[str, str]]) -> int:
        """How many more `mode` keys the connections could take, those not opened yet too:
        the budget of a caller that sizes its request to fit (the option-chain windows)."""
        held = [*held, *({} for _ in range(len(held), self.max_connections))]
        return sum(max(self.room(Counter(modes.values()), mode), 0) for modes in held)

    def room(self, counts: Mapping[str, int], mode: str) -> int:
        """How many more `mode` keys fit a connection holding `counts` (negative: over)."""
        others = {m: n for m, n in counts.items() if m != mode and n > 0}
        if not others:
            return self.limits[mode][0] - counts.get(mode, 0)
        if any(n > self.limits[m][1] for m, n in others.items()):
            return -1
        return self.limits[mode][1] - counts.get(mode, 0)

    def limit_error(
        self, requested: int, mode: str, counts: Sequence[Mapping[str, int]]
    ) -> SubscriptionLimitError:
        """The refusal, saying how much room is left and which per-connection caps apply."""
        allowed = sum(max(self.room(count, mode), 0) for count in counts)
        single, combined = self.limits[mode]
        n = self.max_connections
        return SubscriptionLimitError(
            f"cannot subscribe {requested} keys in mode {mode!r}: {n} connection(s) have room "
            f"for {allowed} more (per connection {single} keys when {mode!r} is the only mode, "
            f"{combined} when modes are combined); nothing was subscribed"
        )
