"""The HTTP API as a client sees it: a real uvicorn on loopback, a real TimescaleDB.

Two apps: `live` reads an ingest running beside it on its built-in simulator, the way
`tickvault run` runs them; `stored` has no ingest, over ticks written here by SQL, so history,
pagination and bars can be checked against known values.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from api.app import server_options
from api.db import read_pool
from core.config import Secret, Settings
from ingest.service import WebSocketService
from ingest.simulator import FeedSimulator
from store.instruments import default_sample_path, instrument_records, load_instruments
from tests.conftest import DbServer

API_KEY = "api-key-7d1c9e"
BASE = datetime(2026, 1, 5, 4, 0, tzinfo=UTC)  # 09:30 IST on a Monday
BARS_DAY = BASE + timedelta(days=1)
INFY = "NSE_EQ|INE009A01021"


# --- running the app -----------------------------------------------------------------------


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run `app` under uvicorn in a thread on a free loopback port; yield its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    options = server_options(app.state.settings)  # as `tickvault api` serves it
    config = uvicorn.Config(app, log_level="warning", lifespan="on", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API did not start (see the log above)")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


@contextmanager
def ingest_beside(settings: Settings, database_url: str) -> Iterator[WebSocketService]:
    """The ingest service on its own event loop in a thread, publishing its latest ticks and
    status and listening on its control socket in `settings.data_dir`, as `tickvault ingest`
    does: an API on the same data directory reads it as `tickvault api` reads that process.
    Here rather than in a process so that a test can reach its simulator."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    service = WebSocketService(settings, database_url)
    try:
        asyncio.run_coroutine_threadsafe(service.start(), loop).result(120)
        yield service
    finally:
        asyncio.run_coroutine_threadsafe(service.stop(), loop).result(120)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=30, trust_env=False)


@contextmanager
def sample_database(apache_server: DbServer) -> Iterator[str]:
    """A fresh migrated database with the sample instrument master loaded."""
    url = apache_server.create_database()
    try:
        with psycopg.connect(url) as conn:
            load_instruments(conn, default_sample_path())
        yield url
    finally:
        apache_server.drop_database(url)


def wait_for(condition: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.2)


@contextmanager
def live_api(
    apache_server: DbServer,
    data_dir: Path,
    min_free_gb: float = 1.0,
    option_chains: tuple[str, ...] = ("NIFTY", "BANKNIFTY"),
) -> Iterator[str]:
    """The API with the ingest running, once ticks are flowing into the database."""
    with sample_database(apache_server) as url:
        config = Settings(
            data_dir=data_dir,
            simulator_rate=2000,
            rollup_interval_s=1,
            api_key=Secret(API_KEY),
            min_free_gb=min_free_gb,
            option_chains=option_chains,
        )
        with (
            ingest_beside(config, url),
            serve(create_app(config, url)) as base,
            client(base) as http,
        ):
            wait_for(lambda: _rows_written(http) and http.get("/health").status_code == 200)
            yield base


def _rows_written(http: httpx.Client) -> int:
    status = http.get("/api/v1/websocket/status")
    return status.status_code == 200 and (status.json()["writer"] or {}).get("rows_written", 0)


@pytest.fixture(scope="module")
def live(
    apache_server: DbServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    with live_api(apache_server, tmp_path_factory.mktemp("live")) as base, client(base) as http:
        yield http


# --- the stored app ------------------------------------------------------------------------


def infy_ticks() -> list[tuple[datetime, datetime, float]]:
    """(ts, received_at, ltp): 250 ticks, two per second, so the sort key ts alone has ties."""
    return [
        (BASE + timedelta(seconds=i // 2), BASE + timedelta(hours=1, milliseconds=i), 1000.0 + i)
        for i in range(250)
    ]


def tcs_bar_ticks() -> list[tuple[datetime, float, int]]:
    """(ts, ltp, volume_delta): one tick every 20 s for 12 minutes."""
    return [
        (BARS_DAY + timedelta(seconds=20 * i), 3000.0 + (i * 7) % 11, 10 + i) for i in range(36)
    ]


@pytest.fixture(scope="module")
def stored_db(apache_server: DbServer) -> Iterator[str]:
    now = datetime.now(UTC)
    rows = [(INFY, ts, ltp, 1, received) for ts, received, ltp in infy_ticks()]
    rows += [("NSE_EQ|INE467B01029", ts, ltp, vol, ts) for ts, ltp, vol in tcs_bar_ticks()]
    rows += [
        ("NSE_EQ|INE467B01029", now - timedelta(hours=1), 3100.0, 5, now),
        ("NSE_EQ|INE467B01029", now - timedelta(hours=30), 2900.0, 5, now),
    ]
    with sample_database(apache_server) as url:
        with psycopg.connect(url) as conn:
            conn.cursor().executemany(
                "INSERT INTO ticks (instrument_key, ts, ltp, volume_delta, received_at)"
                " VALUES (%s, %s, %s, %s, %s)",
                rows,
            )
            conn.execute(
                "INSERT INTO subscriptions (instrument_key, status) VALUES (%s, 'subscribed')",
                [INFY],
            )
        yield url


@pytest.fixture(scope="module")
def stored(stored_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """No ingest and no API key configured."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("stored"))
    with serve(create_app(settings, stored_db)) as base, client(base) as http:
        yield http


def detail(response: httpx.Response) -> str:
    return str(response.json()["detail"])


# --- the documentation pages ---------------------------------------------------------------


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_documentation_pages_load_every_asset_from_the_api_itself(
    stored: httpx.Client, page: str
) -> None:
    """On a machine without internet a page that loads its script from a CDN is blank: every
    script, style and icon of /docs and /redoc must come from this server, and be there."""
    html = stored.get(page)
    assert html.status_code == 200
    assets = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", html.text)
    assert any(asset.endswith(".js") for asset in assets), assets
    for asset in assets:
        assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
        answer = stored.get(asset)
        assert answer.status_code == 200, asset
        assert len(answer.content) > 1000, asset
    assert "/openapi.json" in html.text


# --- the read pool -------------------------------------------------------------------------


def test_read_pool_sessions_are_bounded_read_only_and_utc(stored_db: str) -> None:
    with read_pool(stored_db) as pool, pool.connection() as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("5s",)
        assert conn.execute("SHOW TimeZone").fetchone() == ("UTC",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM ticks")


# --- health and status ---------------------------------------------------------------------


def test_health_with_ingest_running(live: httpx.Client) -> None:
    response = live.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "ok",
        "ingest": "running in another process",
    }


def test_health_without_ingest(stored: httpx.Client) -> None:
    """No ingest runs in the process nor publishes on its data directory (see
    tests/test_api_process.py for an API beside a running one)."""
    response = stored.get("/health")
    assert response.status_code == 503
    assert "no ingest has published here" in response.json()["reason"]


def test_health_is_503_while_the_database_is_unreachable(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"postgresql://tickvault@127.0.0.1:{port}/nothing?connect_timeout=1"
    app = create_app(Settings(data_dir=tmp_path), url)
    with serve(app) as base, client(base) as http:
        response = http.get("/health")
        assert response.status_code == 503
        assert response.json() == {
            "status": "unavailable",
            "reason": "the database does not answer",
        }
        # Any endpoint that needs the database says so, rather than failing with a 500.
        assert http.get("/api/v1/instruments").status_code == 503
        assert http.get("/api/v1/ticks/INFY").status_code == 503


def test_status_reports_feed_subscriptions_writer_and_journal(live: httpx.Client) -> None:
    response = live.get("/api/v1/websocket/status")
    assert response.status_code == 200
    status = response.json()
    assert status["is_running"] is True
    assert status["websocket_connected"] is True
    assert status["feed"]["source"] == "simulator"
    subscriptions = status["subscriptions"]
    assert subscriptions["total_symbols"] >= 22  # 20 F&O stocks and 2 indices in the sample
    assert subscriptions["failed_count"] == 0
    assert subscriptions["subscription_rate"] == "100.00%"
    assert status["writer"]["rows_written"] > 0
    assert status["writer"]["queue_depth"] >= 0
    assert "oldest_unwritten_tick_age_s" in status["writer"]
    assert status["journal"]["bytes_on_disk"] > 0
    assert "backlog_frames" in status["journal"]


def test_feed_endpoints_without_an_ingest(stored: httpx.Client) -> None:
    response = stored.get("/api/v1/websocket/status")
    assert response.status_code == 503
    assert "no ingest has published here" in detail(response)
    # The subscriptions are the ingest's rows in the database.
    response = stored.get("/api/v1/websocket/subscriptions")
    assert response.status_code == 200
    assert response.json() == [
        {"symbol": "INFY", "instrument_key": INFY, "mode": "full", "status": "subscribed",
         "error": None}
    ]  # fmt: skip


# --- subscriptions -------------------------------------------------------------------------


def test_subscriptions_list_the_universe(live: httpx.Client) -> None:
    response = live.get("/api/v1/websocket/subscriptions")
    assert response.status_code == 200
    by_symbol = {row["symbol"]: row for row in response.json()}
    assert by_symbol["INFY"] == {
        "symbol": "INFY",
        "instrument_key": INFY,
        "mode": "full",
        "status": "subscribed",
        "error": None,
    }
    assert by_symbol["NIFTY"]["instrument_key"] == "NSE_INDEX|Nifty 50"


def test_the_option_chains_followed_show_their_windows(live: httpx.Client) -> None:
    def windows() -> list[dict]:
        response = live.get("/api/v1/websocket/option-windows")
        assert response.status_code == 200
        return response.json()["windows"]

    wait_for(lambda: len(windows()) == 4)  # NIFTY and BANKNIFTY, the nearest two expiries each
    chains = live.get("/api/v1/websocket/option-windows").json()
    assert chains["mode"] == "option_greeks"
    assert chains["underlyings"] == ["NIFTY", "BANKNIFTY"]
    for window in chains["windows"]:
        assert window["key_count"] == 62  # 15 strikes each side and the money, CE and PE
        step = 50 if window["underlying"] == "NIFTY" else 100
        assert window["low_strike"] == window["atm_strike"] - 15 * step
        assert window["high_strike"] == window["atm_strike"] + 15 * step
    status = live.get("/api/v1/websocket/status").json()
    assert status["option_chains"] == chains
    listed = {row["instrument_key"] for row in live.get("/api/v1/websocket/subscriptions").json()}
    assert len(listed) >= 22 + 4 * 62, "the chains' contracts are subscriptions like any other"


def test_the_nifty_chain_of_the_simulator_answers_now_and_at_a_past_moment(
    live: httpx.Client,
) -> None:
    """The simulator's own NIFTY chain, as the ingest follows it: now (from the published
    ticks) a full window of strikes with both sides priced, and the same chain asked at a
    moment just past answers from the stored ticks with the same strikes."""

    def now() -> dict:
        return live.get("/api/v1/option-chain/NIFTY").json()

    # 15 strikes each side and the money, within a minute of the start.
    wait_for(lambda: len(priced_sides(now())) >= 31, timeout=60)
    latest = now()
    assert latest["at"] is None
    assert latest["underlying_price"] > 0
    assert latest["atm_strike"] in priced_sides(latest)
    assert latest["pcr"] > 0

    def stored_a_second_ago() -> tuple[datetime, dict]:
        moment = datetime.now(UTC) - timedelta(seconds=1)
        past = live.get("/api/v1/option-chain/NIFTY", params={"at": moment.isoformat()})
        assert past.status_code in (200, 404), past.text  # 404: before the chain's first tick
        return moment, past.json()

    # The chain's first ticks are committed a moment after they are published.
    wait_for(lambda: len(priced_sides(stored_a_second_ago()[1])) >= 31, timeout=30)
    moment, past = stored_a_second_ago()
    assert past["at"] is not None
    assert all(
        datetime.fromisoformat(side["ts"]) <= moment
        for row in past["strikes"]
        for side in (row["call"] or {}, row["put"] or {})
        if side.get("ts")
    )


def priced_sides(chain: dict) -> list[float]:
    """The strikes of `chain` (an option-chain answer, or an error's) priced on both sides."""
    sides = [
        (row["strike"], row["call"] or {}, row["put"] or {}) for row in chain.get("strikes", [])
    ]
    return [
        strike
        for strike, call, put in sides
        if call.get("ltp") and put.get("ltp") and call.get("iv")
    ]


def test_subscribe_and_unsubscribe_a_symbol(live: httpx.Client) -> None:
    key = {"X-API-Key": API_KEY}
    body = {"symbols": ["VSTIND"], "mode": "ltpc"}
    response = live.post("/api/v1/websocket/subscriptions", json=body, headers=key)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "mode": "ltpc",
        "subscribed": [{"symbol": "VSTIND", "instrument_key": "NSE_EQ|INE710A01016"}],
    }
    listed = {row["symbol"]: row for row in live.get("/api/v1/websocket/subscriptions").json()}
    assert listed["VSTIND"]["mode"] == "ltpc"
    assert listed["VSTIND"]["status"] == "subscribed"
    wait_for(lambda: live.get("/api/v1/websocket/latest-ticks?symbols=VSTIND").json()["ticks"])

    response = live.delete("/api/v1/websocket/subscriptions/VSTIND", headers=key)
    assert response.status_code == 200
    assert response.json() == {
        "symbol": "VSTIND",
        "instrument_key": "NSE_EQ|INE710A01016",
        "status": "unsubscribed",
    }
    listed = {row["symbol"] for row in live.get("/api/v1/websocket/subscriptions").json()}
    assert "VSTIND" not in listed


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": "ключ".encode()}])
def test_changes_need_the_api_key(live: httpx.Client, headers: dict[str, object]) -> None:
    post = live.post(
        "/api/v1/websocket/subscriptions", json={"symbols": ["VSTIND"]}, headers=headers
    )
    delete = live.delete("/api/v1/websocket/subscriptions/INFY", headers=headers)
    for response in (post, delete):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "ApiKey"
    assert "INFY" in {row["symbol"] for row in live.get("/api/v1/websocket/subscriptions").json()}


def test_changes_are_refused_while_no_api_key_is_configured(stored: httpx.Client) -> None:
    for headers in ({}, {"X-API-Key": ""}, {"X-API-Key": "anything"}):
        response = stored.post(
            "/api/v1/websocket/subscriptions", json={"symbols": ["INFY"]}, headers=headers
        )
        assert response.status_code == 403
        assert "TICKVAULT_API_KEY" in detail(response)
    response = stored.delete("/api/v1/websocket/subscriptions/INFY")
    assert response.status_code == 403


def test_subscribe_rejects_unknown_symbols_and_modes(live: httpx.Client) -> None:
    key = {"X-API-Key": API_KEY}
    url = "/api/v1/websocket/subscriptions"
    response = live.post(url, json={"symbols": ["INFY", "NOSUCH"]}, headers=key)
    assert response.status_code == 404
    assert "'NOSUCH'" in detail(response)
    response = live.post(url, json={"symbols": ["NOSUCH", "NOTHIS"]}, headers=key)
    assert response.status_code == 404
    assert "'NOSUCH'" in detail(response)
    assert "'NOTHIS'" in detail(response)
    response = live.delete(f"{url}/NOSUCH", headers=key)
    assert response.status_code == 404
    assert "'NOSUCH'" in detail(response)
    for body in (
        {"symbols": ["INFY"], "mode": "fast"},
        {"symbols": []},
        {"symbols": "INFY"},
        {"mode": "full"},
    ):
        response = live.post(url, json=body, headers=key)
        assert response.status_code == 422, body
    assert live.post(url, content=b"{not json", headers=key).status_code == 422


# --- latest ticks ----------------------------------------------------------------------------


def test_latest_ticks_from_the_cache(live: httpx.Client) -> None:
    response = live.get("/api/v1/websocket/latest-ticks", params={"symbols": "INFY, Nifty 50"})
    assert response.status_code == 200
    body = response.json()
    assert body["source"] == "cache"
    assert body["missing"] == []
    infy, nifty = body["ticks"]
    assert (infy["symbol"], infy["instrument_key"]) == ("INFY", INFY)
    assert (nifty["symbol"], nifty["instrument_key"]) == ("Nifty 50", "NSE_INDEX|Nifty 50")
    assert infy["ltp"] > 0
    for field in ("ts", "received_at"):
        moment = datetime.fromisoformat(infy[field])
        assert infy[field].endswith("Z")
        assert moment.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - moment) < timedelta(hours=1)


def test_latest_ticks_again_from_the_shortcut(live: httpx.Client) -> None:
    """Asked again, the symbols are remembered and api/latest_fast.py answers (from the
    ingest in this process): the same keys in the same order, the same value types."""
    params = {"symbols": "INFY, Nifty 50,NOTICKYET"}
    shapes = []
    for _ in range(2):
        response = live.get("/api/v1/websocket/latest-ticks", params=params)
        assert response.status_code == 404  # NOTICKYET names nothing, both times
    params = {"symbols": "INFY, Nifty 50"}
    for _ in range(3):
        body = live.get("/api/v1/websocket/latest-ticks", params=params).json()
        assert [tick["symbol"] for tick in body["ticks"]] == ["INFY", "Nifty 50"]
        for tick in body["ticks"]:
            assert isinstance(tick["ltp"], float)
            assert tick["ts"].endswith("Z")
        shapes.append([list(tick) for tick in body["ticks"]])
    assert shapes[0] == shapes[1] == shapes[2]


def test_latest_ticks_of_every_instrument(live: httpx.Client) -> None:
    body = live.get("/api/v1/websocket/latest-ticks").json()
    symbols = [tick["symbol"] for tick in body["ticks"]]
    assert {"INFY", "TCS", "NIFTY"} <= set(symbols)
    assert symbols == sorted(symbols)


def test_latest_ticks_without_an_ingest(stored: httpx.Client) -> None:
    """Without the ingest in this process, latest ticks are what an ingest publishes on the
    data directory (tests/test_api_process.py); with none there, 503 says so."""
    for params in ({"symbols": "INFY,TCS"}, {}):
        response = stored.get("/api/v1/websocket/latest-ticks", params=params)
        assert response.status_code == 503
        assert "no ingest has published here" in detail(response)


@pytest.mark.parametrize("symbols", ["", " , ", "INFY,\x00", "INFY," + "X" * 101])
def test_latest_ticks_rejects_empty_or_bad_lists(stored: httpx.Client, symbols: str) -> None:
    response = stored.get("/api/v1/websocket/latest-ticks", params={"symbols": symbols})
    assert response.status_code == 422


def test_latest_ticks_names_unknown_symbols(live: httpx.Client) -> None:
    response = live.get("/api/v1/websocket/latest-ticks", params={"symbols": "INFY,NOSUCH"})
    assert response.status_code == 404
    assert "'NOSUCH'" in detail(response)


# --- tick history ----------------------------------------------------------------------------


def test_ticks_pages_cover_the_window_once(stored: httpx.Client) -> None:
    expected = sorted(((ts, received) for ts, received, _ in infy_ticks()), reverse=True)
    params = {"start": BASE.isoformat(), "end": (BASE + timedelta(minutes=5)).isoformat()}
    seen: list[tuple[datetime, datetime]] = []
    pages = 0
    cursor = None
    while True:
        query = {**params, "limit": 37} | ({"cursor": cursor} if cursor else {})
        response = stored.get("/api/v1/ticks/INFY", params=query)
        assert response.status_code == 200
        page = response.json()
        assert page["instrument_key"] == INFY
        assert len(page["ticks"]) <= 37
        seen += [
            (datetime.fromisoformat(t["ts"]), datetime.fromisoformat(t["received_at"]))
            for t in page["ticks"]
        ]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 7  # 250 ticks in pages of 37
    assert seen == expected


def test_ticks_window_is_half_open(stored: httpx.Client) -> None:
    start, end = BASE + timedelta(seconds=10), BASE + timedelta(seconds=20)
    page = stored.get(
        "/api/v1/ticks/NSE_EQ|INE009A01021",
        params={"start": start.isoformat(), "end": end.isoformat(), "limit": 1000},
    ).json()
    stamps = [datetime.fromisoformat(t["ts"]) for t in page["ticks"]]
    assert len(stamps) == 20
    assert min(stamps) == start
    assert max(stamps) == end - timedelta(seconds=1)
    assert page["next_cursor"] is None


def test_ticks_default_to_the_last_day(stored: httpx.Client) -> None:
    page = stored.get("/api/v1/ticks/tcs").json()
    assert [t["ltp"] for t in page["ticks"]] == [3100.0]


def test_ticks_accept_times_without_offset_as_utc(stored: httpx.Client) -> None:
    naive = {"start": "2026-01-05T04:00:10", "end": "2026-01-05T04:00:11"}
    ist = {"start": "2026-01-05T09:30:10+05:30", "end": "2026-01-05T09:30:11+05:30"}
    first = stored.get("/api/v1/ticks/INFY", params=naive).json()["ticks"]
    second = stored.get("/api/v1/ticks/INFY", params=ist).json()["ticks"]
    assert len(first) == 2
    assert first == second


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "2026-01-06T00:00:00Z", "end": "2026-01-05T00:00:00Z"}, "start"),
        ({"start": "tomorrow"}, "start"),
        ({"end": "2026-13-01T00:00:00Z"}, "end"),
        ({"limit": 1001}, "limit"),
        ({"limit": 0}, "limit"),
        ({"cursor": "!!not a cursor"}, "cursor"),
        ({"cursor": "MTI"}, "cursor"),  # base64 of "12": one number, not two
        ({"cursor": base64.urlsafe_b64encode(b"9" * 20 + b":1").decode()}, "cursor"),
        ({"start": "0001-01-01T00:00:00+01:00"}, "start"),  # before datetime's range in UTC
        ({"end": "0001-01-01T00:00:00Z"}, "end"),  # no room for the default day before it
    ],
)
def test_ticks_reject_bad_parameters(
    stored: httpx.Client, params: dict[str, object], field: str
) -> None:
    response = stored.get("/api/v1/ticks/INFY", params=params)
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["query", field]]


def test_symbols_with_nul_are_rejected(stored: httpx.Client) -> None:
    for path in ("/api/v1/ticks/IN%00FY", "/api/v1/bars/%00"):
        response = stored.get(path)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["path", "symbol"]


def test_ticks_name_an_unknown_symbol(stored: httpx.Client) -> None:
    response = stored.get("/api/v1/ticks/NOSUCH")
    assert response.status_code == 404
    assert "'NOSUCH'" in detail(response)


def test_ticks_of_the_live_feed(live: httpx.Client) -> None:
    page = live.get("/api/v1/ticks/INFY", params={"limit": 5}).json()
    assert len(page["ticks"]) == 5
    assert page["next_cursor"] is not None
    # As times: an ISO string without a fraction ("...:05Z") sorts after "...:05.037Z".
    stamps = [datetime.fromisoformat(t["ts"]) for t in page["ticks"]]
    assert stamps == sorted(stamps, reverse=True)


# --- bars ----------------------------------------------------------------------------------


def expected_bars(width: timedelta) -> list[dict[str, object]]:
    bars: dict[datetime, list[tuple[datetime, float, int]]] = {}
    for tick in tcs_bar_ticks():
        bucket = BARS_DAY + (tick[0] - BARS_DAY) // width * width
        bars.setdefault(bucket, []).append(tick)
    return [
        {
            "bucket": bucket.isoformat().replace("+00:00", "Z"),
            "open": ticks[0][1],
            "high": max(t[1] for t in ticks),
            "low": min(t[1] for t in ticks),
            "close": ticks[-1][1],
            "volume": sum(t[2] for t in ticks),
            "tick_count": len(ticks),
        }
        for bucket, ticks in sorted(bars.items())
    ]


@pytest.mark.parametrize(("interval", "width"), [("1m", 1), ("5m", 5)])
def test_bars_as_json(stored: httpx.Client, interval: str, width: int) -> None:
    window = {"start": BARS_DAY.isoformat(), "end": (BARS_DAY + timedelta(hours=1)).isoformat()}
    response = stored.get("/api/v1/bars/TCS", params={"interval": interval, **window})
    assert response.status_code == 200
    body = response.json()
    assert (body["instrument_key"], body["interval"]) == ("NSE_EQ|INE467B01029", interval)
    assert body["bars"] == expected_bars(timedelta(minutes=width))


def test_bars_as_csv(stored: httpx.Client) -> None:
    window = {"start": BARS_DAY.isoformat(), "end": (BARS_DAY + timedelta(hours=1)).isoformat()}
    response = stored.get("/api/v1/bars/TCS", params={"format": "csv", **window})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    header, *lines = response.text.splitlines()
    assert header == "bucket,open,high,low,close,volume,tick_count"
    first = expected_bars(timedelta(minutes=1))[0]
    assert lines[0] == ",".join(str(value) for value in first.values())
    assert len(lines) == 12


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"interval": "2m"}, "interval"),
        ({"format": "xml"}, "format"),
        ({"start": "2025-12-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}, "start"),
        (
            {"interval": "5m", "start": "2025-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
            "start",
        ),
        ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "start"),
    ],
)
def test_bars_reject_bad_parameters(
    stored: httpx.Client, params: dict[str, str], field: str
) -> None:
    response = stored.get("/api/v1/bars/TCS", params=params)
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["query", field]]


def test_bars_allow_the_longest_windows(stored: httpx.Client) -> None:
    end = BARS_DAY + timedelta(hours=1)
    for interval, days in (("1m", 31), ("5m", 180)):
        start = (end - timedelta(days=days)).isoformat()
        params = {"interval": interval, "start": start, "end": end.isoformat()}
        response = stored.get("/api/v1/bars/TCS", params=params)
        assert response.status_code == 200
        assert len(response.json()["bars"]) == {"1m": 12, "5m": 3}[interval]


def test_bars_name_an_unknown_symbol(stored: httpx.Client) -> None:
    response = stored.get("/api/v1/bars/NOSUCH", params={"format": "csv"})
    assert response.status_code == 404
    assert "'NOSUCH'" in detail(response)


# --- instruments ---------------------------------------------------------------------------


def test_instrument_search(stored: httpx.Client) -> None:
    found = stored.get("/api/v1/instruments", params={"query": "infy"}).json()
    assert found[0]["trading_symbol"] == "INFY"  # the exact symbol before INFY's derivatives
    assert all("INFY" in row["trading_symbol"] for row in found)
    by_name = stored.get("/api/v1/instruments", params={"query": "nifty 50"}).json()
    assert [row["instrument_key"] for row in by_name] == ["NSE_INDEX|Nifty 50"]
    indices = stored.get("/api/v1/instruments", params={"segment": "nse_index"}).json()
    assert {row["trading_symbol"] for row in indices} == {"NIFTY", "BANKNIFTY"}
    assert len(stored.get("/api/v1/instruments", params={"limit": 3}).json()) == 3
    # The text is matched as it is: % and _ are not wildcards.
    assert stored.get("/api/v1/instruments", params={"query": "%"}).json() == []


@pytest.mark.parametrize("params", [{"limit": 101}, {"limit": 0}, {"query": "x" * 101}])
def test_instrument_search_rejects_bad_parameters(
    stored: httpx.Client, params: dict[str, object]
) -> None:
    assert stored.get("/api/v1/instruments", params=params).status_code == 422


# --- metrics -------------------------------------------------------------------------------


def test_metrics(live: httpx.Client) -> None:
    response = live.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    assert samples[("tickvault_ticks_received_total", ())] > 0
    assert samples[("tickvault_rows_written_total", ())] > 0
    assert samples[("tickvault_feed_connected", ())] == 1
    assert samples[("tickvault_subscriptions", (("status", "subscribed"),))] >= 22
    assert samples[("tickvault_subscriptions", (("status", "failed"),))] == 0
    for name in (
        "tickvault_feed_reconnects_total",
        "tickvault_malformed_frames_total",
        "tickvault_writer_queue_rows",
        "tickvault_journal_backlog_frames",
    ):
        assert (name, ()) in samples


# --- secrets -------------------------------------------------------------------------------


def test_no_response_carries_the_token_or_the_api_key(
    apache_server: DbServer, tmp_path: Path
) -> None:
    """A service holding a real-looking token, fed by a simulator that accepts it."""
    token = "upstox-token-5e2b8a91"

    async def start_simulator(url: str) -> FeedSimulator:
        with psycopg.connect(url) as conn:
            records = instrument_records(conn)
        simulator = FeedSimulator(records, token=token, rate=500)
        await simulator.start()
        return simulator

    loop = asyncio.new_event_loop()
    feeder = threading.Thread(target=loop.run_forever, daemon=True)
    feeder.start()
    try:
        with sample_database(apache_server) as url:
            simulator = asyncio.run_coroutine_threadsafe(start_simulator(url), loop).result(30)
            settings = Settings(
                data_dir=tmp_path,
                upstox_access_token=Secret(token),
                upstox_api_base=simulator.url,
                api_key=Secret(API_KEY),
            )
            try:
                with (
                    ingest_beside(settings, url),
                    serve(create_app(settings, url)) as base,
                    client(base) as http,
                ):
                    wait_for(lambda: http.get("/api/v1/websocket/latest-ticks").json()["ticks"])
                    paths = [
                        "/health",
                        "/metrics",
                        "/openapi.json",
                        "/api/v1/websocket/status",
                        "/api/v1/websocket/subscriptions",
                        "/api/v1/websocket/latest-ticks",
                        "/api/v1/ticks/INFY",
                        "/api/v1/bars/INFY",
                        "/api/v1/instruments",
                    ]
                    bodies = [http.get(path).text for path in paths]
                    bodies.append(
                        http.post(
                            "/api/v1/websocket/subscriptions",
                            json={"symbols": ["INFY"]},
                            headers={"X-API-Key": "wrong"},
                        ).text
                    )
                status = bodies[paths.index("/api/v1/websocket/status")]
                assert '"websocket_connected":true' in status
            finally:
                asyncio.run_coroutine_threadsafe(simulator.stop(), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        feeder.join(10)
    for body in bodies:
        assert token not in body
        assert API_KEY not in body
