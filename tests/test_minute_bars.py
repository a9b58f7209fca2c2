"""The forming 1-minute bars across a restart: the ingest starts from the stored ticks of the
minute it stopped in (store.ticks.forming_bar_rows), so the bar the stream pushes for that
minute counts the ticks on both sides of the restart, as the stored ohlc_1m row does."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import minute_bars
from ingest.channels.latest_publisher import LatestTickPublisher
from ingest.channels.latest_table import BARS
from ingest.minute_bars import BAR_FIELDS, MINUTE_US, MinuteBarHandler, PythonMinuteBarHandler
from store.tick_row import TICK_COLUMNS, from_datetime, to_datetime
from store.ticks import forming_bar_rows
from tests.test_bars import copy_ticks

KEYS = ("NSE_EQ|INE009A01021", "NSE_EQ|INE467B01029")
START = datetime(2026, 12, 4, 4, 0, tzinfo=UTC)  # 09:30 IST


def _ticks(key: str, start: datetime, seconds: int, rng: random.Random) -> list[tuple]:
    """(instrument_key, ts, ltp, volume_delta) every half second or so for `seconds`."""
    out, moment = [], start
    while moment < start + timedelta(seconds=seconds):
        out.append((key, moment, round(1500 + rng.uniform(-20, 20), 2), rng.randint(1, 50)))
        moment += timedelta(milliseconds=rng.randint(200, 800))
    return out


def _as_tick(row: tuple) -> tuple:
    """A (key, ts, ltp, volume_delta) row as the pipeline's tick tuple."""
    values = dict.fromkeys(TICK_COLUMNS)
    values.update(instrument_key=row[0], ts=from_datetime(row[1]), ltp=row[2], volume_delta=row[3])
    return tuple(values[name] for name in TICK_COLUMNS)


def _stored_bars(conn: psycopg.Connection, key: str) -> dict[datetime, tuple]:
    return {
        row[0]: tuple(row[1:])
        for row in conn.execute(
            "SELECT time_bucket('1 minute', ts), first(ltp, ts), max(ltp), min(ltp),"
            " last(ltp, ts), sum(volume_delta)::bigint, count(*) FROM ticks"
            " WHERE instrument_key = %s GROUP BY 1",
            [key],
        )
    }


def test_a_bar_forming_at_a_restart_counts_the_ticks_on_both_sides(db_url: str) -> None:
    rng = random.Random(7)
    # Stored before the stop: three minutes of ticks, the last one left at 09:32:25.
    before = {key: _ticks(key, START, 145, rng) for key in KEYS}
    # After the restart: the rest of 09:32, then 09:33 begins.
    after = {key: _ticks(key, START + timedelta(seconds=150), 40, rng) for key in KEYS}
    with psycopg.connect(db_url, autocommit=True) as conn:
        for key in KEYS:
            conn.execute(
                "INSERT INTO subscriptions (instrument_key, status) VALUES (%s, 'subscribed')",
                [key],
            )
            copy_ticks(conn, before[key])
        bars = MinuteBarHandler()
        bars.seed(forming_bar_rows(conn))
        seeded = bars.take_changed()
        for key in KEYS:
            bars.on_frame(1, [_as_tick(row) for row in after[key]])
            copy_ticks(conn, after[key])
        published = bars.take_changed()
        stored = {key: _stored_bars(conn, key) for key in KEYS}

    width = len(BAR_FIELDS)
    for key in KEYS:
        # Seeded: 09:32 forming, 09:31 before it, each as stored.
        forming, previous = seeded[key][1 : 1 + width], seeded[key][1 + width :]
        assert to_datetime(forming[0]) == START + timedelta(minutes=2)
        assert to_datetime(previous[0]) == START + timedelta(minutes=1)
        # After the restart's ticks: 09:33 forming, and 09:32 as the stored row of all its
        # ticks, the ones before the stop and after it.
        row = published[key]
        forming, previous = row[1 : 1 + width], row[1 + width :]
        assert to_datetime(forming[0]) == START + timedelta(minutes=3)
        assert tuple(previous[1:]) == stored[key][START + timedelta(minutes=2)]
        assert tuple(forming[1:]) == stored[key][START + timedelta(minutes=3)]
        assert previous[-1] > len([t for t in after[key] if t[1] < START + timedelta(minutes=3)])


_BAR_KEYS = st.sampled_from(KEYS)
# Eight minutes around tick time 0 (late, older and new minutes, and Python's floored %),
# sometimes a time near or past int8's ends (the compiled fold's C arithmetic stops there).
_TICK_TIMES = st.one_of(
    st.integers(-4 * MINUTE_US, 4 * MINUTE_US),
    st.integers(-4 * MINUTE_US, 4 * MINUTE_US),
    st.sampled_from([2**62 + 1, -(2**63), 2**63 + 7, -(2**70)]),
)
_PRICES = st.one_of(st.floats(allow_nan=False), st.integers(-(10**6), 10**6))
_DELTAS = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))


@st.composite
def _bar_ticks(draw: st.DrawFn) -> tuple:
    values = dict.fromkeys(TICK_COLUMNS)
    values.update(
        instrument_key=draw(_BAR_KEYS),
        ts=draw(_TICK_TIMES),
        ltp=draw(_PRICES),
        volume_delta=draw(_DELTAS),
    )
    return tuple(values[name] for name in TICK_COLUMNS)


@pytest.mark.skipif(
    minute_bars.BARS_IMPLEMENTATION != "compiled", reason="the compiled bars are not built here"
)
@settings(max_examples=200, deadline=None)
@given(
    seed=st.lists(
        st.tuples(_BAR_KEYS, _TICK_TIMES.map(lambda ts: ts - ts % MINUTE_US), _PRICES, _DELTAS),
        max_size=3,
    ),
    frames=st.lists(st.tuples(st.lists(_bar_ticks(), max_size=8), st.booleans()), max_size=6),
)
def test_the_compiled_bars_are_the_references(
    seed: list[tuple], frames: list[tuple[list[tuple], bool]]
) -> None:
    """Frame after frame (and publish after publish), the compiled fold and rows hold the
    bars and hand over the rows the reference does."""
    compiled, reference = MinuteBarHandler(), PythonMinuteBarHandler()
    rows = [  # as store.ticks.forming_bar_rows: one tick's bar
        (key, bucket, ltp, bucket, ltp, ltp, ltp, bucket, delta, 1)
        for key, bucket, ltp, delta in seed
    ]
    compiled.seed(rows)
    reference.seed(rows)
    for seq, (ticks, publish) in enumerate(frames, start=1):
        compiled.on_frame(seq, ticks)
        reference.on_frame(seq, ticks)
        assert compiled.bars == reference.bars
        if publish:
            assert compiled.take_changed() == reference.take_changed()
    assert compiled.take_changed() == reference.take_changed()


def _slot_bytes(publisher: LatestTickPublisher) -> dict[str, bytes]:
    """key -> its slot as a reader finds it: the seq, the crc and the body."""
    end = BARS.slot - 8
    return {
        key: bytes(publisher._mm[word * 8 : at + end - 4])
        for key, (_, _, word, at) in publisher._slots.items()
    }


@pytest.mark.skipif(
    minute_bars.BARS_IMPLEMENTATION != "compiled", reason="the compiled bars are not built here"
)
@settings(max_examples=100, deadline=None)
@given(frames=st.lists(st.lists(_bar_ticks(), max_size=8), min_size=1, max_size=6))
def test_the_compiled_bars_publish_the_references_bytes(
    tmp_path_factory: pytest.TempPathFactory, frames: list[list[tuple]]
) -> None:
    """The packed slot bodies the compiled bars hand the table (`take_published`) leave
    every slot as the reference's rows, packed by the publisher, leave it."""
    compiled, reference = MinuteBarHandler(), PythonMinuteBarHandler()
    scratch = tmp_path_factory.mktemp("bars")
    with (
        LatestTickPublisher(scratch / "c.bin", 16, shape=BARS) as packed,
        LatestTickPublisher(scratch / "r.bin", 16, shape=BARS) as rows,
    ):
        for seq, ticks in enumerate(frames, start=1):
            compiled.on_frame(seq, ticks)
            reference.on_frame(seq, ticks)
            published = compiled.take_published()
            assert isinstance(published, tuple)  # packed, not rows
            assert packed.publish_changed(published) == rows.publish_changed(
                reference.take_published()
            )
            assert _slot_bytes(packed) == _slot_bytes(rows)
        assert packed.counters() == rows.counters()


def test_bars_past_what_c_numbers_hold_are_pythons(tmp_path: Path) -> None:
    """A volume past int64 and a price that is an int (neither of which the decoder makes)
    give the bars Python's own arithmetic gives, published as such."""
    bars = MinuteBarHandler()

    def tick(ts: int, ltp: object, delta: int | None) -> tuple:
        values = dict.fromkeys(TICK_COLUMNS)
        values.update(instrument_key=KEYS[0], ts=ts, ltp=ltp, volume_delta=delta)
        return tuple(values[name] for name in TICK_COLUMNS)

    bars.on_frame(1, [tick(10, 1.5, 2**62), tick(20, 2.5, 2**62)])
    assert bars.take_changed()[KEYS[0]][1:8] == (0, 1.5, 2.5, 1.5, 2.5, 2**63, 2)
    bars.on_frame(2, [tick(MINUTE_US, 7, None), tick(MINUTE_US + 1, 6.5, 1)])
    assert bars.take_changed()[KEYS[0]] == (
        KEYS[0],
        MINUTE_US,
        7,
        7,
        6.5,
        6.5,
        1,
        2,
        0,
        1.5,
        2.5,
        1.5,
        2.5,
        2**63,
        2,
    )
    bars.on_frame(3, [tick(MINUTE_US + 2, 8.0, 1)])
    with LatestTickPublisher(tmp_path / "bars.bin", 4, shape=BARS) as table:
        # The publisher's own rule for a row whose value fits no int8 column: counted, left out.
        assert table.publish_changed(bars.take_published()) == 0
        assert table.counters()["ticks_refused"] == 1


def test_a_tick_the_fold_refuses_leaves_no_bar_behind() -> None:
    """A tick whose time is not a number raises in either fold, and neither keeps anything of
    it: the instrument's next good tick opens its bar as if the bad one never came."""
    good = _as_tick((KEYS[0], START, 1500.5, 3))
    bad = (KEYS[0], "yesterday", *good[2:])
    for handler in (MinuteBarHandler(), PythonMinuteBarHandler()):
        with pytest.raises(TypeError):
            handler.on_frame(1, [bad])
        assert handler.bars == {}
        handler.on_frame(2, [good])
        assert handler.take_changed()[KEYS[0]][5:8] == (1500.5, 3, 1)
