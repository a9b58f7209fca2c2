"""GET /api/v1/option-chain/{underlying} and its expiries over a real uvicorn and TimescaleDB,
on the hand-made NIFTY chain of tests/option_chains.py: at a past moment from stored ticks,
now from a published latest-tick table, and every kind of bad input."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg_pool import ConnectionPool, PoolClosed

from api import create_app
from api.chain_cache import ChainCache
from api.ingest_state import PublishedIngest
from core.config import Settings
from ingest.channels.latest_publisher import LatestTickPublisher
from ingest.channels.latest_table import published_path
from store.option_chain import chain_contracts
from tests.conftest import DbServer
from tests.option_chains import EXPIRY, INDEX, MOMENT, NEXT_EXPIRY, latest_ticks, load_chain
from tests.test_api import client, serve

CHAIN = "/api/v1/option-chain/NIFTY"


@pytest.fixture(scope="module")
def published(
    apache_server: DbServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """The chain's database, and a data directory where an ingest's latest-tick table holds
    each contract's tick as of MOMENT."""
    url = apache_server.create_database()
    data_dir: Path = tmp_path_factory.mktemp("chain") / "data"
    try:
        load_chain(url)
        with psycopg.connect(url) as conn:
            keys = chain_contracts(conn, "NIFTY", EXPIRY, MOMENT).keys
            latest = latest_ticks(conn, [INDEX, *keys], MOMENT)
        with LatestTickPublisher(published_path(data_dir), capacity=64) as publisher:
            publisher.publish(latest.values())
            yield url, data_dir
    finally:
        apache_server.drop_database(url)


@pytest.fixture(scope="module")
def api(published: tuple[str, Path]) -> Iterator[tuple[httpx.Client, str]]:
    """The API over the chain, beside the published table."""
    url, data_dir = published
    with serve(create_app(Settings(data_dir=data_dir), url)) as base, client(base) as http:
        yield http, url


def test_the_chain_at_a_moment(api: tuple[httpx.Client, str]) -> None:
    http, _ = api
    answer = http.get(CHAIN, params={"expiry": str(EXPIRY), "at": MOMENT.isoformat()})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["source"] == "ticks"
    assert (body["underlying_key"], body["expiry"]) == (INDEX, str(EXPIRY))
    assert (body["underlying_price"], body["atm_strike"], body["max_pain"]) == (
        24060.0,
        24100.0,
        24000.0,
    )
    assert body["pcr"] == pytest.approx(7000 / 3700)
    low = body["strikes"][0]
    assert low["strike"] == 23900.0
    assert (low["call"]["ltp"], low["call"]["oi_change"], low["put"]["oi"]) == (200, 200, 3000)


def test_the_chain_now_is_the_published_ticks_with_the_same_numbers(
    api: tuple[httpx.Client, str],
) -> None:
    http, _ = api
    now = http.get(CHAIN, params={"expiry": str(EXPIRY)})
    assert now.status_code == 200, now.text
    then = http.get(CHAIN, params={"expiry": str(EXPIRY), "at": MOMENT.isoformat()}).json()
    body = now.json()
    assert (body["source"], body["at"]) == ("cache", None)
    assert body["strikes"][0]["call"]["ltp"] == 200
    for field in ("underlying_price", "atm_strike", "pcr", "max_pain"):
        assert body[field] == then[field]
    # OI change compares with the contract's first OI of *today*: none stored today here.
    assert body["strikes"][0]["call"]["oi_change"] is None
    assert [row["call"]["ltp"] for row in body["strikes"]] == [
        row["call"]["ltp"] for row in then["strikes"]
    ]


def test_the_chain_now_reads_no_database_once_warm(published: tuple[str, Path]) -> None:
    """What the route runs without `at`: after the first call, the contracts and opening OI
    are kept, so a closed pool changes nothing."""
    url, data_dir = published
    reader = PublishedIngest(data_dir)
    pool = ConnectionPool(url, min_size=1, max_size=1, open=True)
    cache = ChainCache(pool)
    now = datetime.now(UTC)
    try:
        first = cache.now(reader, "NIFTY", EXPIRY, now)
    finally:
        pool.close()
    assert cache.now(reader, "nifty", EXPIRY, now) == first
    assert first.strikes[0].call.ltp == 200
    with pytest.raises(PoolClosed):  # a chain not kept yet needs the database
        cache.now(reader, "NIFTY", NEXT_EXPIRY, now)


def test_expiries(api: tuple[httpx.Client, str]) -> None:
    http, _ = api
    answer = http.get(f"{CHAIN}/expiries")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "underlying": "NIFTY",
        "underlying_key": INDEX,
        "expiries": [str(EXPIRY), str(NEXT_EXPIRY)],
    }
    by_key = http.get("/api/v1/option-chain/NSE_INDEX|Nifty 50/expiries")
    assert by_key.json()["expiries"] == [str(EXPIRY), str(NEXT_EXPIRY)]


@pytest.mark.parametrize(
    ("path", "params", "status", "named"),
    [
        ("/api/v1/option-chain/NOSUCH", {"at": MOMENT.isoformat()}, 404, "'NOSUCH'"),
        ("/api/v1/option-chain/INFY/expiries", {}, 404, "'INFY'"),  # no options in this master
        (CHAIN, {"expiry": "2026-01-09", "at": MOMENT.isoformat()}, 404, "2026-01-09"),
        (CHAIN, {"expiry": "2026-01-09"}, 404, "expiring 2026-01-09"),
        (CHAIN, {"expiry": "9 Jan"}, 422, "expiry"),
        (CHAIN, {"at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}, 422, "future"),
        (CHAIN, {"expiry": str(EXPIRY), "at": "2026-01-05T02:00:00Z"}, 404, "before any data"),
        (CHAIN, {"at": "yesterday"}, 422, "at"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_culprit(
    api: tuple[httpx.Client, str], path: str, params: dict, status: int, named: str
) -> None:
    http, _ = api
    answer = http.get(path, params=params)
    assert answer.status_code == status, answer.text
    assert named in answer.text


def test_openapi_documents_both_routes(api: tuple[httpx.Client, str]) -> None:
    http, _ = api
    paths = http.get("/openapi.json").json()["paths"]
    chain = paths["/api/v1/option-chain/{underlying}"]["get"]
    assert {p["name"] for p in chain["parameters"]} == {"underlying", "expiry", "at"}
    assert {"404", "422", "429"} <= set(chain["responses"])
    assert "429" in paths["/api/v1/option-chain/{underlying}/expiries"]["get"]["responses"]
