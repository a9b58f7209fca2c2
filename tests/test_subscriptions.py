"""SubscriptionManager with a real database, a real FeedClient and the feed simulator."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from core.config import Secret, Settings
from core.upstox_wire import AUTHORIZE_PATH
from ingest.client import FeedClient, SubscriptionLimitError
from ingest.simulator import FeedSimulator
from ingest.subscriptions import SubscriptionManager
from store.instruments import UnknownSymbol, default_sample_path, load_instruments
from tests.test_client import INFY, NIFTY, TCS, TOKEN, RecordingSink, until

BANKNIFTY = "NSE_INDEX|Nifty Bank"


def load(db_url: str, path: Path) -> None:
    with psycopg.connect(db_url) as conn:
        load_instruments(conn, path)


def rows(db_url: str) -> dict[str, tuple[Any, ...]]:
    """instrument_key -> (mode, status, error, subscribed_at is set)."""
    with psycopg.connect(db_url) as conn:
        return {
            key: tuple(rest)
            for key, *rest in conn.execute(
                "SELECT instrument_key, mode, status, error, subscribed_at IS NOT NULL"
                " FROM subscriptions"
            )
        }


@contextlib.asynccontextmanager
async def stack(
    db_url: str, base: str, **settings: Any
) -> AsyncIterator[tuple[FeedClient, SubscriptionManager, RecordingSink]]:
    """A client and a manager on the test database, talking to the feed at `base`."""
    config = Settings(upstox_api_base=base, upstox_access_token=Secret(TOKEN), **settings)
    sink = RecordingSink()
    client = FeedClient(config, sink, backoff_initial_s=0.05, backoff_max_s=0.5)
    with ConnectionPool(db_url, min_size=1, max_size=2, open=True) as pool:
        try:
            yield client, SubscriptionManager(client, pool, config), sink
        finally:
            await client.stop()


@contextlib.asynccontextmanager
async def simulator() -> AsyncIterator[FeedSimulator]:
    sim = FeedSimulator(token=TOKEN, rate=500, frame_interval=0.02)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def refusing_feed(names: str) -> AsyncIterator[str]:
    """A feed that refuses every subscription, naming the keys by `guid` or by `keys`."""

    async def refuse(ws: ServerConnection) -> None:
        async for message in ws:
            request = json.loads(message)
            named = (
                {"guid": request["guid"]}
                if names == "guid"
                else {"data": {"instrumentKeys": request["data"]["instrumentKeys"]}}
            )
            refusal = {"status": "failed", "error": "segment not enabled", "method": "sub"}
            await ws.send(json.dumps({**refusal, **named}))

    def authorize(connection: ServerConnection, request: Request) -> Response | None:
        if request.path != AUTHORIZE_PATH:
            return None
        port = connection.transport.get_extra_info("sockname")[1]
        uri = f"ws://127.0.0.1:{port}/feed?code=1"
        return connection.respond(200, json.dumps({"data": {"authorized_redirect_uri": uri}}))

    async with serve(refuse, "127.0.0.1", 0, process_request=authorize) as server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def write_universe(path: Path, stocks: int) -> Path:
    records: list[dict[str, Any]] = [
        {"instrument_key": NIFTY, "segment": "NSE_INDEX", "instrument_type": "INDEX",
         "trading_symbol": "NIFTY", "name": "Nifty 50"},
        {"instrument_key": BANKNIFTY, "segment": "NSE_INDEX", "instrument_type": "INDEX",
         "trading_symbol": "BANKNIFTY", "name": "Nifty Bank"},
    ]  # fmt: skip
    for i in range(stocks):
        key = f"NSE_EQ|INE{i:06d}01"
        records += [
            {"instrument_key": key, "segment": "NSE_EQ", "instrument_type": "EQ",
             "trading_symbol": f"STOCK{i}"},
            {"instrument_key": f"NSE_FO|{60000 + i}", "segment": "NSE_FO",
             "instrument_type": "FUT", "trading_symbol": f"STOCK{i} FUT",
             "underlying_key": key, "underlying_type": "EQUITY"},
        ]  # fmt: skip
    path.write_text(json.dumps(records))
    return path


def test_universe_is_subscribed_in_batches_of_50(db_url: str, tmp_path: Path) -> None:
    load(db_url, write_universe(tmp_path / "instruments.json", 120))

    async def main() -> None:
        async with simulator() as sim, stack(db_url, sim.url) as (client, manager, _):
            await client.connect()
            keys = await manager.subscribe_to_universe("full")
            assert len(keys) == 122
            assert client.status().requests == {"sub": 3}  # 50 + 50 + 22
            await until(lambda: sim.stats()["subscribed_keys"] == 122, "122 keys at the server")
            status = manager.get_subscription_status()

        assert rows(db_url) == dict.fromkeys(keys, ("full", "subscribed", None, True))
        assert {k: status[k] for k in status if k != "subscriptions"} == {
            "total_symbols": 122,
            "subscribed_count": 122,
            "failed_count": 0,
            "pending_count": 0,
            "subscription_rate": "100.00%",
        }
        by_key = {entry["instrument_key"]: entry for entry in status["subscriptions"]}
        assert by_key["NSE_EQ|INE00000701"] == {
            "symbol": "STOCK7",
            "instrument_key": "NSE_EQ|INE00000701",
            "mode": "full",
            "status": "subscribed",
            "error": None,
        }
        assert by_key[NIFTY]["symbol"] == "NIFTY"

    asyncio.run(main())


def test_sample_universe_is_the_fno_stocks_and_the_indices(db_url: str) -> None:
    load(db_url, default_sample_path())
    records = json.loads(default_sample_path().read_text())
    stocks = {
        r["underlying_key"]
        for r in records
        if r["segment"] == "NSE_FO"
        and r["instrument_type"] == "FUT"
        and r.get("underlying_type") == "EQUITY"
    }

    async def main() -> None:
        async with simulator() as sim, stack(db_url, sim.url) as (client, manager, sink):
            await client.connect()
            keys = await manager.subscribe_to_universe("ltpc")
            assert set(keys) == stocks | {NIFTY, BANKNIFTY}
            assert len(keys) == len(stocks) + 2
            assert client.get_subscribed_symbols() == dict.fromkeys(keys, "ltpc")
            await until(lambda: sink.live(INFY), "INFY's live frames")
            status = manager.get_subscription_status()
            assert status["subscribed_count"] == status["total_symbols"] == len(keys)

    asyncio.run(main())


def test_unknown_symbol_subscribes_nothing_of_the_call(db_url: str) -> None:
    load(db_url, default_sample_path())

    async def main() -> None:
        async with simulator() as sim, stack(db_url, sim.url) as (client, manager, _):
            await client.connect()
            with pytest.raises(UnknownSymbol, match="NOSUCHCO"):
                await manager.subscribe_to_symbols(["INFY", "NOSUCHCO"])
            assert client.get_subscribed_symbols() == {}
            assert client.status().requests == {}
            assert manager.get_subscription_status()["total_symbols"] == 0

    asyncio.run(main())
    assert rows(db_url) == {}


def test_symbols_resolve_and_unsubscribe(db_url: str) -> None:
    load(db_url, default_sample_path())

    async def main() -> None:
        async with simulator() as sim, stack(db_url, sim.url) as (client, manager, _):
            await client.connect()
            keys = await manager.subscribe_to_symbols(["infy", "Nifty 50", TCS], "ltpc")
            assert keys == [INFY, NIFTY, TCS]
            assert client.get_subscribed_symbols() == dict.fromkeys(keys, "ltpc")

            assert await manager.unsubscribe_symbols(["INFY"]) == [INFY]
            assert INFY not in client.subscribed_keys
            assert client.status().requests == {"sub": 1, "unsub": 1}
            await until(lambda: sim.stats()["subscribed_keys"] == 2, "the server to drop INFY")
            status = manager.get_subscription_status()
            assert status["total_symbols"] == 2
            assert {e["symbol"] for e in status["subscriptions"]} == {"NIFTY", "TCS"}

    asyncio.run(main())
    table = rows(db_url)
    assert table[INFY][:2] == ("ltpc", "unsubscribed")
    assert table[NIFTY][:2] == table[TCS][:2] == ("ltpc", "subscribed")


def test_resume_subscribes_the_same_keys_in_the_same_modes(db_url: str) -> None:
    load(db_url, default_sample_path())
    sbin, itc = "NSE_EQ|INE062A01020", "NSE_EQ|INE154A01025"

    async def main() -> None:
        async with simulator() as sim:
            async with stack(db_url, sim.url) as (client, manager, _):
                await client.connect()
                await manager.subscribe_to_symbols(["INFY"], "full")
                await manager.subscribe_to_symbols(["Nifty 50"], "ltpc")
                await manager.subscribe_to_symbols(["SBIN"], "full")
                await manager.unsubscribe_symbols(["SBIN"])
            with psycopg.connect(db_url) as conn:  # left pending by a crash; and one refused
                conn.execute(
                    "INSERT INTO subscriptions (instrument_key, mode, status) VALUES"
                    " (%s, 'option_greeks', 'pending'), (%s, 'full', 'failed')",
                    [TCS, itc],
                )

            async with stack(db_url, sim.url) as (client, manager, sink):
                assert await manager.resume() == 3
                expected = {INFY: "full", NIFTY: "ltpc", TCS: "option_greeks"}
                assert client.get_subscribed_symbols() == expected
                await client.connect()
                await until(lambda: all(sink.live(key) for key in expected), "frames for all")
                assert sbin not in client.subscribed_keys

    asyncio.run(main())
    table = rows(db_url)
    assert table[TCS][:2] == ("option_greeks", "subscribed")
    assert table[itc][1] == "failed"


def test_keys_beyond_the_limits_are_recorded_failed(db_url: str) -> None:
    load(db_url, default_sample_path())

    async def main() -> None:
        async with (
            simulator() as sim,
            stack(db_url, sim.url, mode_limits={"full": (1, 1)}) as (client, manager, _),
        ):
            with pytest.raises(SubscriptionLimitError, match="mode 'full'"):
                await manager.subscribe_to_symbols(["INFY", "TCS"])
            assert client.get_subscribed_symbols() == {}
            status = manager.get_subscription_status()
            assert (status["failed_count"], status["subscription_rate"]) == (2, "0.00%")

    asyncio.run(main())
    table = rows(db_url)
    assert {table[INFY][1], table[TCS][1]} == {"failed"}
    assert "room for 1" in table[INFY][2]


@pytest.mark.parametrize("names", ["guid", "keys"])
def test_keys_the_server_refuses_are_marked_failed(db_url: str, names: str) -> None:
    load(db_url, default_sample_path())

    async def main() -> None:
        async with refusing_feed(names) as base, stack(db_url, base) as (client, manager, _):
            await client.connect()
            await manager.subscribe_to_symbols(["INFY", "TCS"])
            await until(
                lambda: manager.get_subscription_status()["failed_count"] == 2, "the refusal"
            )
            assert client.failed_subscriptions() == dict.fromkeys(
                [INFY, TCS], "segment not enabled"
            )
            assert client.get_subscribed_symbols() == {}
            status = manager.get_subscription_status()
            assert {e["error"] for e in status["subscriptions"]} == {"segment not enabled"}

    asyncio.run(main())


def test_status_of_nothing(db_url: str) -> None:
    async def main() -> None:
        async with stack(db_url, "http://127.0.0.1:9") as (_, manager, _):
            assert manager.get_subscription_status() == {
                "total_symbols": 0,
                "subscribed_count": 0,
                "failed_count": 0,
                "pending_count": 0,
                "subscription_rate": "0.00%",
                "subscriptions": [],
            }

    asyncio.run(main())
