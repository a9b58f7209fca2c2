"""The one retry delay of the ingest: exponential, capped, with jitter.

The feed client waits this way between reconnects and the writer between database retries.
The delay doubles so that a server that stays down is not hammered, is capped so that
recovery is noticed within `maximum`, and is jittered so that many connections (or many
ingest processes) that failed together do not all retry at the same instant.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

_MAX_DOUBLINGS = 32  # far past any cap; keeps 2**attempt from growing without end


@dataclass
class Backoff:
    """Delays of `min(maximum, initial * 2**n) * uniform(*jitter)` for the n-th retry in a row.

    `reset()` when the thing retried has worked again, so that the next failure is retried
    quickly rather than after the longest delay.
    """

    initial: float
    maximum: float
    jitter: tuple[float, float] = (0.5, 1.0)
    attempt: int = 0

    def delay(self) -> float:
        """The next delay in seconds; each call counts one more retry."""
        base = min(self.maximum, self.initial * 2**self.attempt)
        self.attempt = min(self.attempt + 1, _MAX_DOUBLINGS)
        return base * random.uniform(*self.jitter)

    def reset(self) -> None:
        """Start again from `initial`."""
        self.attempt = 0

    async def sleep(self) -> None:
        """Wait the next delay."""
        await asyncio.sleep(self.delay())
