"""The example signal handler: a tick's volume or return far outside the symbol's recent ones.

Off unless `TICKVAULT_SPIKE_DETECTOR=true`; then the ingest registers it as a custom handler,
and each spike it finds is a signal (ingest/signals.py): in `signals.log`, the `signals`
table, `GET /api/v1/signals` and on the live page's candles. The simulator makes an
occasional volume spike (ingest/simulator/market.py), so `make run` shows one within minutes.

"Recent" is an exponentially weighted mean and variance over about `window` ticks of each
symbol (the weight of a tick halves after about window/3 more): no history to load, a few
floats per symbol, and it follows a symbol whose activity changes during the day. A tick is
a spike when its value is more than `z` of those standard deviations above the mean
(volume: `volume_delta`, what the tick traded) or away from it (return: the log return since
the symbol's previous tick). The first window/4 ticks of a symbol only teach it.

It reads nothing but the tick, so after a crash the frames given to it again emit the same
signals once its averages are warm again (see docs/guide.md, "Signals").
"""

from __future__ import annotations

import math

from ingest.signals import emit_signal
from ingest.tick_data import TickData


class _Moments:
    """An exponentially weighted mean and variance (West's update), and how many fed it."""

    __slots__ = ("count", "mean", "var")

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.var = 0.0

    def score_and_add(self, x: float, alpha: float) -> float:
        """How many standard deviations x is from the mean so far (0 until there is a
        spread), then take x in."""
        sd = math.sqrt(self.var)
        score = (x - self.mean) / sd if sd > 0 else 0.0
        if self.count == 0:
            self.mean = x
        else:
            diff = x - self.mean
            incr = alpha * diff
            self.mean += incr
            self.var = (1 - alpha) * (self.var + diff * incr)
        self.count += 1
        return score


class SpikeDetector:
    """Emits `volume_spike` and `return_spike` signals (see the module)."""

    def __init__(self, window: int = 200, z: float = 10.0) -> None:
        self.alpha = 2 / (window + 1)
        self.warmup = window // 4
        self.z = z
        self._volume: dict[str, _Moments] = {}
        self._returns: dict[str, _Moments] = {}
        self._last_price: dict[str, float] = {}

    async def handle_tick(self, tick: TickData) -> bool:
        """True when the tick was a spike (a signal emitted), False otherwise."""
        key = tick.instrument_key
        found = False
        if tick.volume_delta is not None:
            volume = self._volume.setdefault(key, _Moments())
            score = volume.score_and_add(float(tick.volume_delta), self.alpha)
            if volume.count > self.warmup and score > self.z:
                emit_signal(
                    "volume_spike",
                    float(tick.volume_delta),
                    side=None,
                    z=round(score, 1),
                    mean=round(volume.mean, 1),
                    price=tick.last_price,
                )
                found = True
        previous = self._last_price.get(key)
        self._last_price[key] = tick.last_price
        if previous and tick.last_price > 0:
            moves = self._returns.setdefault(key, _Moments())
            change = math.log(tick.last_price / previous)
            score = moves.score_and_add(change, self.alpha)
            if moves.count > self.warmup and abs(score) > self.z:
                emit_signal(
                    "return_spike",
                    change,
                    side="buy" if change > 0 else "sell",
                    z=round(score, 1),
                    price=tick.last_price,
                )
                found = True
        return found
