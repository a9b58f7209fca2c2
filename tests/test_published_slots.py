"""The compiled slot writer (ingest/channels/_slots.pyx) against the reference writer of
LatestTickPublisher: the same rows published in the same calls leave the same bytes in every
key entry, slot and counter of the table, whichever rows each one hands to the other."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.channels import latest_publisher
from ingest.channels.latest_publisher import LatestTickPublisher
from ingest.channels.latest_table import (
    BARS,
    HEADER_SIZE,
    TICKS,
    W_KEY_COUNT,
    W_KEYS_OVER_CAPACITY,
    W_KEYS_TOO_LONG,
    W_TICKS_PUBLISHED,
    W_TICKS_REFUSED,
    Shape,
)

pytestmark = pytest.mark.skipif(
    latest_publisher.write_slots is None, reason="the slot writer is not built here"
)

CAPACITY = 4  # small, so that keys past it are refused too


class ReferencePublisher(LatestTickPublisher):
    _write_slots = _write_bodies = None


KEYS = ("NSE_FO|1", "NSE_EQ|INE009A01021", "NSE_INDEX|Nifty 50", "MCX_FO|9", "NSE_FO|5", "é" * 30)
# Mostly what the decoder and the bars make (floats, int8s, None), sometimes what only a
# caller's mistake would: a bool, a str, an int past int8. (A row shorter than its shape
# for a known key, or an int past a double in a float8, raise in the reference itself.)
VALUES = st.one_of(
    st.floats(allow_nan=False, width=64),
    st.integers(-(2**63), 2**63 - 1),
    st.none(),
    st.sampled_from([True, "ten", 2**63, -(2**63) - 1, float("nan")]),
)


def _rows(shape: Shape) -> st.SearchStrategy[Any]:
    common = st.tuples(
        st.sampled_from(KEYS), *[st.one_of(st.none(), _typed(code)) for code in shape.codes]
    )
    odd = st.tuples(st.sampled_from(KEYS), *[VALUES] * shape.columns)
    return st.one_of(common, common, common, odd)


def _typed(code: str) -> st.SearchStrategy[Any]:
    if code == "d":
        return st.floats(allow_nan=False, width=64)
    return st.integers(-(2**63), 2**63 - 1)


def _state(publisher: LatestTickPublisher) -> tuple[bytes, list[int]]:
    """Everything a reader sees but the writer's identity and clock."""
    mm = publisher._mm
    words = [
        publisher._words[word]
        for word in (W_KEY_COUNT, W_TICKS_PUBLISHED, W_KEYS_OVER_CAPACITY, W_KEYS_TOO_LONG)
    ] + [publisher._words[W_TICKS_REFUSED]]
    return bytes(mm[HEADER_SIZE : publisher._status_at]), words


def _packed(shape: Shape, rows: list[tuple]) -> tuple[list[str], bytes, list[tuple]]:
    """The rows as a writer that keeps them in C hands them over: the last row of each key
    packed (mask, columns), the rows it cannot pack left as they are."""
    latest = {row[0]: row for row in rows}
    keys, bodies, left = [], [], []
    for key, row in latest.items():
        mask = sum(1 << column for column, value in enumerate(row[1:]) if value is None)
        values = [0 if value is None else value for value in row[1:]]
        try:
            bodies.append(shape.body.pack(mask, *values))
        except struct.error:
            left.append(row)
        else:
            keys.append(key)
    return keys, b"".join(bodies), left


@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
@pytest.mark.parametrize("shape", [TICKS, BARS], ids=["ticks", "bars"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_compiled_writer_leaves_the_reference_bytes(
    tmp_path_factory: pytest.TempPathFactory, shape: Shape, packed: bool, data: st.DataObject
) -> None:
    """Rows handed over as rows (`publish`) or packed (`publish_packed`, the forming bars'
    way) leave the key entries, slots and counters the reference leaves with the same rows."""
    calls = data.draw(st.lists(st.lists(_rows(shape), max_size=12), min_size=1, max_size=4))
    scratch = tmp_path_factory.mktemp("slots")
    with (
        LatestTickPublisher(scratch / "c.bin", CAPACITY, shape=shape) as compiled,
        ReferencePublisher(scratch / "r.bin", CAPACITY, shape=shape) as reference,
    ):
        for rows in calls:
            if packed:
                keys, _, left = handed = _packed(shape, rows)
                latest = {row[0]: row for row in rows}
                expected = [latest[key] for key in keys] + left
                assert compiled.publish_packed(handed) == reference.publish(expected)
            else:
                assert compiled.publish(rows) == reference.publish(rows)
            assert _state(compiled) == _state(reference)
        assert compiled.counters() == reference.counters()


def test_most_rows_take_the_compiled_path(tmp_path: Path) -> None:
    """A row of a known key in its usual types never goes to the reference (which is where
    the time went): the compiled writer answers for all of them in one call."""
    rows = [("K", *[1.5 if code == "d" else 7 for code in TICKS.codes])]
    with LatestTickPublisher(tmp_path / "t.bin", CAPACITY) as publisher:
        publisher.publish(rows)  # the key's first row: the reference adds its slot
        later = [(row[0], *[None] * 3, *row[4:]) for row in rows] * 3
        codes = TICKS.codes.encode()
        assert publisher._write_slots(publisher._mm, publisher._slots, later, 0, codes) == (3, 3)


@given(st.binary(max_size=300))
def test_the_crc_is_zlibs(data: bytes) -> None:
    from ingest.channels._slots import crc32

    assert crc32(data) == zlib.crc32(data)
