"""The notebooks' many-symbol reads (read_bars / read_ticks of a list or the universe), their
frames (pandas, polars, Arrow), and the API's bars of several symbols.

One database for the module: the sample instrument master, and an hour of ticks for every
instrument of the F&O universe and the indices, written by SQL, so each test reads what a
user would and compares it with what was written or with the one-symbol reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pandas as pd
import polars as pl
import psycopg
import pyarrow as pa
import pytest

from api import create_app
from core.config import Settings
from core.ist import IST, IST_ZONE
from store.bars import refresh_bars
from store.instruments import (
    UnknownSymbol,
    default_sample_path,
    fno_universe,
    load_instruments,
)
from tests.conftest import DbServer
from tests.test_api import client, serve
from tickvault import notebook
from tickvault.notebook import UNIVERSE, RowLimitWarning, wide

DAY = datetime(2026, 1, 5, 9, 15, tzinfo=IST)
START, END = DAY, DAY + timedelta(hours=1)
TICKS_EACH = 90  # one tick every 20 s: 09:15:00 ... 09:44:40
SYMBOLS = ["INFY", "TCS", "Nifty 50"]
INDICES = ["NSE_INDEX|Nifty 50", "NSE_INDEX|Nifty Bank"]


@pytest.fixture(scope="module")
def reads_db(apache_server: DbServer) -> Iterator[str]:
    url = apache_server.create_database()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            load_instruments(conn, default_sample_path())
            keys = [*fno_universe(conn), *INDICES]
            conn.execute(
                "INSERT INTO ticks (instrument_key, ts, ltp, ltq, vtt, volume_delta, received_at)"
                " SELECT k.key, %(day)s + i * INTERVAL '20 seconds', 100 * k.n + (i * 7) %% 11,"
                " 1, i, CASE WHEN k.key LIKE 'NSE_INDEX|%%' THEN NULL ELSE 1 + i %% 3 END,"
                " %(day)s + i * INTERVAL '20 seconds'"
                " FROM unnest(%(keys)s::text[]) WITH ORDINALITY AS k(key, n),"
                " generate_series(0, %(last)s) AS i",
                {"day": DAY, "keys": keys, "last": TICKS_EACH - 1},
            )
            refresh_bars(conn)
        yield url
    finally:
        apache_server.drop_database(url)


@pytest.fixture(autouse=True)
def _store(reads_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The notebook module reads the test database, as a kernel started with
    TICKVAULT_DATABASE_URL would."""
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", reads_db)
    monkeypatch.setenv("TICKVAULT_INDEX_KEYS", ",".join(INDICES))


def universe_keys(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [*fno_universe(conn), *INDICES]


@pytest.mark.parametrize("interval", ["1m", "5m", "15m"])
def test_many_symbols_in_one_call_equal_the_one_symbol_calls(interval: str) -> None:
    many = notebook.read_bars(SYMBOLS, interval, START, END)

    assert many.index.names == ["symbol", "bucket"]
    assert list(many.index.unique("symbol")) == sorted(SYMBOLS)
    for symbol in SYMBOLS:
        one = notebook.read_bars(symbol, interval, START, END)
        assert not one.empty
        # An index's volume is NULL: NaN, so a frame holding one has a float64 volume.
        pd.testing.assert_frame_equal(many.xs(symbol, level="symbol"), one, check_dtype=False)
    assert many.attrs["instrument_keys"]["Nifty 50"] == "NSE_INDEX|Nifty 50"


def test_many_symbols_ticks_equal_the_one_symbol_calls() -> None:
    many = notebook.read_ticks(SYMBOLS, START, END)

    assert len(many) == len(SYMBOLS) * TICKS_EACH
    for symbol in SYMBOLS:
        one = notebook.read_ticks(symbol, START, END)
        assert len(one) == TICKS_EACH
        pd.testing.assert_frame_equal(many.xs(symbol, level="symbol"), one, check_dtype=False)


def test_the_universe_call_covers_the_universe(reads_db: str) -> None:
    keys = universe_keys(reads_db)
    assert len(keys) > 10

    bars = notebook.read_bars(UNIVERSE, "5m", START, END)

    assert sorted(bars.attrs["instrument_keys"].values()) == sorted(keys)
    labels = bars.index.unique("symbol")
    assert len(labels) == len(keys)
    assert {"INFY", "TCS", "NIFTY", "BANKNIFTY"} <= set(labels)
    # Half an hour of ticks: six 5-minute bars of every instrument.
    assert (bars.groupby(level="symbol").size() == 6).all()


def test_wide_has_a_column_per_symbol() -> None:
    bars = notebook.read_bars(SYMBOLS, "1m", START, END)

    closes = wide(bars, "close")

    assert list(closes.columns) == sorted(SYMBOLS)
    assert closes.index.name == "bucket"
    assert len(closes) == 30
    assert closes["TCS"].tolist() == notebook.read_bars("TCS", "1m", START, END)["close"].tolist()
    with pytest.raises(ValueError, match="several symbols"):
        wide(notebook.read_bars("TCS", "1m", START, END), "close")
    with pytest.raises(KeyError, match="no column 'vwap'"):
        wide(bars, "vwap")


def test_polars_and_arrow_hold_the_pandas_rows() -> None:
    frame = notebook.read_bars(SYMBOLS, "5m", START, END)
    table = notebook.read_bars(SYMBOLS, "5m", START, END, frame="arrow")
    polars = notebook.read_bars(SYMBOLS, "5m", START, END, frame="polars")

    assert isinstance(table, pa.Table)
    assert isinstance(polars, pl.DataFrame)
    assert table.column_names == ["symbol", "bucket", *frame.columns]
    assert polars.columns == table.column_names
    assert table.num_rows == polars.height == len(frame)
    assert polars["close"].to_list() == frame["close"].tolist()
    assert polars.schema["bucket"] == pl.Datetime("us", IST_ZONE)
    ticks = notebook.read_ticks("INFY", START, END, frame="polars")
    assert ticks.columns[0] == "ts"
    assert ticks.height == TICKS_EACH


def test_times_are_ist_and_dtypes_as_before() -> None:
    bars = notebook.read_bars(["INFY", "TCS"], "1m", START, END)
    ticks = notebook.read_ticks("INFY", START, END)
    index = notebook.read_bars("Nifty 50", "1m", START, END)

    assert str(bars.index.get_level_values("bucket").tz) == IST_ZONE
    assert str(ticks.index.tz) == IST_ZONE
    assert bars.index.get_level_values("bucket")[0] == START
    assert all(bars[name].dtype == "float64" for name in ("open", "high", "low", "close"))
    assert bars["volume"].dtype == bars["tick_count"].dtype == "int64"
    assert ticks["ltp"].dtype == "float64"
    assert ticks["vtt"].dtype == ticks["volume_delta"].dtype == "int64"
    assert str(ticks["received_at"].dtype.tz) == IST_ZONE
    assert index["volume"].dtype == "float64"
    assert index["volume"].isna().all()
    assert index["tick_count"].dtype == "int64"


@pytest.mark.parametrize("symbols", [SYMBOLS, "INFY"], ids=["many", "one"])
def test_the_tick_limit_says_what_it_cut(symbols: list[str] | str) -> None:
    with pytest.warns(RowLimitWarning) as caught:
        newest = notebook.read_ticks(symbols, START, END, limit=60)

    total = TICKS_EACH * (1 if isinstance(symbols, str) else len(SYMBOLS))
    message = str(caught[0].message)
    assert f"{total - 60:,} older ones were cut off" in message
    assert f"limit={total}" in message
    assert len(newest) == 60
    assert newest.attrs["ticks_cut_off"] == total - 60
    # The newest of them all are kept: each instrument's last 60 / (instruments) ticks.
    times = newest.index.get_level_values("ts")
    each = 60 // (total // TICKS_EACH)
    last = START + timedelta(seconds=20 * (TICKS_EACH - 1))
    assert (times.min(), times.max()) == (last - timedelta(seconds=20 * (each - 1)), last)
    if isinstance(symbols, str):
        assert newest.index.is_monotonic_increasing


def test_a_limit_that_cuts_nothing_says_nothing(recwarn: pytest.WarningsRecorder) -> None:
    ticks = notebook.read_ticks("INFY", START, END, limit=TICKS_EACH)
    assert len(ticks) == TICKS_EACH
    assert ticks.attrs["ticks_cut_off"] == 0
    assert not [w for w in recwarn if issubclass(w.category, RowLimitWarning)]


def test_the_kept_connection_holds_no_transaction_and_survives_a_lost_session(
    reads_db: str,
) -> None:
    """A kernel idle between reads must not hold a transaction open (vacuum would wait for
    it), and a session the server ended (a restart) must cost nothing but the next read."""
    first = notebook.read_bars("INFY", "5m", START, END)
    with psycopg.connect(reads_db, autocommit=True) as conn:
        others = "datname = current_database() AND pid <> pg_backend_pid()"
        states = [s for (s,) in conn.execute(f"SELECT state FROM pg_stat_activity WHERE {others}")]
        assert states
        assert "idle in transaction" not in states
        conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {others}")

    pd.testing.assert_frame_equal(notebook.read_bars("INFY", "5m", START, END), first)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: notebook.read_bars(["INFY", "NOSUCH", "TCS"], "1m", START, END),
            UnknownSymbol,
            r"unknown symbol 'NOSUCH'",
        ),
        (
            lambda: notebook.read_ticks(["INFY", "NOSUCH", "NOPE"], START, END),
            UnknownSymbol,
            r"unknown symbols 'NOSUCH', 'NOPE'",
        ),
        (
            lambda: notebook.read_bars(SYMBOLS, "2m", START, END),
            ValueError,
            r"interval must be one of 1m, 3m, .* got '2m'",
        ),
        (
            lambda: notebook.read_bars(SYMBOLS, "1m", END, START),
            ValueError,
            r"start \(2026-01-05T10:15:00\+05:30\) must be before end",
        ),
        (
            lambda: notebook.read_ticks("INFY", "2026-01-06", "2026-01-05"),
            ValueError,
            r"start \(2026-01-06T00:00:00\+05:30\) must be before end",
        ),
        (lambda: notebook.read_bars([], "1m"), ValueError, "empty list"),
        (lambda: notebook.read_ticks("INFY", limit=0), ValueError, "limit must be a positive"),
        (lambda: notebook.read_bars("INFY", frame="csv"), ValueError, "frame must be one of"),
    ],
    ids=[
        "unknown-among-many",
        "two-unknown",
        "interval",
        "start-after-end",
        "ticks-start-after-end",
        "no-symbols",
        "limit",
        "frame",
    ],
)
def test_bad_input_gets_one_error_naming_it(call, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_the_api_serves_bars_of_several_symbols_as_csv(
    reads_db: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = Settings(data_dir=tmp_path_factory.mktemp("api"))
    window = {"start": START.isoformat(), "end": END.isoformat(), "interval": "5m"}
    with serve(create_app(settings, reads_db)) as base, client(base) as http:
        csv = http.get("/api/v1/bars", params={"symbols": "TCS,INFY", "format": "csv", **window})
        body = http.get("/api/v1/bars", params={"symbols": "TCS, INFY", **window})
        unknown = http.get("/api/v1/bars", params={"symbols": "TCS,NOSUCH", **window})

    assert csv.status_code == 200
    assert csv.headers["content-type"].startswith("text/csv")
    header, *lines = csv.text.splitlines()
    assert header == "symbol,bucket,open,high,low,close,volume,tick_count"
    assert [line.split(",")[0] for line in lines] == ["INFY"] * 6 + ["TCS"] * 6
    assert lines[0].split(",")[1] == "2026-01-05T03:45:00Z"
    infy = notebook.read_bars("INFY", "5m", START, END)
    assert [float(line.split(",")[5]) for line in lines[:6]] == infy["close"].tolist()

    assert body.status_code == 200
    assert [series["symbol"] for series in body.json()] == ["TCS", "INFY"]
    assert [len(series["bars"]) for series in body.json()] == [6, 6]
    assert unknown.status_code == 404
    assert "'NOSUCH'" in str(unknown.json()["detail"])
