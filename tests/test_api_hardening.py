"""Issue #8, hardening: what one request may cost, malformed bodies, queries per request,
the instrument search's index, /health under load and outage, the OpenAPI document's
honesty, and the Host header. Real uvicorn, real TimescaleDB, as in test_api.py.
"""

from __future__ import annotations

import http.client
import itertools
import json
import select
import socket
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from api import create_app
from api.budget import POOL_SIZE
from api.limits import MAX_BODY_BYTES, MAX_HEAD_BYTES
from api.params import MAX_SYMBOL_CHARS, MAX_SYMBOL_LIST_CHARS, MAX_SYMBOLS
from api.symbol_resolver import SymbolResolver
from core.config import Secret, Settings
from store.instruments import (
    UnknownSymbol,
    instrument_search,
    load_instruments,
    search_instruments,
)
from tests.conftest import DbServer
from tests.test_api import API_KEY, INFY, client, ingest_beside, sample_database, serve, wait_for
from tests.test_api_process import stand_in_ingest

SUBSCRIPTIONS = "/api/v1/websocket/subscriptions"


@pytest.fixture(scope="module")
def sample_url(apache_server: DbServer) -> Iterator[str]:
    with sample_database(apache_server) as url:
        yield url


@pytest.fixture(scope="module")
def live_app(sample_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """The ingest runs (on a slow simulator) and an API key is configured."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("live"), api_key=Secret(API_KEY), simulator_rate=100
    )
    app = create_app(settings, sample_url)
    with ingest_beside(settings, sample_url) as service, serve(app) as base:
        app.state.base_url = base
        app.state.service = service
        with client(base) as http:
            wait_for(lambda: http.get("/health").status_code == 200)
        yield app


@pytest.fixture(scope="module")
def keyed(live_app: FastAPI) -> Iterator[httpx.Client]:
    with client(live_app.state.base_url) as http:
        yield http


def exchange(api: httpx.Client, head: str, body: Iterable[bytes] = ()) -> http.client.HTTPResponse:
    """Send a raw request head, then the body parts while the server still reads them."""
    address = urlsplit(str(api.base_url))
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        for part in body:
            try:
                sock.sendall(part)
            except OSError:  # the server answered and closed: the rest is not wanted
                break
        response = http.client.HTTPResponse(sock)
        response.begin()
        response.read()
    return response


def post_head(api: httpx.Client, *headers: str) -> str:
    host = urlsplit(str(api.base_url)).netloc
    return "\n".join([f"POST {SUBSCRIPTIONS} HTTP/1.1", f"Host: {host}", *headers, ""])


# --- what a request may cost (item 3) ----------------------------------------------------


@pytest.mark.parametrize("framing", ["Content-Length: 105000000", "Transfer-Encoding: chunked"])
def test_without_the_key_a_body_is_refused_unread(keyed: httpx.Client, framing: str) -> None:
    """The server answers before a byte of the body is sent: it did not wait to read it."""
    started = time.monotonic()
    response = exchange(keyed, post_head(keyed, framing, "Content-Type: application/json"))
    assert response.status == 401
    assert response.getheader("WWW-Authenticate") == "ApiKey"
    assert time.monotonic() - started < 2


def test_with_no_key_configured_a_body_is_refused_unread(sample_url: str, tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path), sample_url)
    with serve(app) as base, client(base) as http:
        head = post_head(http, "Content-Length: 105000000", f"X-API-Key: {API_KEY}")
        response = exchange(http, head)
    assert response.status == 403


def test_a_declared_body_over_the_limit_is_refused_unread(keyed: httpx.Client) -> None:
    head = post_head(keyed, f"Content-Length: {MAX_BODY_BYTES + 1}", f"X-API-Key: {API_KEY}")
    response = exchange(keyed, head)
    assert response.status == 413
    assert response.getheader("Connection") == "close"


def test_a_chunked_body_is_cut_off_at_the_limit(keyed: httpx.Client) -> None:
    """No length is declared, so the bytes are counted as they come; the last chunk, which
    would end the body, is never sent, and the answer comes all the same."""
    chunk = b"x" * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (MAX_BODY_BYTES // len(chunk) + 2)
    head = post_head(
        keyed,
        "Transfer-Encoding: chunked",
        "Content-Type: application/json",
        f"X-API-Key: {API_KEY}",
    )
    response = exchange(keyed, head, chunks)
    assert response.status == 413


def test_a_thousand_symbols_fit_in_a_body(keyed: httpx.Client) -> None:
    symbols = [f"NO-SUCH-INSTRUMENT-{i:05d}-{'X' * 16}" for i in range(1000)]
    response = keyed.post(SUBSCRIPTIONS, json={"symbols": symbols}, headers={"X-API-Key": API_KEY})
    assert response.status_code == 404  # read and resolved: unknown, not too large
    assert "'NO-SUCH-INSTRUMENT-00999-" in response.json()["detail"]


def test_a_request_head_over_the_limit_is_refused(keyed: httpx.Client) -> None:
    huge = "X-Padding: " + "a" * (MAX_HEAD_BYTES * 64)
    host = urlsplit(str(keyed.base_url)).netloc
    try:
        status = exchange(keyed, f"GET /health HTTP/1.1\nHost: {host}\n{huge}\n").status
    except OSError:  # refused by closing the connection while it was still being sent
        status = None
    assert status in (None, 400)
    assert keyed.get("/health").status_code == 200


def head_of(api: httpx.Client, request_line: str, *headers: str) -> bytes:
    host = urlsplit(str(api.base_url)).netloc
    return "\r\n".join([request_line, f"Host: {host}", *headers, "", ""]).encode()


def send_until_answered(api: httpx.Client, pieces: Iterable[bytes]) -> tuple[int, bytes, int, bool]:
    """Send the pieces one by one until the server answers (or stops reading); read its
    answer. Returns its status and body, the bytes sent, and whether it closed the connection
    after an answer that said it would."""
    address = urlsplit(str(api.base_url))
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sent = 0
        for piece in pieces:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(piece)
            except OSError:  # answered and closed
                break
            sent += len(piece)
        file = sock.makefile("rb")
        status = int(file.readline().split()[1])
        headers = http.client.parse_headers(file)
        body = file.read(int(headers["content-length"]))
        closed = False
        if headers["connection"] == "close":  # and it does close
            try:
                closed = file.read(1) == b""
            except ConnectionResetError:
                closed = True
    return status, body, sent, closed


HEAD_REFUSED = f"the request head is larger than {MAX_HEAD_BYTES} bytes".encode()


@pytest.mark.parametrize("over", [0, 1])
def test_a_head_of_the_bound_is_served_and_a_byte_more_refused(
    keyed: httpx.Client, over: int
) -> None:
    head = head_of(keyed, "GET /health HTTP/1.1", "X-Padding: ")
    padding = b"a" * (MAX_HEAD_BYTES - len(head) + over)
    padded = head.replace(b"X-Padding: ", b"X-Padding: " + padding)
    assert len(padded) == MAX_HEAD_BYTES + over
    status, body, _, closed = send_until_answered(keyed, [padded])
    if over:
        assert (status, body, closed) == (400, HEAD_REFUSED, True)
    else:
        assert (status, json.loads(body)["status"]) == (200, "ok")


def test_a_head_trickling_in_is_refused_once_past_the_bound(keyed: httpx.Client) -> None:
    """A head that never ends, its last kilobytes before the bound and past it one byte at a
    time: the server answers as the bound is passed, holding no more of it."""
    start = head_of(keyed, "GET /health HTTP/1.1")[:-2] + b"X-Padding: "
    near = MAX_HEAD_BYTES - 2048
    status, body, sent, closed = send_until_answered(
        keyed,
        itertools.chain(
            [start],
            itertools.repeat(b"a" * 1024, (near - len(start)) // 1024),
            itertools.repeat(b"a", 2 * MAX_HEAD_BYTES),
        ),
    )
    assert (status, body, closed) == (400, HEAD_REFUSED, True)
    assert MAX_HEAD_BYTES < sent < MAX_HEAD_BYTES + 64 * 1024
    assert keyed.get("/health").status_code == 200


def test_endless_trailers_of_a_chunked_body_are_refused(keyed: httpx.Client) -> None:
    """Trailers are held as headers are (they end the body): they count toward the bound."""
    head = head_of(
        keyed,
        f"POST {SUBSCRIPTIONS} HTTP/1.1",
        "Transfer-Encoding: chunked",
        "Content-Type: application/json",
        f"X-API-Key: {API_KEY}",
    )
    pieces = [head, b"2\r\n[]\r\n0\r\nX-Trailer: ", *itertools.repeat(b"a" * 1024, 64 * 1024)]
    status, body, sent, closed = send_until_answered(keyed, pieces)
    assert (status, body, closed) == (400, HEAD_REFUSED, True)
    assert sent < 64 * 1024 * 1024  # answered long before the client ran out of trailers


def test_pipelined_requests_are_all_served(keyed: httpx.Client) -> None:
    address = urlsplit(str(keyed.base_url))
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(head_of(keyed, "GET /health HTTP/1.1") * 3)
        file = sock.makefile("rb")
        statuses = []
        for _ in range(3):
            statuses.append(int(file.readline().split()[1]))
            file.read(int(http.client.parse_headers(file)["content-length"]))
    assert statuses == [200, 200, 200]


LATEST = "/api/v1/websocket/latest-ticks"


@pytest.fixture(scope="module")
def longest_symbols(apache_server: DbServer, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A live API over a master with 201 stocks whose symbols have MAX_SYMBOL_CHARS
    characters, each one percent-encoded at its longest ("&" as %26, a 4-byte character as
    12 bytes); yields (client, names of "&" symbols, names of 4-byte symbols)."""
    names: dict[str, list[str]] = {"&": [], "\U0001d11e": []}
    records = []
    for filler, listed in names.items():
        for n in range(MAX_SYMBOLS + 1):
            name = f"L{ord(filler)}{n:03d}".ljust(MAX_SYMBOL_CHARS, filler)
            listed.append(name)
            records.append(
                {
                    "instrument_key": f"NSE_EQ|LONG{ord(filler)}{n:03d}",
                    "segment": "NSE_EQ",
                    "exchange": "NSE",
                    "instrument_type": "EQ",
                    "trading_symbol": name,
                    "lot_size": 1,
                    "tick_size": 5.0,
                }
            )
    master = tmp_path_factory.mktemp("longest") / "master.json"
    master.write_text(json.dumps(records))
    with sample_database(apache_server) as url:
        with psycopg.connect(url) as conn:
            load_instruments(conn, master)
        settings = Settings(data_dir=master.parent / "data", simulator_rate=100)
        with (
            ingest_beside(settings, url),
            serve(create_app(settings, url)) as base,
            client(base) as http,
        ):
            yield http, names["&"], names["\U0001d11e"]


@pytest.mark.parametrize("filler", ["&", "4-byte"])
def test_the_symbol_cap_of_latest_ticks_can_be_reached(longest_symbols: Any, filler: str) -> None:
    """The documented cap, 200 symbols of the longest kind, fits in a request (the query's
    and the head's limits agree with it); one more is refused naming the cap."""
    http, ampersands, four_bytes = longest_symbols
    names = ampersands if filler == "&" else four_bytes
    assert {len(name) for name in names} == {MAX_SYMBOL_CHARS}
    for _ in range(2):  # resolved, then remembered (answered below FastAPI)
        status, body = latest_ticks(http, ", ".join(names[:MAX_SYMBOLS]))
        assert status == 200, body[:300]
        assert json.loads(body)["missing"] == names[:MAX_SYMBOLS]  # known, no tick yet
    status, body = latest_ticks(http, ", ".join(names))
    assert status == 422
    assert f"at most {MAX_SYMBOLS} symbols per request, got {MAX_SYMBOLS + 1}" in body
    status, body = latest_ticks(http, " " * MAX_SYMBOL_LIST_CHARS + names[0])
    assert status == 422
    assert f"{MAX_SYMBOLS} symbols of at most {MAX_SYMBOL_CHARS} characters" in body


def latest_ticks(api: httpx.Client, symbols: str) -> tuple[int, str]:
    """GET latest-ticks with `symbols` percent-encoded, over http.client: httpx refuses a
    query over 64 KiB, which the longest lists of 4-byte characters are."""
    address = urlsplit(str(api.base_url))
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        connection.request("GET", f"{LATEST}?{urlencode({'symbols': symbols})}")
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


# --- malformed bodies (item 5) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (rb'{"symbols": ["\ud800"]}', "application/json"),  # a lone surrogate, escaped
        (rb'{"symbols": ["INFY"], "mode": "\udfff"}', "application/json"),
        (rb'{"symbols": "\ud800\ud800"}', "application/json"),
        (b'{"symbols": ["\xff\xfe"]}', "application/json"),  # not UTF-8
        (b"\xff\xfe\x00", "text/plain"),
        (b"[" * 50_000 + b"]" * 50_000, "application/json"),  # nested past the recursion limit
        (b"[" * 100_000, "application/json"),
        (b"[]", "application/json"),
        (b"null", "application/json"),
        (b'"INFY"', "application/json"),
        (b"1e999", "application/json"),  # read as infinity
        (b'{"symbols": ["INFY"], "mode": NaN}', "application/json"),
        (b"", "application/json"),
        (b'{"symbols": ["INFY"]}', "application/x-www-form-urlencoded"),
    ],
)
def test_malformed_bodies_get_a_4xx_with_a_json_error(
    keyed: httpx.Client, body: bytes, content_type: str
) -> None:
    headers = {"X-API-Key": API_KEY, "Content-Type": content_type}
    response = keyed.post(SUBSCRIPTIONS, content=body, headers=headers)
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.content.decode("utf-8"))["detail"]
    assert keyed.get("/health").status_code == 200  # and the server carries on


# --- queries per request (item 6a, 6b) ----------------------------------------------------


@contextmanager
def counting_pool(url: str) -> Iterator[tuple[ConnectionPool, list[str]]]:
    """A pool over the real database whose cursors note every statement they send."""
    executed: list[str] = []

    class Counting(psycopg.Cursor):
        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            executed.append(str(query))
            return super().execute(query, params, **kwargs)

    kwargs = {"autocommit": True, "cursor_factory": Counting}
    with ConnectionPool(url, min_size=1, max_size=2, kwargs=kwargs) as pool:
        yield pool, executed


def test_symbols_are_resolved_in_one_query_and_remembered(sample_url: str) -> None:
    known = ["INFY", "tcs", " Nifty 50 ", INFY, "NIFTY"]
    unknown = [f"NOSUCH{i}" for i in range(200)]
    with counting_pool(sample_url) as (pool, executed):
        resolver = SymbolResolver(pool)
        with pytest.raises(UnknownSymbol) as error:
            resolver.resolve(known + unknown)
        assert len(executed) == 1
        assert "'NOSUCH0'" in str(error.value)
        assert "'NOSUCH199'" in str(error.value)
        # Known and unknown answers both come from memory now.
        with pytest.raises(UnknownSymbol):
            resolver.resolve(unknown)
        with pytest.raises(UnknownSymbol):
            resolver.remembered(unknown[:3])
        assert resolver.resolve(known)[0] == INFY
        assert resolver.remembered(known) == resolver.resolve(known)
        assert len(executed) == 1


def test_an_instrument_loaded_after_a_miss_is_found_soon(db_url: str) -> None:
    with counting_pool(db_url) as (pool, executed):
        resolver = SymbolResolver(pool, unknown_ttl_s=0.5)
        with pytest.raises(UnknownSymbol):
            resolver.resolve(["NEWCO"])
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO instruments (instrument_key, trading_symbol, segment,"
                " instrument_type, raw) VALUES ('NSE_EQ|NEWCO', 'NEWCO', 'NSE_EQ', 'EQ', '{}')"
            )
        with pytest.raises(UnknownSymbol):
            resolver.resolve(["NEWCO"])  # still remembered as unknown
        time.sleep(0.6)
        assert resolver.resolve(["newco"]) == ["NSE_EQ|NEWCO"]
        assert resolver.resolve(["NEWCO"]) == ["NSE_EQ|NEWCO"]
        assert len(executed) == 3


def test_latest_ticks_of_unknown_symbols_is_a_404_every_time(keyed: httpx.Client) -> None:
    symbols = ",".join(f"NOPE{i}" for i in range(200))
    for _ in range(3):
        response = keyed.get("/api/v1/websocket/latest-ticks", params={"symbols": symbols})
        assert response.status_code == 404
        assert "'NOPE199'" in response.json()["detail"]


# --- the instrument search's index (item 6c) -----------------------------------------------

# The search as it was before sql/008: strpos, which no index serves. The reference the
# indexed query must agree with.
_SEARCH_BEFORE = (
    "SELECT instrument_key FROM instruments"
    " WHERE (%(text)s::text IS NULL"
    "        OR strpos(upper(trading_symbol), upper(%(text)s)) > 0"
    "        OR strpos(upper(coalesce(name, '')), upper(%(text)s)) > 0)"
    " AND (%(segment)s::text IS NULL OR segment = upper(%(segment)s))"
    " ORDER BY upper(trading_symbol) = upper(%(text)s) IS NOT TRUE,"
    " NOT starts_with(upper(trading_symbol), upper(coalesce(%(text)s, ''))),"
    " trading_symbol, instrument_key"
    " LIMIT %(limit)s"
)


@pytest.fixture(scope="module")
def big_master(apache_server: DbServer) -> Iterator[str]:
    """The sample master and 20,000 made-up instruments with symbol-like names."""
    with sample_database(apache_server) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO instruments (instrument_key, trading_symbol, name, segment,"
                " instrument_type, raw)"
                " SELECT 'NSE_FO|' || i, upper(substr(md5(i::text), 1, 6)) || i % 97 || 'FUT',"
                "  'Company ' || substr(md5('n' || i), 1, 8) || CASE WHEN i % 50 = 0"
                "   THEN ' 50%_\\ Ltd' ELSE ' Ltd' END,"
                "  CASE WHEN i % 3 = 0 THEN 'NSE_EQ' ELSE 'NSE_FO' END, 'FUT', '{}'"
                " FROM generate_series(1, 20000) AS i"
            )
            conn.execute("ANALYZE instruments")
        yield url


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def _plan(url: str, text: str | None, segment: str | None) -> list[dict[str, Any]]:
    """The nodes of the plan the search endpoint's query gets on `url`."""
    sql, params = instrument_search(text, segment, 20)
    with psycopg.connect(url, autocommit=True) as conn:
        [[[explained]]] = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchall()
    return list(_plan_nodes(explained["Plan"]))


@pytest.mark.parametrize("segment", [None, "nse_fo"])
def test_the_search_reads_the_trigram_indexes(big_master: str, segment: str | None) -> None:
    nodes = _plan(big_master, "infy", segment)
    assert {node.get("Index Name") for node in nodes} >= {
        "instruments_symbol_trgm",
        "instruments_name_trgm",
    }
    assert "Seq Scan" not in {node["Node Type"] for node in nodes}


def test_the_listing_reads_the_master_in_symbol_order(big_master: str) -> None:
    nodes = _plan(big_master, None, None)
    assert [node.get("Index Name") for node in nodes if "Index Name" in node] == [
        "instruments_listing"
    ]
    assert not {"Seq Scan", "Sort"} & {node["Node Type"] for node in nodes}


@pytest.mark.parametrize(
    "text", [None, "", "infy", "NIFTY", "fut", "a1", "%", "_", "\\", "50%_\\", "company 0", "ß"]
)
@pytest.mark.parametrize("segment", [None, "nse_eq", "NSE_INDEX"])
def test_the_indexed_search_finds_what_the_scan_found(
    big_master: str, text: str | None, segment: str | None
) -> None:
    with psycopg.connect(big_master, autocommit=True) as conn:
        found = [row["instrument_key"] for row in search_instruments(conn, text, segment, 100)]
        params = {"text": text, "segment": segment, "limit": 100}
        expected = [key for (key,) in conn.execute(_SEARCH_BEFORE, params)]
    assert found == expected


# --- /health (item 6d) ---------------------------------------------------------------------


def test_health_answers_at_once_while_data_requests_hold_every_thread(
    apache_server: DbServer, tmp_path: Path
) -> None:
    """Sixty data requests wait on a lock: some hold every pooled connection (the places of
    both budget classes, api/budget.py), the rest wait for a place or were refused. /health
    needs neither."""
    with sample_database(apache_server) as url, stand_in_ingest(tmp_path):
        app = create_app(Settings(data_dir=tmp_path), url)
        with (
            serve(app) as base,
            client(base) as http,
            psycopg.connect(url) as locker,
            psycopg.connect(url, autocommit=True) as watcher,
            ThreadPoolExecutor(60) as pool,
        ):
            locker.execute("LOCK TABLE instruments IN ACCESS EXCLUSIVE MODE")

            def search(i: int) -> int:
                # Bars look INFY up in the master first: they wait on the lock too.
                path = "/api/v1/instruments" if i % 6 == 0 else "/api/v1/bars/INFY"
                with client(base) as own:
                    return own.get(path, params={"query": "INFY"}).status_code

            searches = [pool.submit(search, i) for i in range(60)]
            wait_for(
                lambda: (
                    watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND application_name = 'tickvault-api' AND wait_event_type = 'Lock'"
                    ).fetchone()[0]
                    == POOL_SIZE
                ),
                timeout=10,
            )
            time.sleep(0.3)
            started = time.monotonic()
            response = http.get("/health")
            took = time.monotonic() - started
            waiting = sum(not search.done() for search in searches)
            locker.rollback()
            for search in searches:
                search.result()
    assert response.status_code == 200
    assert took < 1.0
    assert waiting >= POOL_SIZE  # the data requests were still held when /health answered


def test_health_is_503_while_the_database_refuses_and_200_once_it_is_back(
    apache_server: DbServer, tmp_path: Path
) -> None:
    with sample_database(apache_server) as url, stand_in_ingest(tmp_path):
        name = conninfo_to_dict(url)["dbname"]
        app = create_app(Settings(data_dir=tmp_path), url)
        with (
            serve(app) as base,
            client(base) as http,
            psycopg.connect(apache_server.admin_url, autocommit=True) as admin,
        ):
            assert http.get("/health").status_code == 200
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            try:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    [name],
                )
                wait_for(lambda: http.get("/health").status_code == 503, timeout=10)
                assert http.get("/health").json() == {
                    "status": "unavailable",
                    "reason": "the database does not answer",
                }
            finally:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            wait_for(lambda: http.get("/health").status_code == 200, timeout=10)


def test_health_is_503_with_the_ingest_services_reason(
    live_app: FastAPI, keyed: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert keyed.get("/health").json()["ingest"] == "running in another process"
    service = live_app.state.service
    monkeypatch.setattr(service, "health_problem", lambda: "the feed is down since 09:15")
    wait_for(lambda: keyed.get("/health").status_code == 503, timeout=10)  # published in 0.5 s
    response = keyed.get("/health")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "reason": "the feed is down since 09:15"}
    monkeypatch.undo()  # healthy again for the tests after this one, once it is published
    wait_for(lambda: keyed.get("/health").status_code == 200, timeout=10)


# --- the OpenAPI document says what the server does (item 8) ---------------------------------


def test_openapi_documents_the_limits(keyed: httpx.Client) -> None:
    paths = keyed.get("/openapi.json").json()["paths"]

    def parameter(path: str, name: str) -> dict[str, Any]:
        [found] = [p for p in paths[path]["get"]["parameters"] if p["name"] == name]
        return found

    cursor = parameter("/api/v1/ticks/{symbol}", "cursor")["schema"]["anyOf"][0]
    assert (cursor["maxLength"], cursor["pattern"]) == (100, "^[A-Za-z0-9_-]+$")
    symbol = parameter("/api/v1/ticks/{symbol}", "symbol")["schema"]
    assert (symbol["minLength"], symbol["maxLength"]) == (1, 100)
    end = parameter("/api/v1/ticks/{symbol}", "end")
    assert end["schema"]["anyOf"][0] == {"type": "string", "format": "date-time"}
    assert "ISO 8601" in end["description"]
    assert "31 days" in parameter("/api/v1/bars/{symbol}", "start")["description"]
    symbols = parameter("/api/v1/websocket/latest-ticks", "symbols")["description"]
    assert "at most 200 symbols of at most 100 characters" in symbols
    post = paths[SUBSCRIPTIONS]["post"]["responses"]
    assert {"400", "413", "401", "403", "422"} <= set(post)


@pytest.mark.parametrize("end", ["0", "-1", "1700000000", "1e3", "2026-01-05", "yesterday"])
def test_times_are_iso_8601_date_times_only(keyed: httpx.Client, end: str) -> None:
    response = keyed.get("/api/v1/ticks/INFY", params={"end": end})
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["query", "end"]]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("OPTIONS", SUBSCRIPTIONS, "GET, HEAD, POST"),
        ("PUT", SUBSCRIPTIONS, "GET, HEAD, POST"),
        ("OPTIONS", f"{SUBSCRIPTIONS}/INFY", "DELETE"),
        ("POST", f"{SUBSCRIPTIONS}/INFY", "DELETE"),
        ("DELETE", "/health", "GET, HEAD"),
    ],
)
def test_405_names_every_method_of_the_path(
    keyed: httpx.Client, method: str, path: str, allowed: str
) -> None:
    response = keyed.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed


# --- the Host header (item 9) ------------------------------------------------------------


def test_a_foreign_host_is_refused(keyed: httpx.Client) -> None:
    assert keyed.get("/health", headers={"Host": "evil.example"}).status_code == 400
    assert keyed.get("/health", headers={"Host": "evil.example:8000"}).status_code == 400
    port = urlsplit(str(keyed.base_url)).port
    for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", "[::1]"):
        assert keyed.get("/health", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_come_from_the_environment(
    sample_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def allowed(api_host: str, environ: dict[str, str]) -> tuple[str, ...]:
        return Settings.from_env({**environ, "TICKVAULT_API_HOST": api_host}).api_allowed_hosts

    assert allowed("127.0.0.1", {}) == ("127.0.0.1", "localhost", "[::1]")
    assert allowed("::", {}) == ("127.0.0.1", "localhost", "[::1]", "[::]")
    assert allowed("0.0.0.0", {"TICKVAULT_API_ALLOWED_HOSTS": " api.example , *.lan"}) == (
        "api.example",
        "*.lan",
    )
    monkeypatch.setenv("TICKVAULT_API_ALLOWED_HOSTS", "testserver,api.example")
    app = create_app(Settings.from_env(data_dir=tmp_path), sample_url)
    with stand_in_ingest(tmp_path), serve(app) as base, client(base) as http:
        assert http.get("/health", headers={"Host": "api.example"}).status_code == 200
        assert http.get("/health", headers={"Host": "testserver"}).status_code == 200
        assert http.get("/health").status_code == 400  # 127.0.0.1 is no longer listed
