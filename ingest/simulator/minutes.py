"""The simulator's history: per instrument, one OHLCV aggregate per minute, kept as it trades.

The candle endpoints (candles.py) answer from here, so the simulator's memory does not grow
with the ticks it sends: a minute costs the same 49 bytes whether one trade or ten thousand
fell in it, and minutes older than `days` IST dates are dropped. The bound is therefore
instruments that trade x 1440 minutes x `days` x 49 bytes (about 141 kB per instrument for
the default 2 days).

Two kinds of trade reach a minute:

- a *sent* tick (`sent`): a trade the simulator wrote to a client. Its volume is the rise
  of the day's traded quantity (`vtt`) since the instrument's previous sent tick; the first
  tick ever sent of an instrument adds nothing (what traded before it was never streamed),
  the rule tickvault's decoder follows for the first tick it hears.
- a *background* trade (`traded`): a trade of an instrument nobody follows (the whole
  market, server.py). Its volume is the rise of `vtt` since the previous trade of any kind.

A minute in which any tick was sent is made of its sent ticks alone, so that its candle is
exactly what a client that heard the minute stored; only a minute nobody heard is made of
background trades. An index has volume 0, as on Upstox.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterator

from ingest.simulator.market import DAY_MS, IST_OFFSET_MS, Instrument

MINUTE_MS = 60_000
DEFAULT_DAYS = 2
BYTES_PER_MINUTE = 8 + 4 * 8 + 8 + 1  # minute, open/high/low/close, volume, streamed

Minute = tuple[int, float, float, float, float, int]  # epoch minute, open, high, low, close, vol


class _Series:
    """One instrument's minutes: the current one in attributes (every trade touches it),
    the finished ones in arrays (a few bytes each, no object per minute)."""

    __slots__ = (
        "close",
        "closes",
        "high",
        "highs",
        "last_vtt",
        "low",
        "lows",
        "minute",
        "minutes",
        "open",
        "opens",
        "sent_vtt",
        "streamed",
        "streamed_flags",
        "volume",
        "volumes",
    )

    def __init__(self) -> None:
        self.minutes = array("q")
        self.opens, self.highs = array("d"), array("d")
        self.lows, self.closes = array("d"), array("d")
        self.volumes = array("q")
        self.streamed_flags = array("b")
        self.minute = -1  # none yet
        self.open = self.high = self.low = self.close = 0.0
        self.volume = 0
        self.streamed = False
        self.sent_vtt: int | None = None  # vtt of the previous sent tick
        self.last_vtt: int | None = None  # vtt of the previous trade, sent or not

    def add(self, minute: int, price: float, volume: int, streamed: bool) -> None:
        if minute != self.minute:
            if self.minute >= 0:
                self._finish()
            self._begin(minute, price, volume, streamed)
        elif streamed and not self.streamed:
            self._begin(minute, price, volume, True)  # heard: the minute is what was sent
        elif streamed == self.streamed:
            if price > self.high:
                self.high = price
            elif price < self.low:
                self.low = price
            self.close = price
            self.volume += volume
        # else a background trade in a minute that was heard: not part of its candle

    def _begin(self, minute: int, price: float, volume: int, streamed: bool) -> None:
        self.minute = minute
        self.open = self.high = self.low = self.close = price
        self.volume = volume
        self.streamed = streamed

    def _finish(self) -> None:
        self.minutes.append(self.minute)
        self.opens.append(self.open)
        self.highs.append(self.high)
        self.lows.append(self.low)
        self.closes.append(self.close)
        self.volumes.append(self.volume)
        self.streamed_flags.append(self.streamed)

    def drop_before(self, minute: int) -> None:
        """Forget the finished minutes before `minute`."""
        if self.minutes and self.minutes[0] < minute:
            n = bisect_left(self.minutes, minute)
            for column in self._columns():
                del column[:n]

    def _columns(self) -> tuple[array, ...]:  # type: ignore[type-arg]
        return (
            self.minutes,
            self.opens,
            self.highs,
            self.lows,
            self.closes,
            self.volumes,
            self.streamed_flags,
        )

    def __len__(self) -> int:
        return len(self.minutes) + (self.minute >= 0)

    def between(self, first: int, last: int) -> Iterator[Minute]:
        """Minutes `first`..`last` (epoch minutes, both included), oldest first."""
        start = bisect_left(self.minutes, first)
        end = bisect_left(self.minutes, last + 1)
        for i in range(start, end):
            yield (
                self.minutes[i],
                self.opens[i],
                self.highs[i],
                self.lows[i],
                self.closes[i],
                self.volumes[i],
            )
        if first <= self.minute <= last:
            yield (self.minute, self.open, self.high, self.low, self.close, self.volume)


class MinuteBook:
    """Every instrument's minutes; see the module docstring. `days` IST dates are kept:
    today's and the `days - 1` before it."""

    def __init__(self, days: int = DEFAULT_DAYS) -> None:
        if days < 1:
            raise ValueError("days must be at least 1")
        self.days = days
        self._series: dict[str, _Series] = {}
        self._kept_from = 0  # epoch minute: the first minute of the oldest day kept

    def sent(self, instrument: Instrument) -> None:
        """`instrument`'s last trade went to a client: on every tick sent, so the common
        case (one more tick of a minute already heard) is written out here."""
        series = self._series.get(instrument.key)
        if series is None:
            series = self._series_of(instrument)
        traded = 0
        if not instrument.index:
            vtt, previous = instrument.vtt, series.sent_vtt
            if previous is not None:
                traded = vtt - previous if vtt >= previous else vtt  # see _rise
            series.sent_vtt = series.last_vtt = vtt
        if instrument.ltt // MINUTE_MS == series.minute and series.streamed:
            price = instrument.ltp
            if price > series.high:
                series.high = price
            elif price < series.low:
                series.low = price
            series.close = price
            series.volume += traded
        else:
            self._add(series, instrument, traded, True)

    def traded(self, instrument: Instrument) -> None:
        """`instrument` traded and nobody heard it."""
        series = self._series_of(instrument)
        vtt = None if instrument.index else instrument.vtt
        traded = _rise(series.last_vtt, vtt)
        if vtt is not None:
            series.last_vtt = vtt
        self._add(series, instrument, traded, False)

    def minutes(self, key: str, first: int, last: int) -> list[Minute]:
        """`key`'s minutes from epoch minute `first` to `last`, oldest first."""
        series = self._series.get(key)
        return [] if series is None else list(series.between(first, last))

    def size(self) -> int:
        """Minutes held, over every instrument: what the memory bound counts."""
        return sum(len(series) for series in self._series.values())

    def _series_of(self, instrument: Instrument) -> _Series:
        series = self._series.get(instrument.key)
        if series is None:
            series = self._series[instrument.key] = _Series()
        return series

    def _add(self, series: _Series, instrument: Instrument, traded: int, streamed: bool) -> None:
        minute = instrument.ltt // MINUTE_MS
        if minute != series.minute and minute >= self._kept_from + self.days * 1440:
            self._new_day(minute)
        series.add(minute, instrument.ltp, traded, streamed)

    def _new_day(self, minute: int) -> None:
        """A trade of a day past the kept window: drop the days that fell out of it."""
        local_ms = minute * MINUTE_MS + IST_OFFSET_MS
        today_starts = (local_ms - local_ms % DAY_MS - IST_OFFSET_MS) // MINUTE_MS
        self._kept_from = today_starts - (self.days - 1) * 1440
        for series in self._series.values():
            series.drop_before(self._kept_from)
            if 0 <= series.minute < self._kept_from:
                series.minute = -1


def _rise(previous: int | None, vtt: int | None) -> int:
    """Quantity traded since `previous`: nothing for a first tick or an index, the whole
    total after a counter that restarted."""
    if vtt is None or previous is None:
        return 0
    return vtt - previous if vtt >= previous else vtt
