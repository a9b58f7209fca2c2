"""The latest-ticks shortcut (api/latest_fast.py) answers as the FastAPI route does.

A real uvicorn serves the app without an ingest of its own, over a table published here with
ticks chosen to cover every column type (None, integers, floats of every shape, times with
and without microseconds). The first request of a list goes to the route (its symbols are not
remembered yet), the next ones to the shortcut: both must give the same bytes, and the same
content as a JSON built here from the published ticks; every error still comes from the route.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from api import create_app
from api.latest_fast import LatestTicksShortcut
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
            yield app, http, publisher, ticks


def test_the_shortcut_answers_the_bytes_the_route_gave(published_api: Any) -> None:
    app, http, _, ticks = published_api
    params = {"symbols": "INFY, Nifty 50,tcs,VSTIND,INFY"}
    by_route = http.get(LATEST, params=params)  # not remembered yet: the route resolves
    shortcut = _shortcut(app)
    assert not shortcut._rendered
    by_shortcut = [http.get(LATEST, params=params) for _ in range(3)]
    assert shortcut._rendered  # the shortcut answered them

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
