"""One history across the store and the Parquet archive (tickvault/history_sql.py): the same
answer before and after retention moved days to Parquet, every row once across the line, a
damaged archive day refused by name, and the ASOF joins against hand-worked expectations.

One database for the module, filled, queried, archived and retained once (tests that damage
the archive work on a copy of it)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from core.ist import day_bounds
from store.archive import MANIFEST, PART, archive_day, day_directory
from store.editions import Edition
from store.instruments import UnknownSymbol, default_sample_path, load_instruments
from store.retention import apply_retention
from store.tick_row import TICK_COLUMNS
from tests.conftest import DbServer
from tests.lifecycle import KEYS, days_ago, insert_day, roll_up_bars
from tests.test_retention import archived_day_with_a_night_tick
from tickvault import notebook

# Every tick of the range, in an order that leaves no tie.
EVERY_TICK = "SELECT * FROM ticks ORDER BY instrument_key, ts, received_at"
PER_DAY = (
    "SELECT CAST(ts AS DATE) AS day, instrument_key, count(*) AS ticks, sum(ltp) AS ltp_sum"
    " FROM ticks GROUP BY ALL ORDER BY ALL"
)
BARS = "SELECT * FROM ohlc_1m ORDER BY instrument_key, bucket"


@dataclass
class Lived:
    url: str
    data_dir: Path
    start: datetime
    end: datetime
    split: date  # the day retention's cutoff falls in: its night archived, its session stored
    dropped: date  # a day retention dropped whole
    asof_day: date  # the hand-made ticks of the ASOF tests
    database_rows: list[dict]  # the range's ticks as the database held them before retention
    before: dict[str, pd.DataFrame]  # each query's answer before retention
    cutoff: datetime


def _hand_ticks(url: str, day: date) -> None:
    """INFY: a quote, a trade, a quote, a trade; Nifty 50: three levels between them."""
    at = day_bounds(day)[0] + timedelta(hours=10)
    s = timedelta(seconds=1)
    infy = [
        (at, 100.0, 0, 99.0, 101.0),
        (at + s, 100.5, 10, 100.0, 101.5),
        (at + 3 * s, 100.0, 0, 99.5, 100.5),
        (at + 5 * s, 101.0, 5, 100.5, 102.0),
    ]
    nifty = [(at + s / 2, 20000.0), (at + 3 * s, 20010.0), (at + 4 * s, 20020.0)]
    with psycopg.connect(url, autocommit=True) as conn:
        for ts, ltp, volume, bid, ask in infy:
            conn.execute(
                "INSERT INTO ticks (instrument_key, ts, ltp, volume_delta, bid_price, bid_qty,"
                " ask_price, ask_qty, received_at) VALUES (%s, %s, %s, %s, %s, 7, %s, 9, %s)",
                [KEYS[0], ts, ltp, volume, bid, ask, ts],
            )
        for ts, ltp in nifty:
            conn.execute(
                "INSERT INTO ticks (instrument_key, ts, ltp, received_at) VALUES (%s, %s, %s, %s)",
                [KEYS[2], ts, ltp, ts],
            )


def _as_dicts(url: str, start: datetime, end: datetime) -> list[dict]:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT {', '.join(TICK_COLUMNS)} FROM ticks WHERE ts >= %s AND ts < %s"
            " ORDER BY instrument_key, ts, received_at",
            [start, end],
        )
        names = [column.name for column in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


@pytest.fixture(scope="module")
def lived(apache_server: DbServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lived]:
    """Four days of ticks queried, then archived and past retention: one dropped whole, one
    split by the cutoff (a 02:00 IST tick in the chunk before its session's), two kept."""
    url = apache_server.create_database()
    data_dir = tmp_path_factory.mktemp("history") / "data"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TICKVAULT_DATABASE_URL", url)
        env.setenv("TICKVAULT_DATA_DIR", str(data_dir))
        archive = data_dir / "archive"
        dropped, split, asof_day, recent = days_ago(14), days_ago(12), days_ago(2), days_ago(1)
        with psycopg.connect(url) as conn:
            load_instruments(conn, default_sample_path())
        for day in (dropped, recent):
            insert_day(url, day, per_key=40)
        _hand_ticks(url, asof_day)
        _, night_only = archived_day_with_a_night_tick(url, archive, split)
        roll_up_bars(url, day_bounds(dropped)[0])
        start, end = day_bounds(dropped)[0], day_bounds(recent)[1]
        database_rows = _as_dicts(url, start, end)
        before = {query: notebook.sql(query, start, end) for query in (EVERY_TICK, PER_DAY, BARS)}
        with psycopg.connect(url, autocommit=True) as conn:
            archive_day(conn, archive, dropped)
            result = apply_retention(conn, Edition.APACHE, night_only, 0, archive)
        assert result.tick_chunks_dropped >= 2
        assert result.kept == {}
        assert result.ticks_dropped_before is not None
        yield Lived(
            url, data_dir, start, end, split, dropped, asof_day, database_rows, before,
            result.ticks_dropped_before,
        )  # fmt: skip
    apache_server.drop_database(url)


def test_a_range_across_the_cutoff_is_every_row_once_as_before_retention(lived: Lived) -> None:
    with psycopg.connect(lived.url) as conn:
        left = conn.execute(
            "SELECT count(*) FROM ticks WHERE ts >= %s AND ts < %s", [lived.start, lived.end]
        ).fetchone()
    assert left is not None
    assert 0 < left[0] < len(lived.database_rows)  # retention did move rows out
    # The cutoff falls inside the split day: its night only in the archive, its session only
    # in the database.
    assert day_bounds(lived.split)[0] < lived.cutoff < day_bounds(lived.split)[1]

    after = {query: notebook.sql(query, lived.start, lived.end) for query in lived.before}
    exact = notebook.sql(EVERY_TICK, lived.start, lived.end, frame="arrow").to_pylist()

    assert exact == lived.database_rows
    for query, frame in after.items():
        pd.testing.assert_frame_equal(frame, lived.before[query])
    ticks = after[EVERY_TICK]
    assert str(ticks["ts"].dt.tz) == "Asia/Kolkata"
    per_day = after[PER_DAY]
    assert lived.split in set(per_day["day"].dt.date)
    assert not after[BARS].empty


def test_symbols_and_a_range_inside_the_archive_read_only_those_ticks(lived: Lived) -> None:
    start, end = day_bounds(lived.dropped)
    frame = notebook.sql(
        "SELECT instrument_key, count(*) AS n, min(ts) AS first FROM ticks GROUP BY 1",
        start,
        end,
        symbols="INFY",
    )
    expected = [
        row for row in lived.database_rows if row["instrument_key"] == KEYS[0]
        and start <= row["ts"] < end
    ]  # fmt: skip
    assert frame["instrument_key"].tolist() == [KEYS[0]]
    assert frame["n"].tolist() == [len(expected)]
    assert frame["first"].iloc[0] == expected[0]["ts"]
    # Bars of the dropped day stay in the database; parameters reach the query.
    bars = notebook.sql(
        "SELECT count(*) AS n FROM ohlc_1m WHERE instrument_key = $key", start, end,
        params={"key": KEYS[0]},
    )  # fmt: skip
    assert bars["n"].tolist() == [len({row["ts"].replace(second=0) for row in expected})]
    # One pull, several queries.
    with notebook.history(start, end, ["INFY"], ["ticks"]) as opened:
        counted = opened.query("SELECT count(*) AS n FROM ticks")
        newest = opened.duck.execute("SELECT max(ts) FROM ticks").fetchone()
    assert counted["n"].tolist() == [len(expected)]
    assert newest == (expected[-1]["ts"],)


def _delete_part(directory: Path) -> None:
    (directory / PART).unlink()


def _delete_day(directory: Path) -> None:
    shutil.rmtree(directory)


def _corrupt_footer(directory: Path) -> None:
    part = directory / PART
    data = bytearray(part.read_bytes())
    data[4 : len(data) - 8] = b"\xa5" * (len(data) - 12)  # keeps the PAR1 magic at each end
    part.write_bytes(bytes(data))


def _overwrite_data_pages(directory: Path) -> None:
    """The footer stays whole, so only reading the rows finds it."""
    part = directory / PART
    data = bytearray(part.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 200] = b"\xa5" * 200
    part.write_bytes(bytes(data))


def _manifest_a_row_off(directory: Path) -> None:
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["row_count"] -= 1
    (directory / MANIFEST).write_text(json.dumps(manifest))


DAMAGES = {
    "Parquet file deleted": (_delete_part, "no Parquet file"),
    "day directory deleted": (_delete_day, "manifest"),
    "bytes overwritten": (_corrupt_footer, "cannot be read"),
    "manifest a row off": (_manifest_a_row_off, "manifest does not say"),
    "data pages overwritten": (_overwrite_data_pages, "is damaged"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_archive_day_is_refused_by_name_never_fewer_rows(
    lived: Lived, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    shutil.copytree(lived.data_dir / "archive", tmp_path / "archive")
    monkeypatch.setenv("TICKVAULT_DATA_DIR", str(tmp_path))
    do_damage, reason = DAMAGES[damage]
    do_damage(day_directory(tmp_path / "archive", lived.dropped))

    with pytest.raises(notebook.HistoryError, match=reason) as raised:
        notebook.sql(EVERY_TICK, lived.start, lived.end)
    assert f"the archive of {lived.dropped}" in str(raised.value)
    # A range that does not need the day is answered, whole.
    start, end = day_bounds(lived.split)
    split_day = notebook.sql("SELECT count(*) AS n FROM ticks", start, end)
    assert split_day["n"].tolist() == [
        sum(1 for row in lived.database_rows if start <= row["ts"] < end)
    ]


def test_quotes_at_trades_takes_the_last_quote_strictly_before_each_trade(lived: Lived) -> None:
    frame = notebook.quotes_at_trades("INFY", *day_bounds(lived.asof_day))
    at = day_bounds(lived.asof_day)[0] + timedelta(hours=10)
    assert [ts.to_pydatetime() for ts in frame.index] == [
        at + timedelta(seconds=1),
        at + timedelta(seconds=5),
    ]
    assert str(frame.index.tz) == "Asia/Kolkata"
    assert frame[["ltp", "volume_delta", "bid_price", "ask_price"]].values.tolist() == [
        [100.5, 10, 99.0, 101.0],
        [101.0, 5, 99.5, 100.5],
    ]
    assert [ts.to_pydatetime() for ts in frame["quote_ts"]] == [at, at + timedelta(seconds=3)]
    assert frame.attrs["trading_symbols"] == ["INFY"]


def test_aligned_puts_two_instruments_on_one_clock(lived: Lived) -> None:
    frame = notebook.aligned("INFY", "Nifty 50", *day_bounds(lived.asof_day))
    at = day_bounds(lived.asof_day)[0] + timedelta(hours=10)
    assert [ts.to_pydatetime() for ts in frame.index] == [
        at + timedelta(seconds=n) for n in (0, 1, 3, 5)
    ]
    assert frame["left_ltp"].tolist() == [100.0, 100.5, 100.0, 101.0]
    # None before the index's first tick; at 10:00:03 both ticked: the index's counts.
    assert frame["right_ltp"].tolist()[1:] == [20000.0, 20010.0, 20020.0]
    assert pd.isna(frame["right_ltp"].iloc[0])
    assert frame.attrs["instrument_keys"] == [KEYS[0], KEYS[2]]


def test_bad_requests_name_the_culprit(lived: Lived) -> None:
    start, end = day_bounds(lived.asof_day)
    with pytest.raises(UnknownSymbol, match="NOPE"):
        notebook.sql("SELECT count(*) FROM ticks", start, end, symbols=["INFY", "NOPE"])
    with pytest.raises(ValueError, match="must be before"):
        notebook.sql("SELECT count(*) FROM ticks", end, start)
    with pytest.raises(ValueError, match="no tick column 'price'"):
        notebook.aligned("INFY", "Nifty 50", start, end, columns=["price"])


def test_ticks_dropped_with_archiving_off_are_an_error_not_a_gap(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", db_url)
    monkeypatch.setenv("TICKVAULT_DATA_DIR", str(tmp_path))
    old, recent = days_ago(12), days_ago(1)
    for day in (old, recent):
        insert_day(db_url, day, per_key=5)
    roll_up_bars(db_url, day_bounds(old)[0])
    with psycopg.connect(db_url, autocommit=True) as conn:
        result = apply_retention(conn, Edition.APACHE, 7, 0, archive=None)
    assert result.tick_chunks_dropped >= 1
    with pytest.raises(notebook.HistoryError, match="archiving off"):
        notebook.sql("SELECT count(*) FROM ticks", day_bounds(old)[0], day_bounds(recent)[1])
    after = notebook.sql("SELECT count(*) AS n FROM ticks", *day_bounds(recent))
    assert after["n"].tolist() == [5 * len(KEYS)]
