"""The latest-ticks shortcut (api/latest_fast.py) answers as the FastAPI route does.

A real uvicorn serves the app without an ingest of its own, over a table published here with
ticks chosen to cover every column type (None, integers, floats of every shape, times with
and without microseconds). The first request of a list goes to the route (its symbols are not
remembered yet), the next ones to the shortcut: both must give the same bytes, and the same
content as a JSON built here from the published ticks; every error still comes from the route.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from api import create_app
from api.latest_fast import PATH, LatestTicks, LatestTicksShortcut
from core.config import Settings
from ingest.channels.latest_publisher import LatestTickPublisher
from ingest.channels.latest_table import published_path
from store.instruments import resolve_symbols
from store.tick_row import TICK_COLUMN_TYPES, TICK_COLUMNS, TIME_COLUMNS
from tests.conftest import DbServer
from tests.test_api import client, sample_database, serve

LATEST = "/api/v1/websocket/latest-ticks"
US = 1_000_000
DAY_US = 86_400 * US


def _tick(key: str, **values: Any) -> tuple[Any, ...]:
    """A tick of `key` with every column set, `values` overriding (None included)."""
    row: dict[str, Any] = {
        name: 0.5 if pg_type == "float8" else 0 for name, pg_type in TICK_COLUMN_TYPES.items()
    }
    row.update(
        instrument_key=key,
        ts=9_500 * DAY_US + 4 * 3600 * US + 123_456,
        ltp=1512.35,
        ltq=25,
        vtt=1_234_567_890_123,
        volume_delta=-3,
        cp=1500.0,
        atp=1e-7,
        oi=2.5e17,
        iv=0.1 + 0.2,
        tbq=-0.0,
        tsq=12.0,
        bid_price=1512.3,
        bid_qty=2**62,
        ask_price=1512.4,
        ask_qty=0,
        feed_ts=9_500 * DAY_US + 4 * 3600 * US,
        received_at=9_500 * DAY_US + 4 * 3600 * US + 1,
    )
    row.update(values)
    return tuple(row[name] for name in TICK_COLUMNS)


def _expected(tick: tuple[Any, ...], name: str) -> dict[str, Any]:
    """What the answer says of a tick, built from the tuple alone: times as aware UTC."""
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    out = {
        column: epoch + timedelta(microseconds=value)
        if index in TIME_COLUMNS and value is not None
        else value
        for index, (column, value) in enumerate(zip(TICK_COLUMNS, tick, strict=True))
    }
    return {**out, "symbol": name}


def _read(tick: dict[str, Any]) -> dict[str, Any]:
    """A tick of an answer, its times parsed (they must be ISO 8601 in UTC, with Z)."""
    for column in ("ts", "feed_ts", "received_at"):
        if tick[column] is not None:
            assert tick[column].endswith("Z"), tick[column]
            tick[column] = datetime.fromisoformat(tick[column])
    return tick


def _typed(row: dict[str, Any]) -> list[tuple[str, type, Any]]:
    """Keys in order, with each value's type: 1.0 and 1 are not the same answer."""
    return [(key, type(value), value) for key, value in row.items()]


class _Counted:
    """The middleware's answer, counting the requests that reached the middleware."""

    def __init__(self, answer: LatestTicks) -> None:
        self.answer = answer
        self.asked = 0

    def body(self, query_string: bytes) -> bytes | None:
        self.asked += 1
        return self.answer.body(query_string)


@contextlib.contextmanager
def _counting(app: FastAPI) -> Iterator[_Counted]:
    """Within it, the app's middleware counts the requests that reach it."""
    shortcut = _shortcut(app)
    counted = shortcut.answer = _Counted(shortcut.answer)
    try:
        yield counted
    finally:
        shortcut.answer = counted.answer


def _exchange(base: str, head: str) -> bytes:
    """One request on a new connection; the answer's head and body (none to a HEAD)."""
    address = urlsplit(base)
    has_body = not head.startswith("HEAD")
    host = f"{address.hostname}:{address.port}"
    with socket.create_connection((address.hostname, address.port), timeout=2) as sock:
        sock.sendall(head.replace("HOST", host).replace("\n", "\r\n").encode())
        received = b""
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                received += chunk
                head_end = received.find(b"\r\n\r\n")
                length = re.search(rb"content-length: (\d+)", received[:head_end])
                body = int(length[1]) if length and has_body else 0
                if head_end >= 0 and len(received) >= head_end + 4 + body:
                    break
    return re.sub(rb"date: [^\r]*\r\n", b"", received)  # the one header that moves


def _shortcut(app: FastAPI) -> LatestTicksShortcut:
    """The app's shortcut, found down its middleware stack (built by the first request)."""
    layer: Any = app.middleware_stack
    while not isinstance(layer, LatestTicksShortcut):
        layer = layer.app
    return layer


@pytest.fixture(scope="module")
def published_api(
    apache_server: DbServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FastAPI, httpx.Client, LatestTickPublisher, dict[str, tuple[Any, ...]]]]:
    data_dir = tmp_path_factory.mktemp("fast") / "data"
    with sample_database(apache_server) as url:
        with psycopg.connect(url) as conn:
            keys = resolve_symbols(conn, ["INFY", "TCS", "Nifty 50"])
        ticks = {
            "INFY": _tick(keys["INFY"]),
            "TCS": _tick(keys["TCS"], ltq=None, feed_ts=None, delta=None, received_at=0),
            "Nifty 50": _tick(keys["Nifty 50"], ltq=None, vtt=None, volume_delta=None, ltp=1.0),
        }
        app = create_app(Settings(data_dir=data_dir), url)
        with (
            LatestTickPublisher(published_path(data_dir), capacity=16) as publisher,
            serve(app) as base,
            client(base) as http,
        ):
            publisher.publish(ticks.values())
            app.state.base = base
            yield app, http, publisher, ticks


def test_the_shortcut_answers_the_bytes_the_route_gave(published_api: Any) -> None:
    app, http, _, ticks = published_api
    params = {"symbols": "INFY, Nifty 50,tcs,VSTIND,INFY"}
    by_route = http.get(LATEST, params=params)  # not remembered yet: the route resolves
    answer = app.state.latest_ticks
    assert not answer._rendered
    by_shortcut = [http.get(LATEST, params=params) for _ in range(3)]
    assert answer._rendered  # the shortcut answered them

    assert by_route.status_code == 200, by_route.text
    for response in by_shortcut:
        assert response.status_code == 200
        assert response.content == by_route.content
        assert response.headers["content-type"] == by_route.headers["content-type"]
        assert response.headers["content-length"] == by_route.headers["content-length"]

    body = by_shortcut[-1].json()
    assert list(body) == ["source", "ticks", "missing"]
    assert body["source"] == "cache"
    assert body["missing"] == ["VSTIND"]  # in the master, no tick published
    expected = [
        _expected(ticks["INFY"], "INFY"),
        _expected(ticks["Nifty 50"], "Nifty 50"),
        _expected(ticks["TCS"], "tcs"),  # the name as asked
    ]
    assert [_typed(_read(tick)) for tick in body["ticks"]] == [_typed(e) for e in expected]


def test_a_new_tick_is_rendered_anew(published_api: Any) -> None:
    _, http, publisher, ticks = published_api
    params = {"symbols": "INFY"}
    http.get(LATEST, params=params)
    newer = _tick(ticks["INFY"][0], ltp=1513.5, ltq=None, received_at=10_000 * DAY_US)
    publisher.publish([newer])
    try:
        [tick] = http.get(LATEST, params=params).json()["ticks"]
        assert _typed(_read(tick)) == _typed(_expected(newer, "INFY"))
    finally:
        publisher.publish([ticks["INFY"]])
    [tick] = http.get(LATEST, params=params).json()["ticks"]
    assert _typed(_read(tick)) == _typed(_expected(ticks["INFY"], "INFY"))


def test_the_protocol_writes_the_bytes_the_middleware_wrote(published_api: Any) -> None:
    """A plain keep-alive GET is answered by the HTTP protocol (api/http_protocol.py) without
    reaching the middleware; a request the protocol leaves to the ASGI path (here one with
    `Expect`) reaches it; both get the same bytes on the wire, head and body."""
    app, http, _, _ = published_api
    target = f"{LATEST}?symbols=INFY,Nifty%2050,VSTIND"
    http.get(target)  # the route resolves the symbols once
    with _counting(app) as counted:
        by_protocol = _exchange(app.state.base, f"GET {target} HTTP/1.1\nHost: HOST\n\n")
        assert counted.asked == 0
        expecting = "Expect: 100-continue\n"
        by_middleware = _exchange(
            app.state.base, f"GET {target} HTTP/1.1\nHost: HOST\n{expecting}\n"
        )
        assert counted.asked == 1
    assert by_protocol.startswith(b"HTTP/1.1 200 OK\r\n")
    assert by_protocol == by_middleware
    assert by_protocol.endswith(http.get(target).content)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        ("GET PATH HTTP/1.1\nHost: evil.example\n\n", 400),  # the trusted-host check's
        ("HEAD PATH HTTP/1.1\nHost: HOST\n\n", 405),
        ("POST PATH HTTP/1.1\nHost: HOST\nContent-Length: 0\n\n", 405),
        ("GET PATH HTTP/1.1\nHost: HOST\nContent-Length: 300000\n\n", 413),  # the body limit's
        ("GET PATH HTTP/1.0\nHost: HOST\n\n", 200),
        ("GET PATH HTTP/1.1\nHost: HOST\nConnection: close\n\n", 200),
    ],
)
def test_requests_the_protocol_leaves_to_the_app(
    published_api: Any, head: str, status: int
) -> None:
    """Remembered symbols, and requests that some layer in front of the shortcut acts on:
    they all reach the app, which answers them as it always has."""
    app, http, _, _ = published_api
    target = f"{LATEST}?symbols=INFY"
    assert http.get(target).status_code == 200
    with _counting(app) as counted:
        answer = _exchange(app.state.base, head.replace("PATH", target))
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert counted.asked == (status == 200)  # the 200s from the shortcut, below the layers


def test_the_openapi_entry_is_the_routes(published_api: Any) -> None:
    """Served through the ordinary path, and still the route's: its one method, its query,
    its answers and its schema."""
    _, http, _, _ = published_api
    entry = http.get("/openapi.json").json()["paths"][LATEST]
    assert list(entry) == ["get"]
    assert [p["name"] for p in entry["get"]["parameters"]] == ["symbols"]
    assert sorted(entry["get"]["responses"]) == ["200", "404", "422", "429", "503"]
    schema = entry["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/LatestTicksOut"}


def test_the_gate_keeps_the_protocol_out() -> None:
    """A route that asked for the API key would never be answered below the gate; nor a host
    that only a wildcard pattern allows (the trusted-host middleware decides)."""
    from starlette.datastructures import State

    assert not LatestTicks(State(), ["*"], needs_api_key=True).lets_through(b"localhost")
    answer = LatestTicks(State(), ["localhost", "*.example.com"], needs_api_key=False)
    assert answer.lets_through(b"localhost:8000")
    assert not answer.lets_through(b"api.example.com")
    assert not answer.lets_through(b"")
    assert LatestTicks(State(), ["*"], needs_api_key=False).lets_through(b"")
    assert PATH == LATEST


@pytest.mark.parametrize(
    ("symbols", "status"),
    [
        ("INFY,NOSUCH", 404),
        ("infy,ÜNKNOWN", 404),
        ("", 422),
        (" , ", 422),
        ("INFY,\x00", 422),
        ("INFY," + "X" * 101, 422),
        (",".join(f"S{n}" for n in range(201)), 422),
        ("INFY," * 5000, 422),  # over MAX_SYMBOL_LIST_CHARS
    ],
)
def test_errors_are_the_routes_every_time(published_api: Any, symbols: str, status: int) -> None:
    """Asked twice: the second time the resolver remembers the unknown symbol, and the answer
    must still be the route's."""
    _, http, _, _ = published_api
    first, second = (http.get(LATEST, params={"symbols": symbols}) for _ in range(2))
    assert first.status_code == status, first.text
    assert second.status_code == status
    assert second.content == first.content
    assert "detail" in first.json()


def test_every_instrument_and_other_methods_stay_with_the_route(published_api: Any) -> None:
    _, http, _, ticks = published_api
    every = http.get(LATEST).json()
    assert sorted(tick["instrument_key"] for tick in every["ticks"]) == sorted(
        tick[0] for tick in ticks.values()
    )
    assert http.head(LATEST, params={"symbols": "INFY"}).status_code == 405
    assert http.post(LATEST, params={"symbols": "INFY"}).status_code == 405


def test_no_ingest_is_the_routes_503(published_api: Any) -> None:
    """Remembered symbols, then the ingest stops: the route answers 503, not the shortcut.
    (Last in this module: it stops the table the others read.)"""
    _, http, publisher, _ = published_api
    assert http.get(LATEST, params={"symbols": "INFY"}).status_code == 200
    publisher.close()
    response = http.get(LATEST, params={"symbols": "INFY"})
    assert response.status_code == 503
    assert "has stopped" in response.json()["detail"]
