"""OHLC bars against an independent computation from the same ticks, on both editions.

A seeded random trading day goes in; what `ohlc_1m` and `ohlc_5m` show must equal, row for
row and to the last bit of every double, the bars computed here in Python. Late ticks,
real-time buckets past the watermark and windowed rebuilds after DELETEs are the cases a
rollup gets wrong.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import NamedTuple

import psycopg

from store.bars import BAR_VIEWS, refresh_bars
from store.tick_row import TICK_COLUMNS, from_datetime
from store.ticks import batch_committed, committed_position, write_batch
from tests import conftest

IST = timezone(timedelta(hours=5, minutes=30))
OPEN = time(9, 15)
CLOSE = time(15, 30)
MINUTE = timedelta(minutes=1)
WIDTHS = {"ohlc_1m": MINUTE, "ohlc_5m": 5 * MINUTE}
INSTRUMENTS = (
    "NSE_EQ|INE002A01018",
    "NSE_EQ|INE009A01021",
    "NSE_EQ|INE467B01029",
    "NSE_FO|43885",
    "NSE_INDEX|Nifty 50",
)

Bars = dict[str, list[tuple]]


class Tick(NamedTuple):
    """The columns of a tick that bars are made of, in the COPY order used below."""

    instrument_key: str
    ts: datetime
    ltp: float
    volume_delta: int


def trading_day() -> date:
    """A weekday four to six days back.

    Past, so every bucket of it is below the watermark once refreshed; older than Community's
    3-day refresh-policy window, so no background refresh races the test; younger than its
    7-day compression, so the chunk stays plain.
    """
    day = datetime.now(UTC).date() - timedelta(days=4)
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return day


def ist(day: date, hour: int, minute: int, second: int = 0, microsecond: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute, second, microsecond), IST)


def generate_day(day: date, seed: int) -> list[Tick]:
    """Random-walk ticks every 20-40 s per instrument, in arrival (time) order.

    Timestamps are distinct per instrument: with ties, first() and last() may pick either.
    """
    rng = random.Random(seed)
    session_open = datetime.combine(day, OPEN, IST)
    session_close = datetime.combine(day, CLOSE, IST)
    ticks = []
    for key in INSTRUMENTS:
        price = round(rng.uniform(100, 3000), 2)
        ts = session_open + timedelta(microseconds=rng.randrange(1, 15_000_000))
        while ts < session_close:
            ticks.append(Tick(key, ts, price, rng.randint(1, 500)))
            price = round(max(1.0, price + rng.gauss(0, 0.6)), 2)
            ts += timedelta(microseconds=rng.randrange(20_000_000, 40_000_000))
    ticks.sort(key=lambda tick: tick.ts)
    return ticks


def expected_bars(ticks: Iterable[Tick]) -> Bars:
    """The bars by definition, bucketed from 09:15 IST (not from UTC midnight)."""
    origin = datetime.combine(date(2000, 1, 3), OPEN, IST)
    bars = {}
    for view, width in WIDTHS.items():
        groups: dict[tuple[str, datetime], list[Tick]] = defaultdict(list)
        for tick in ticks:
            bucket = origin + (tick.ts - origin) // width * width
            groups[tick.instrument_key, bucket].append(tick)
        rows = []
        for (key, bucket), group in sorted(groups.items()):
            group.sort(key=lambda tick: tick.ts)
            prices = [tick.ltp for tick in group]
            volume = sum(tick.volume_delta for tick in group)
            rows.append(
                (
                    key,
                    bucket,
                    prices[0],
                    max(prices),
                    min(prices),
                    prices[-1],
                    volume,
                    len(group),
                    "live",  # every bucket here has ticks (sql/012_bars_source.sql)
                )
            )
        bars[view] = rows
    return bars


def bars_of_day(conn: psycopg.Connection, day: date) -> Bars:
    start = datetime.combine(day, time(0), IST)
    return {
        view: sorted(
            conn.execute(
                f"SELECT * FROM {view} WHERE bucket >= %s AND bucket < %s",
                [start, start + timedelta(days=1)],
            ).fetchall()
        )
        for view in BAR_VIEWS.values()
    }


def copy_ticks(conn: psycopg.Connection, ticks: Iterable[Tick]) -> None:
    with (
        conn.cursor() as cur,
        cur.copy("COPY ticks (instrument_key, ts, ltp, volume_delta) FROM STDIN") as copy,
    ):
        for tick in ticks:
            copy.write_row(tick)


def as_ingested(tick: Tick) -> tuple:
    """`tick` as the ingest writes it (store.tick_row): every column, the times as tick times."""
    values = {
        "instrument_key": tick.instrument_key,
        "ts": from_datetime(tick.ts),
        "ltp": tick.ltp,
        "volume_delta": tick.volume_delta,
        "received_at": from_datetime(datetime.now(UTC)),
    }
    return tuple(values.get(name) for name in TICK_COLUMNS)


def insert_one_by_one(conn: psycopg.Connection, ticks: Iterable[Tick]) -> None:
    for tick in ticks:
        conn.execute(
            "INSERT INTO ticks (instrument_key, ts, ltp, volume_delta) VALUES (%s, %s, %s, %s)",
            tick,
        )


def split_late(day: date, ticks: list[Tick], seed: int) -> tuple[list[Tick], list[Tick]]:
    """(on time, late): a random 3% held back, plus late ticks that each move one bar value.

    The late ones come shuffled, as a reconnecting feed or a journal replay delivers them.
    """
    rng = random.Random(seed)
    on_time: list[Tick] = []
    held_back: list[Tick] = []
    for tick in ticks:
        (held_back if rng.random() < 0.03 else on_time).append(tick)

    def in_minute(key: str, start: datetime) -> list[Tick]:
        return [t for t in on_time if t.instrument_key == key and start <= t.ts < start + MINUTE]

    a, b, c, d = INSTRUMENTS[:4]
    opens_at = ist(day, 10, 2)
    closes_at = ist(day, 11, 29)
    day_high = max(t.ltp for t in ticks if t.instrument_key == c)
    day_low = min(t.ltp for t in ticks if t.instrument_key == d)
    crafted = [
        # Earlier than every tick of its minute: the new open (and of its 5-minute bar).
        Tick(a, opens_at, in_minute(a, opens_at)[0].ltp + 3.25, 11),
        # Later than every tick of its minute: the new close.
        Tick(b, closes_at + MINUTE - timedelta(microseconds=1), 42.5, 12),
        # New high and new low of the day, in the middle of a minute.
        Tick(c, ist(day, 12, 0, 30, 500_000), day_high + 50.0, 13),
        Tick(d, ist(day, 13, 7, 10, 250_000), max(1.0, day_low - 50.0), 14),
        # A bucket that had no bar at all: an instrument first seen late.
        Tick("NSE_EQ|INE040A01034", ist(day, 14, 3, 10), 1601.05, 15),
        Tick("NSE_EQ|INE040A01034", ist(day, 14, 0, 5), 1600.0, 16),
    ]
    assert opens_at < min(t.ts for t in in_minute(a, opens_at))
    assert closes_at + MINUTE > max(t.ts for t in in_minute(b, closes_at))
    late = held_back + crafted
    rng.shuffle(late)
    everything = on_time + late
    assert len({(t.instrument_key, t.ts) for t in everything}) == len(everything)
    return on_time, late


def test_bars_equal_the_ticks_after_late_ticks_and_refresh(edition_db_url: str) -> None:
    day = trading_day()
    ticks = generate_day(day, seed=20261120)
    on_time, late = split_late(day, ticks, seed=7)

    with psycopg.connect(edition_db_url, autocommit=True) as conn:
        copy_ticks(conn, on_time)
        refresh_bars(conn)
        assert bars_of_day(conn, day) == expected_bars(on_time)

        insert_one_by_one(conn, late)
        # Below the watermark the materialized bars stand until a refresh covers the late ticks.
        assert bars_of_day(conn, day) == expected_bars(on_time)

        refresh_bars(conn)
        bars = bars_of_day(conn, day)

    assert bars == expected_bars(on_time + late)
    session_open_utc = datetime.combine(day, time(3, 45), UTC)
    for rows in bars.values():
        assert min(row[1] for row in rows) == session_open_utc


def test_ticks_past_the_watermark_show_without_refresh(edition_db_url: str) -> None:
    day = trading_day()
    ticks = generate_day(day, seed=3)
    noon = ist(day, 12, 0)

    with psycopg.connect(edition_db_url, autocommit=True) as conn:
        copy_ticks(conn, [t for t in ticks if t.ts < noon])
        refresh_bars(conn, end=noon)
        copy_ticks(conn, [t for t in ticks if t.ts >= noon])
        assert bars_of_day(conn, day) == expected_bars(ticks)

        # The live case: a tick of today, after a refresh that brought everything up to date.
        refresh_bars(conn)
        live = Tick(INSTRUMENTS[0], datetime.now(UTC), 2999.95, 9)
        insert_one_by_one(conn, [live])
        for view, rows in expected_bars([live]).items():
            shown = conn.execute(
                f"SELECT * FROM {view} WHERE bucket > %s", [datetime.combine(day, CLOSE, IST)]
            ).fetchall()
            assert shown == rows


def test_refresh_window_rebuilds_bars_of_deleted_ticks(edition_db_url: str) -> None:
    day = trading_day()
    ticks = generate_day(day, seed=11)
    gone, changed = INSTRUMENTS[1], INSTRUMENTS[2]
    gone_from, gone_to = ist(day, 10, 10), ist(day, 10, 15)
    # The first minute after 10:20 with two ticks of `changed`: losing its first changes the
    # bar's open, volume and count, but the bar stays.
    minutes: dict[datetime, list[Tick]] = defaultdict(list)
    for tick in ticks:
        if tick.instrument_key == changed and tick.ts >= ist(day, 10, 20):
            minutes[tick.ts.replace(second=0, microsecond=0)].append(tick)
    changed_minute = min(minute for minute, group in minutes.items() if len(group) >= 2)
    first_of_minute = minutes[changed_minute][0]
    deleted = {t for t in ticks if t.instrument_key == gone and gone_from <= t.ts < gone_to}
    deleted.add(first_of_minute)
    remaining = [t for t in ticks if t not in deleted]

    with psycopg.connect(edition_db_url, autocommit=True) as conn:
        copy_ticks(conn, ticks)
        refresh_bars(conn)
        conn.execute(
            "DELETE FROM ticks WHERE (instrument_key = %s AND ts >= %s AND ts < %s)"
            " OR (instrument_key = %s AND ts = %s)",
            [gone, gone_from, gone_to, changed, first_of_minute.ts],
        )
        # A DELETE is not a late tick: the bars keep what was deleted until a rebuild.
        assert bars_of_day(conn, day) == expected_bars(ticks)

        refresh_bars(conn, ist(day, 10, 0), ist(day, 10, 30))
        bars = bars_of_day(conn, day)

    assert bars == expected_bars(remaining)
    assert (gone, gone_from) not in {(row[0], row[1]) for row in bars["ohlc_5m"]}
    assert (changed, changed_minute) in {(row[0], row[1]) for row in bars["ohlc_1m"]}


def test_both_editions_give_identical_bars(
    apache_server: conftest.DbServer, community_server: conftest.DbServer
) -> None:
    day = trading_day()
    on_time, late = split_late(day, generate_day(day, seed=5), seed=5)
    results = []
    for server in (apache_server, community_server):
        url = server.create_database()
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                copy_ticks(conn, on_time)
                refresh_bars(conn)
                insert_one_by_one(conn, late)
                refresh_bars(conn)
                results.append(bars_of_day(conn, day))
        finally:
            server.drop_database(url)

    apache, community = results
    assert apache == community
    assert apache == expected_bars(on_time + late)


def test_refresh_up_to_a_time_inside_a_bucket_keeps_bars_whole(edition_db_url: str) -> None:
    day = trading_day()
    ticks = generate_day(day, seed=13)

    with psycopg.connect(edition_db_url, autocommit=True) as conn:
        copy_ticks(conn, ticks)
        refresh_bars(conn, end=ist(day, 10, 2, 30))
        assert bars_of_day(conn, day) == expected_bars(ticks)


@contextmanager
def _rolled_up_with_a_writer(
    url: str, ticks: list[Tick]
) -> Iterator[tuple[psycopg.Connection, psycopg.Connection]]:
    """The ticks stored and rolled up; an autocommit connection for the rollup and a
    writer connection whose transactions the test holds open across its passes."""
    with (
        psycopg.connect(url, autocommit=True) as conn,
        psycopg.connect(url) as writer,
    ):
        copy_ticks(conn, ticks)
        refresh_bars(conn)
        yield conn, writer


def test_a_late_tick_written_in_a_savepoint_across_a_refresh_is_rolled_up(
    edition_db_url: str,
) -> None:
    """A subtransaction's rows carry its own xid, which a snapshot does not list among the
    running ones even while its parent runs (PostgreSQL's pg_visible_in_snapshot says so of
    subtransaction ids): a rule that takes "invisible to the last pass" for "late" must not
    take such a row for seen. psql's ON_ERROR_ROLLBACK writes every statement this way."""
    day = trading_day()
    ticks = generate_day(day, seed=23)
    late = Tick(INSTRUMENTS[1], ist(day, 10, 30, 0), 8888.5, 3)

    with _rolled_up_with_a_writer(edition_db_url, ticks) as (conn, writer):
        with writer.transaction(), writer.cursor() as cur:
            cur.execute("SELECT 1")  # the outer transaction is open before the savepoint
            with writer.transaction():  # a SAVEPOINT: the row's xid is a subtransaction's
                write_batch(cur, "j", 1, 1, 1, [as_ingested(late)])
            # A later transaction completes: the pass's snapshot then reaches past the row's
            # xid, and lists only its parent as running.
            conn.execute("SELECT pg_current_xact_id()")
            refresh_bars(conn)  # the pass cannot see the row: its transaction is open
        refresh_bars(conn)
        assert bars_of_day(conn, day) == expected_bars([*ticks, late])


def test_late_ticks_of_a_transaction_older_than_the_refresh_are_rolled_up(
    edition_db_url: str,
) -> None:
    day = trading_day()
    ticks = generate_day(day, seed=17)
    late = Tick(INSTRUMENTS[0], ist(day, 11, 0, 0), 9999.5, 1)

    with _rolled_up_with_a_writer(edition_db_url, ticks) as (conn, writer):
        # The ingest writer's retry path: it looks the batch up, then writes it, in one
        # transaction.
        with writer.cursor() as cur:
            assert not batch_committed(cur, "j", 1)
            refresh_bars(conn)
            write_batch(cur, "j", 1, 7, 9, [as_ingested(late)])
        writer.commit()
        refresh_bars(conn)
        assert bars_of_day(conn, day) == expected_bars([*ticks, late])
        with writer.cursor() as cur:
            assert batch_committed(cur, "j", 1)
            write_batch(cur, "j", 2, 10, 12, [])  # frames without a tick are committed too
        writer.commit()
        assert committed_position(conn, "j") == (12, 2)
        assert committed_position(conn, "another journal") == (0, 0)


def _heap_blocks(conn: psycopg.Connection) -> tuple[int, int]:
    """Heap blocks fetched from the ticks' chunks so far, and the blocks they hold."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    fetched, held = conn.execute(
        "SELECT sum(s.heap_blks_read + s.heap_blks_hit), sum(pg_relation_size(s.relid) / 8192)"
        " FROM timescaledb_information.chunks c JOIN pg_statio_all_tables s"
        " ON s.schemaname = c.chunk_schema AND s.relname = c.chunk_name"
        " WHERE c.hypertable_name = 'ticks'"
    ).fetchone()
    return int(fetched), int(held)


def _measured_pass(conn: psycopg.Connection) -> tuple[int, int, dict[str, int]]:
    """One rollup pass: the ticks' heap blocks it fetched, the blocks they hold, and the
    buckets it wrote."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    before, held = _heap_blocks(conn)
    written = refresh_bars(conn).buckets_written
    conn.execute("SELECT pg_stat_force_next_flush()")
    after, _ = _heap_blocks(conn)
    return after - before, held, written


def _unvacuumed_chunks(conn: psycopg.Connection, analyzed: bool) -> None:
    """Autovacuum off for the ticks' chunks: it would read them too, and it is not the pass
    being measured. With `analyzed`, their statistics are taken first."""
    for (chunk,) in conn.execute(
        "SELECT format('%I.%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks"
        " WHERE hypertable_name = 'ticks'"
    ).fetchall():
        conn.execute(f"ALTER TABLE {chunk} SET (autovacuum_enabled = false)")
        if analyzed:
            conn.execute(f"ANALYZE {chunk}")


def _rolled_up_day(conn: psycopg.Connection) -> None:
    """Earlier today, about 2,000 heap pages of ticks written as they came, none with greeks,
    analyzed and rolled up."""
    conn.execute(
        "INSERT INTO ticks (instrument_key, ts, inserted_at, ltp, volume_delta)"
        " SELECT (%s::text[])[1 + g %% 5], at, at, 100 + g %% 7, 1"
        " FROM generate_series(1, 200000) g,"
        " LATERAL (SELECT now() - INTERVAL '2 hours' + g * INTERVAL '20 ms' AS at) t",
        [list(INSTRUMENTS)],
    )
    _unvacuumed_chunks(conn, analyzed=True)
    refresh_bars(conn)


def test_a_pass_reads_the_ticks_written_since_the_last_one_not_the_day(db_url: str) -> None:
    """A pass looks for late ticks among the rows written since the last pass whose time is
    below its watermark; the ticks below the watermark, the whole day so far, must not be
    read again by every pass. (With a BRIN index per column the planner took the ts one
    alone for that search and read them all: a pass's cost grew with the day.)"""
    with psycopg.connect(db_url, autocommit=True) as conn:
        _rolled_up_day(conn)
        (minute,) = conn.execute(
            "SELECT time_bucket(INTERVAL '1 minute', now() - INTERVAL '90 minutes')"
        ).fetchone()
        late = Tick(INSTRUMENTS[2], minute + timedelta(seconds=30), 5.5, 9)
        copy_ticks(conn, [late])

        read, held, _ = _measured_pass(conn)

        # What the pass may read: the block range the late tick was appended to, once for each
        # layer that reads ticks (up to 128 blocks each), and the late tick's minute of its
        # instrument. The whole chunk, read by each of those layers, is what it must not.
        assert held > 1500
        assert read < held / 4, f"the pass read {read} of {held} blocks"
        low, volume = conn.execute(
            "SELECT low, volume FROM ohlc_1m WHERE instrument_key = %s AND bucket = %s",
            [late.instrument_key, minute],
        ).fetchone()
        assert (low, volume) == (5.5, 9 + 60_000 // 20 // 5)


def test_a_pass_that_finds_nothing_late_reads_no_ticks(db_url: str) -> None:
    """Most passes find no late tick. Re-aggregating the empty set of dirty buckets anyway
    was planned, where the statistics say no tick carries greeks, as a sequential scan of the
    chunk for the option chains: every pass read the whole day."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        _rolled_up_day(conn)
        read, held, written = _measured_pass(conn)
    assert held > 1500
    assert read < held / 10, f"the pass read {read} of {held} blocks"
    assert written["ohlc_1m"] == 0


def test_a_pass_reads_the_closed_minutes_once_for_the_bars_and_the_option_chains(
    db_url: str,
) -> None:
    """The minutes a pass closes are its biggest read (millions of ticks at a busy close), and
    the 1-minute bars and the option chains are both made of them: one read must rebuild
    both, not one read each."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        (open_minute,) = conn.execute("SELECT time_bucket(INTERVAL '1 minute', now())").fetchone()
        # 200,000 ticks over the 17 minutes before the open one; every fifth, of the future
        # NSE_FO|43885, carries greeks.
        conn.execute(
            "INSERT INTO ticks (instrument_key, ts, ltp, volume_delta, delta)"
            " SELECT (%s::text[])[1 + g %% 5], %s - INTERVAL '20 minutes' + g * INTERVAL '5 ms',"
            " 100 + g %% 7, 1, CASE WHEN g %% 5 = 3 THEN 0.5 END"
            " FROM generate_series(1, 200000) g",
            [list(INSTRUMENTS), open_minute],
        )
        _unvacuumed_chunks(conn, analyzed=False)
        # A pass whose watermark stops short of them: it summarizes their block ranges.
        refresh_bars(conn, end=open_minute - timedelta(minutes=30))

        read, held, written = _measured_pass(conn)

        assert held > 1500
        assert read < 1.5 * held, f"the pass read {read} of {held} blocks"
        assert (written["ohlc_1m"], written["option_chain_1m"]) == (5 * 17, 17)
        ticks = conn.execute(
            "SELECT instrument_key, sum(tick_count) FROM ohlc_1m GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert ticks == [(key, 40_000) for key in sorted(INSTRUMENTS)]
        (options,) = conn.execute(
            "SELECT array_agg(DISTINCT instrument_key) || sum(tick_count)::text"
            " FROM option_chain_1m"
        ).fetchone()
        assert options == [INSTRUMENTS[3], "40000"]
