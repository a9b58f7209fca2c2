"""Backfilled minutes in ohlc_1m and ohlc_5m, on both editions, against an independent computation.

A trading day of ticks with holes goes in, then candles for the holes (and for a minute that
has ticks, which must not show): ohlc_1m must show the ticks' bars where there are ticks and
the candles elsewhere, ohlc_5m the 1-minute rows of either source rolled up, `backfill` where
any minute is; a late tick takes its minute back from the candle.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import date, datetime, timedelta

import psycopg

from store.backfill import MinuteBar, store_minute_bars
from store.bars import refresh_bars
from tests.test_bars import (
    INSTRUMENTS,
    MINUTE,
    Bars,
    Tick,
    bars_of_day,
    copy_ticks,
    expected_bars,
    generate_day,
    insert_one_by_one,
    ist,
    trading_day,
)

FIVE = 5 * MINUTE


def candles_for(key: str, minutes: list[datetime], seed: int) -> list[MinuteBar]:
    rng = random.Random(seed)
    candles = []
    for minute in minutes:
        open_, close = rng.uniform(90, 110), rng.uniform(90, 110)
        high, low = max(open_, close) + rng.uniform(0, 2), min(open_, close) - rng.uniform(0, 2)
        candles.append(MinuteBar(minute, open_, high, low, close, rng.randint(1, 9000), None))
    return candles


def expected_with_backfill(ticks: list[Tick], backfill: dict[str, list[MinuteBar]]) -> Bars:
    """ohlc_1m: the ticks' bars, then each candle whose minute has no tick of its key;
    ohlc_5m: those rows rolled up by definition, `backfill` when any of its minutes is."""
    live = expected_bars(ticks)["ohlc_1m"]
    with_ticks = {(row[0], row[1]) for row in live}
    minutes = list(live)
    for key, candles in backfill.items():
        for c in candles:
            if (key, c.bucket) not in with_ticks:
                minutes.append(
                    (key, c.bucket, c.open, c.high, c.low, c.close, c.volume, 0, "backfill")
                )
    minutes.sort()
    groups: dict[tuple[str, datetime], list[tuple]] = defaultdict(list)
    for row in minutes:
        origin = ist(date(2000, 1, 3), 9, 15)
        groups[row[0], origin + (row[1] - origin) // FIVE * FIVE].append(row)
    fives = [
        (
            key,
            bucket,
            rows[0][2],
            max(r[3] for r in rows),
            min(r[4] for r in rows),
            rows[-1][5],
            sum(r[6] for r in rows),
            sum(r[7] for r in rows),
            "backfill" if any(r[8] == "backfill" for r in rows) else "live",
        )
        for (key, bucket), rows in sorted(groups.items())
    ]
    return {"ohlc_1m": minutes, "ohlc_5m": fives}


def test_backfill_fills_holes_and_never_a_live_bucket(edition_db_url: str) -> None:
    day = trading_day()
    key = INSTRUMENTS[1]
    hole = [ist(day, 10, 2), ist(day, 10, 3), ist(day, 10, 4), ist(day, 10, 31)]
    ticks = [
        t
        for t in generate_day(day, seed=20261129)
        if not (t.instrument_key == key and any(m <= t.ts < m + MINUTE for m in hole))
    ]
    with_ticks = ist(day, 10, 1)  # a minute with ticks: its candle must be left out
    candles = candles_for(key, [with_ticks, *hole], seed=3)

    with psycopg.connect(edition_db_url, autocommit=True) as conn:
        copy_ticks(conn, ticks)
        assert store_minute_bars(conn, key, candles) == len(hole)
        # Real time (nothing materialized yet on Community), then materialized.
        assert bars_of_day(conn, day) == expected_with_backfill(ticks, {key: candles})
        refresh_bars(conn)
        assert bars_of_day(conn, day) == expected_with_backfill(ticks, {key: candles})
        # Stored again (a second backfill): nothing counts twice.
        assert store_minute_bars(conn, key, candles) == len(hole)
        assert bars_of_day(conn, day) == expected_with_backfill(ticks, {key: candles})

        # A late tick in a backfilled minute: the minute is the tick's from the next refresh
        # on, and the candle never shows beside it.
        late = Tick(key, hole[1] + timedelta(seconds=20), 101.5, 77)
        insert_one_by_one(conn, [late])
        refresh_bars(conn)
        bars = bars_of_day(conn, day)
        assert bars == expected_with_backfill([*ticks, late], {key: candles})
        five = {row[1]: row for row in bars["ohlc_5m"] if row[0] == key}
        assert five[ist(day, 10, 0)][-1] == "backfill"  # 10:02 and 10:04 still are
        assert five[ist(day, 10, 30)][-1] == "backfill"
        assert five[ist(day, 10, 5)][-1] == "live"
        minute = {row[1]: row for row in bars["ohlc_1m"] if row[0] == key}
        assert minute[hole[1]][-2:] == (1, "live")
        assert minute[with_ticks][-1] == "live"
