"""The notebook helper's option chain frames (tickvault/notebook.py) over the hand-made NIFTY
chain of tests/option_chains.py: the same numbers as the store gives, as pandas in IST."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from core.ist import IST_ZONE
from ingest.channels.latest_publisher import LatestTickPublisher
from ingest.channels.latest_table import published_path
from store.bars import refresh_bars
from store.option_chain import chain_contracts
from tests.conftest import DbServer
from tests.option_chains import EXPIRY, INDEX, MOMENT, NEXT_EXPIRY, at, latest_ticks, load_chain
from tickvault import notebook


@pytest.fixture(scope="module")
def chain_db(apache_server: DbServer) -> Iterator[str]:
    url = apache_server.create_database()
    try:
        load_chain(url)
        with psycopg.connect(url, autocommit=True) as conn:
            refresh_bars(conn)
        yield url
    finally:
        apache_server.drop_database(url)


@pytest.fixture(autouse=True)
def _store(chain_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", chain_db)
    monkeypatch.setenv("TICKVAULT_DATA_DIR", str(tmp_path / "data"))


def test_the_chain_is_a_frame_of_strikes_with_calls_and_puts_side_by_side() -> None:
    frame = notebook.option_chain("NIFTY", "2026-01-08", "2026-01-05 09:25")  # IST: MOMENT
    assert list(frame.index) == [23900.0, 24000.0, 24100.0]
    assert frame.loc[23900.0, "call_ltp"] == 200
    assert frame.loc[23900.0, "call_oi_change"] == 200
    assert frame.loc[24000.0, "put_oi"] == 2500
    assert str(frame["call_ts"].dt.tz) == IST_ZONE
    assert frame.attrs["at"] == MOMENT
    assert (frame.attrs["atm_strike"], frame.attrs["max_pain"]) == (24100.0, 24000.0)
    assert frame.attrs["pcr"] == pytest.approx(7000 / 3700)


def test_the_chain_now_reads_the_published_latest_ticks(chain_db: str, tmp_path: Path) -> None:
    with psycopg.connect(chain_db) as conn:
        keys = chain_contracts(conn, "NIFTY", EXPIRY, MOMENT).keys
        latest = latest_ticks(conn, [INDEX, *keys], MOMENT)
    with LatestTickPublisher(published_path(tmp_path / "data"), capacity=64) as publisher:
        publisher.publish(latest.values())
        frame = notebook.option_chain("NIFTY", EXPIRY)
    assert frame.attrs["at"] is None
    assert list(frame["call_ltp"]) == [200, 110, 60]
    assert frame.attrs["underlying_price"] == 24060


def test_expiries_and_history() -> None:
    assert notebook.option_expiries("NIFTY") == [EXPIRY, NEXT_EXPIRY]
    history = notebook.chain_history("NIFTY", EXPIRY, "2026-01-05", atm_only=True)
    calls = history.query("option_type == 'CE'")
    assert list(calls["bucket"]) == [at(2)]
    assert list(calls["iv"]) == [0.13]
    assert str(history["bucket"].dt.tz) == IST_ZONE
    every = notebook.chain_history("NIFTY", EXPIRY)  # the latest day with ticks
    assert len(every) == 8
