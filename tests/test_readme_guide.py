"""docs/guide.md, the Phase 2 guide's surface, runs as written: every Python block, in order, in
one namespace, against a real database and the simulator (what a user pastes into their script)."""

from __future__ import annotations

import ast
import asyncio
import logging
import re
from pathlib import Path

import psycopg
import pytest

from store.instruments import default_sample_path, load_instruments
from tests.conftest import REPO

GUIDE = REPO / "docs" / "guide.md"


def guide_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)


async def run_blocks(blocks: list[str], namespace: dict[str, object]) -> None:
    for block in blocks:
        code = compile(block, str(GUIDE), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, namespace)
        if asyncio.iscoroutine(result):
            await result
        await asyncio.sleep(1.5)  # ticks flow between one step and the next, as for a person


def test_every_guide_snippet_runs_against_the_simulator(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(db_url) as conn:
        load_instruments(conn, default_sample_path())
    monkeypatch.chdir(tmp_path)  # no developer's .env
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", db_url)
    monkeypatch.setenv("TICKVAULT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("UPSTOX_ACCESS_TOKEN", "")  # the simulator
    monkeypatch.setenv("TICKVAULT_SIMULATOR_RATE", "3000")
    blocks = guide_blocks()
    assert len(blocks) >= 6
    namespace: dict[str, object] = {}

    async def scenario() -> None:
        try:
            await run_blocks(blocks, namespace)
            service = namespace["service"]
            status = service.status()
            [alert] = status.pipeline.custom_handlers
            assert alert.delivered > 0
            assert alert.errors == 0
            assert alert.handled + alert.declined == alert.delivered
            assert status.signals.emitted == alert.handled, "each large trade is a signal"
            assert status.signals.rejected == 0
        finally:
            if "service" in namespace:
                await namespace["service"].stop()
            logging.getLogger("websocket").setLevel(logging.NOTSET)

    asyncio.run(scenario())
    tick = namespace["tick"]
    assert tick["symbol"] == "INFY"
    assert tick["instrument_key"] == "NSE_EQ|INE009A01021"
    assert tick["price"] == tick["last_price"] > 0
    assert {"volume", "timestamp", "bid_price", "oi", "delta"} <= set(tick)
    assert set(namespace["ticks"]) == {"INFY", "TCS", "Nifty 50"}
    handlers = namespace["handlers"]
    assert handlers["db_handler"].tick_count > 0
    assert handlers["aggregated_handler"].get_stats()["symbols_tracked"] > 0
