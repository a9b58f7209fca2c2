"""Each instrument's forming 1-minute bar and the one before it, from every tick the ingest
writes: what the API's stream pushes as bars (ingest/channels/ publishes them).

The bar is the stored `ohlc_1m` row's arithmetic (sql/006_bars.*.sql) done as the ticks pass:
bucket = time_bucket('1 minute', ts), open = first(ltp, ts), high, low, close = last(ltp, ts),
volume = sum(volume_delta) (None while every delta is None, as SQL's sum), tick_count =
count(*). It is fed the same frames as the writer, replayed journal frames included, and
starts from the stored ticks of the minute a restart falls in (`seed`), so once its minute
is over the previous bar equals the stored row. Ties on `ts` go to the tick that
came first, as first() and last() keep the first row they see of equal times.

A tick of the minute before the forming one (a late tick) still updates the previous bar; a
tick older than that cannot change what is published and is left to the database.
"""

from __future__ import annotations

from collections.abc import Iterable

from store.tick_row import KEY, LTP, TS, VOLUME_DELTA, Tick

MINUTE_US = 60_000_000

# The published row: the key, the forming bar, then the previous minute's (prev_bucket 0 and
# every prev_* column None before there is one). Times are microseconds since 2000, as ticks'.
_BAR = ("bucket", "open", "high", "low", "close", "volume", "tick_count")
_BAR_TYPES = ("timestamptz", "float8", "float8", "float8", "float8", "int8", "int8")
BAR_COLUMN_TYPES: dict[str, str] = {
    "instrument_key": "text",
    **dict(zip(_BAR, _BAR_TYPES, strict=True)),
    **{f"prev_{name}": pg_type for name, pg_type in zip(_BAR, _BAR_TYPES, strict=True)},
}
BAR_FIELDS = _BAR

# A bar in the making: [bucket, open, open_ts, high, low, close, close_ts, volume, count].
_BUCKET, _OPEN, _OPEN_TS, _HIGH, _LOW, _CLOSE, _CLOSE_TS, _VOLUME, _COUNT = range(9)


def _fold_ticks(bars: dict[str, list[list | None]], changed: set[str], ticks: list[Tick]) -> None:
    """Each tick into its instrument's forming bar (or the one before it, for a late tick),
    its key into `changed`."""
    for tick in ticks:
        key = tick[KEY]
        ts = tick[TS]
        bucket = ts - ts % MINUTE_US
        pair = bars.get(key)
        if pair is None:
            bars[key] = [_new(bucket, tick), None]
        else:
            forming = pair[0]
            if bucket == forming[_BUCKET]:
                _update(forming, ts, tick)
            elif bucket > forming[_BUCKET]:
                pair[1] = forming
                pair[0] = _new(bucket, tick)
            elif pair[1] is not None and bucket == pair[1][_BUCKET]:
                _update(pair[1], ts, tick)
            else:
                continue  # older than the published minutes: the database has it
        changed.add(key)


def _new(bucket: int, tick: Tick) -> list:
    ltp = tick[LTP]
    ts = tick[TS]
    return [bucket, ltp, ts, ltp, ltp, ltp, ts, tick[VOLUME_DELTA], 1]


def _update(bar: list, ts: int, tick: Tick) -> None:
    ltp = tick[LTP]
    if ts < bar[_OPEN_TS]:
        bar[_OPEN] = ltp
        bar[_OPEN_TS] = ts
    if ts > bar[_CLOSE_TS]:
        bar[_CLOSE] = ltp
        bar[_CLOSE_TS] = ts
    if ltp > bar[_HIGH]:
        bar[_HIGH] = ltp
    if ltp < bar[_LOW]:
        bar[_LOW] = ltp
    delta = tick[VOLUME_DELTA]
    if delta is not None:
        bar[_VOLUME] = delta if bar[_VOLUME] is None else bar[_VOLUME] + delta
    bar[_COUNT] += 1


def _values(bar: list | None) -> tuple:
    if bar is None:
        return (0, None, None, None, None, None, None)
    return (
        bar[_BUCKET],
        bar[_OPEN],
        bar[_HIGH],
        bar[_LOW],
        bar[_CLOSE],
        bar[_VOLUME],
        bar[_COUNT],
    )


def _row(key: str, forming: list, previous: list | None) -> Tick:
    return (key, *_values(forming), *_values(previous))


class PythonMinuteBarHandler:
    """The pipeline's handler of the forming bars, the reference: `on_frame` as the
    writer's, O(1) per tick; `take_changed` the published table's feed, like the latest-tick
    cache's. Memory is one pair of bars per instrument the cache holds.

    `MinuteBarHandler` is the compiled one (`_minute_bars.pyx`) where that is built
    (`BARS_IMPLEMENTATION`), held to this one rule for rule."""

    def __init__(self) -> None:
        self.bars: dict[str, list[list | None]] = {}  # key -> [forming, previous]
        self._changed: set[str] = set()

    def seed(self, rows: Iterable[tuple]) -> None:
        """Start from the stored bars of each instrument's newest minute and the one before
        (`store.ticks.forming_bar_rows`, in bucket order), so that after a restart the
        forming bar still counts the ticks committed before the stop; the replayed journal
        frames that follow add the ones that were not."""
        for key, *bar in rows:
            pair = self.bars.get(key)
            self.bars[key] = [bar, None if pair is None else pair[0]]
            self._changed.add(key)

    def on_frame(self, seq: int, ticks: list[Tick]) -> None:
        _fold_ticks(self.bars, self._changed, ticks)

    def take_changed(self) -> dict[str, Tick]:
        """key -> published row of each instrument whose bars changed since the last call."""
        changed, self._changed = self._changed, set()
        return {key: _row(key, *self.bars[key]) for key in changed}

    def take_published(self) -> dict[str, Tick]:
        """What the bars' table takes (ingest/channels/latest_publisher.py's `publish_forever`):
        the rows, here; the compiled handler hands over packed slot bodies."""
        return self.take_changed()


try:
    from ingest._minute_bars import BODY_CODES
    from ingest._minute_bars import MinuteBars as MinuteBarHandler
except ImportError:  # not built: no C compiler at install time
    MinuteBarHandler = PythonMinuteBarHandler
    BARS_IMPLEMENTATION = "python"
else:
    BARS_IMPLEMENTATION = "compiled"
    if "".join("d" if t == "float8" else "q" for t in _BAR_TYPES * 2) != BODY_CODES:
        raise ImportError("the published bar's columns moved: _minute_bars.pyx must follow them")
