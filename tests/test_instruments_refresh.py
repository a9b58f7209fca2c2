"""`tickvault instruments refresh`: Upstox's master downloaded (here: from the simulator, over
HTTP), the instruments that left or expired kept but inactive, and the F&O universe's
subscriptions following it, in a running ingest without a restart.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import time as datetime_time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from api import create_app
from api.symbol_resolver import SymbolResolver
from core.config import Secret, Settings
from core.ist import ist_today
from core.upstox_wire import INSTRUMENTS_PATH
from ingest.channels.control import (
    Answer,
    InvalidMessage,
    RefreshInstruments,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
)
from ingest.service import WebSocketService
from ingest.simulator import FeedSimulator
from store.instrument_refresh import LEFT_UNIVERSE
from store.instruments import default_sample_path, search_instruments
from store.subscriptions import resumable, upsert
from tests.conftest import REPO, DbServer
from tests.test_api import API_KEY, client, ingest_beside, sample_database, serve, wait_for
from tests.test_api_process import _environment

TCS = "NSE_EQ|INE467B01029"
NEWCO = "NSE_EQ|INE000N01010"
DAY_MS = 86_400_000


def sample() -> list[dict[str, Any]]:
    return json.loads(default_sample_path().read_text())


def gz(records: list[dict[str, Any]]) -> bytes:
    return gzip.compress(json.dumps(records).encode())


def without_stock(records: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The master with a stock gone from it: its own record and every contract on it."""
    return [r for r in records if key not in (r["instrument_key"], r.get("underlying_key"))]


def new_stock(key: str, symbol: str, token: str, expiry_ms: int) -> list[dict[str, Any]]:
    """A stock newly on NSE's F&O list: its cash record and a future on it."""
    equity = {
        "instrument_key": key,
        "segment": "NSE_EQ",
        "exchange": "NSE",
        "instrument_type": "EQ",
        "trading_symbol": symbol,
        "name": f"{symbol} LIMITED",
        "lot_size": 1,
        "tick_size": 5.0,
    }
    future = {
        "instrument_key": f"NSE_FO|{token}",
        "segment": "NSE_FO",
        "exchange": "NSE",
        "instrument_type": "FUT",
        "trading_symbol": f"{symbol} FUT",
        "lot_size": 500,
        "tick_size": 10.0,
        "expiry": expiry_ms,
        "underlying_key": key,
        "underlying_symbol": symbol,
        "underlying_type": "EQUITY",
    }
    return [equity, future]


def cli_refresh(url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`tickvault instruments refresh ARGS` as a user runs it, on this database and data dir."""
    return subprocess.run(
        [sys.executable, "-m", "tickvault", "instruments", "refresh", *args],
        cwd=REPO,
        env=_environment(url, data_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )


def cli_report(url: str, data_dir: Path, *args: str) -> dict[str, Any]:
    done = cli_refresh(url, data_dir, "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@contextmanager
def serving(path: Path) -> Iterator[str]:
    """A simulator on a loop of its own publishing the file at `path` (read at each
    request, so a test rewrites it); yields the master's URL."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    simulator = FeedSimulator(record=False, instruments_file=path)
    asyncio.run_coroutine_threadsafe(simulator.start(), loop).result(30)
    try:
        yield simulator.url + INSTRUMENTS_PATH
    finally:
        asyncio.run_coroutine_threadsafe(simulator.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def master(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT instrument_key, raw, active, inactive_since, updated_at FROM instruments"
            " ORDER BY instrument_key"
        ).fetchall()


def active_of(url: str, key: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT active FROM instruments WHERE instrument_key = %s", [key]
        ).fetchone()
    assert row is not None, key
    return row[0]


def test_the_running_ingest_follows_a_changed_universe(
    apache_server: DbServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    # No option chains: the ingest would load the simulator's into the master at start, and
    # this test's masters are the sample's alone. No daily schedule either: started after
    # 08:30 IST on a trading day, it runs the pre-open's own instrument refresh at once (the
    # simulator's whole universe), and the refresh under test then found most of it gone.
    settings = Settings(
        data_dir=data_dir,
        simulator_rate=2000,
        rollup_interval_s=1,
        api_key=Secret(API_KEY),
        option_chains=(),
        schedule_enabled=False,
    )
    with (
        sample_database(apache_server) as url,
        ingest_beside(settings, url) as service,
        serve(create_app(settings, url)) as base,
        client(base) as http,
    ):
        simulator = service.simulator
        assert simulator is not None

        def ticks_of(key: str) -> int:
            with psycopg.connect(url) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM ticks WHERE instrument_key = %s", [key]
                ).fetchone()
            return row[0] if row else 0

        wait_for(lambda: ticks_of(TCS) > 0)
        assert TCS in simulator.followed_keys()

        in_a_month = int(time.time() * 1000) + 30 * DAY_MS
        changed = without_stock(sample(), TCS) + new_stock(NEWCO, "NEWCO", "990001", in_a_month)
        simulator.instrument_file.replace(gz(changed))
        gone = len(sample()) - len(without_stock(sample(), TCS))

        # The CLI finds the ingest's control socket: the ingest downloads from its simulator.
        report = cli_report(url, data_dir)
        assert report["url"] == simulator.url + INSTRUMENTS_PATH
        assert (report["instruments"], report["added"], report["removed"]) == (
            len(changed),
            2,
            gone,
        )
        assert (report["changed"], report["expired"], report["reactivated"]) == (0, 0, 0)
        assert report["universe"]["added"] == [{"symbol": "NEWCO", "instrument_key": NEWCO}]
        assert report["universe"]["removed"] == [{"symbol": "TCS", "instrument_key": TCS}]
        assert report["subscriptions"] == {
            "followed_by": "ingest",
            "subscribed": [NEWCO],
            "unsubscribed": [TCS],
            "error": None,
        }

        # The simulator saw the sub and the unsub, the API shows them; no restart.
        wait_for(lambda: NEWCO in simulator.followed_keys(), timeout=10)
        assert TCS not in simulator.followed_keys()
        wait_for(lambda: ticks_of(NEWCO) > 0, timeout=20)

        def followed() -> list[str]:  # as the ingest publishes its status, every half second
            return http.get("/api/v1/websocket/status").json()["subscribed_symbols"]

        wait_for(lambda: "NEWCO" in followed(), timeout=10)
        status = http.get("/api/v1/websocket/status").json()
        assert "TCS" not in status["subscribed_symbols"]
        listed = {row["symbol"]: row for row in http.get("/api/v1/websocket/subscriptions").json()}
        assert listed["NEWCO"]["status"] == "subscribed"
        assert "TCS" not in listed
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT status, error FROM subscriptions WHERE instrument_key = %s", [TCS]
            ).fetchone()
        assert row == ("unsubscribed", LEFT_UNIVERSE)

        # TCS is kept for its history, inactive; its ticks still resolve by symbol and key.
        assert not active_of(url, TCS)
        assert active_of(url, NEWCO)
        old_ticks = ticks_of(TCS)
        for symbol in ("TCS", TCS):
            response = http.get(f"/api/v1/ticks/{symbol}", params={"limit": 1000})
            assert response.status_code == 200, response.text
            assert len(response.json()["ticks"]) == min(old_ticks, 1000)
        wait_for(lambda: http.get("/api/v1/bars/TCS", params={"interval": "1m"}).json()["bars"])
        [found] = [
            row
            for row in http.get("/api/v1/instruments", params={"query": "TCS"}).json()
            if row["instrument_key"] == TCS
        ]
        assert found["active"] is False

        # The same file again: nothing to do, and nothing done.
        again = cli_report(url, data_dir)
        counts = ("added", "changed", "reactivated", "expired", "removed")
        assert [again[name] for name in counts] == [0] * len(counts)
        assert again["universe"] == {"size": report["universe"]["size"], "added": [], "removed": []}
        assert again["subscriptions"]["subscribed"] == again["subscriptions"]["unsubscribed"] == []
        assert NEWCO in simulator.followed_keys()


def test_expiry_absence_and_reports_without_an_ingest(db_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    served = tmp_path / "complete.json.gz"
    now_ms = int(time.time() * 1000)
    records = sample()
    # WIPRO's only future and a call on INFY expire between the two refreshes (far enough
    # ahead that a busy machine's first refresh still sees them live); ITC leaves the file.
    soon = {"WIPRO FUT 29 DEC 26", "INFY 1500 CE 29 DEC 26"}
    expiry_ms = now_ms + 10_000
    for record in records:
        if record["trading_symbol"] in soon:
            record["expiry"] = expiry_ms
    expiring = sorted(r["instrument_key"] for r in records if r["trading_symbol"] in soon)
    wipro = next(r for r in records if r["trading_symbol"] == "WIPRO")["instrument_key"]
    itc = next(r for r in records if r["trading_symbol"] == "ITC")["instrument_key"]
    served.write_bytes(gz(records))

    with serving(served) as url:
        first = cli_report(db_url, data_dir, "--url", url)
        assert (first["instruments"], first["added"]) == (len(records), len(records))
        assert first["removed"] == first["expired"] == first["changed"] == 0
        universe = first["universe"]["size"]
        assert universe == len(first["universe"]["added"]) == 20
        assert first["subscriptions"]["followed_by"] == "table"
        assert first["subscriptions"]["subscribed"] == []  # the table follows nothing yet

        # A stopped ingest's table: the universe subscribed.
        with psycopg.connect(db_url) as conn:
            upsert(
                conn,
                [e["instrument_key"] for e in first["universe"]["added"]],
                "full",
                "subscribed",
            )

        time.sleep(max(0.0, expiry_ms / 1000 - time.time()) + 0.5)  # the two expire
        listed_again = without_stock(records, itc) + new_stock(
            NEWCO, "NEWCO", "990001", now_ms + 30 * DAY_MS
        )
        # And TCS's future changes (a new lot size).
        tcs_future = next(r for r in listed_again if r["trading_symbol"] == "TCS FUT 29 DEC 26")
        tcs_future["lot_size"] += 25
        served.write_bytes(gz(listed_again))
        done = cli_refresh(db_url, data_dir, "--url", url)
        assert done.returncode == 0, done.stderr
        assert "2 added, 1 changed, 0 live again, 2 expired" in done.stdout
        itc_gone = len(records) - len(without_stock(records, itc))
        assert f"2 expired, {itc_gone} removed (kept, inactive)" in done.stdout
        assert "joined: NEWCO (NSE_EQ|INE000N01010)" in done.stdout
        assert f"left: WIPRO ({wipro}), ITC ({itc})" in done.stdout
        assert "no ingest runs: the subscriptions table has 1 to subscribe and 2 unsubscribed" in (
            done.stdout
        )
        for key in expiring:
            assert not active_of(db_url, key)
        assert not active_of(db_url, itc)
        assert active_of(db_url, wipro)  # the stock itself is still listed, only its future went
        with psycopg.connect(db_url) as conn:
            following = {key: mode for mode, key in resumable(conn)}
            dropped = conn.execute(
                "SELECT instrument_key, error FROM subscriptions WHERE status = 'unsubscribed'"
                " ORDER BY 1"
            ).fetchall()
        assert following[NEWCO] == "full"
        assert sorted(dropped) == sorted([(itc, LEFT_UNIVERSE), (wipro, LEFT_UNIVERSE)])

        # Broken downloads change nothing and say why.
        before = master(db_url)
        whole = served.read_bytes()
        for body, reason in (
            (whole[: len(whole) // 2], "is not a whole gzip file"),
            (b"<html>maintenance</html>", "is not valid JSON"),
            (gzip.compress(b'{"not": "a list"}'), "not an array of instrument records"),
            (gz([{"instrument_key": "NSE_EQ|X", "segment": "NSE_EQ"}]), "lacks instrument_type"),
        ):
            served.write_bytes(body)
            failed = cli_refresh(db_url, data_dir, "--url", url)
            assert failed.returncode == 1
            assert reason in failed.stderr, failed.stderr
            assert "nothing was changed" in failed.stderr
            assert url in failed.stderr
            assert "tickvault-instruments-" not in failed.stderr
            assert master(db_url) == before
        served.write_bytes(whole)
        missing = cli_refresh(db_url, data_dir, "--url", url.replace(".json.gz", ".json"))
        assert missing.returncode == 1
        assert "HTTP 404" in missing.stderr
        over = cli_refresh(db_url, data_dir, "--url", url, "--max-bytes", "1000")
        assert over.returncode == 1
        assert "over the 1000-byte limit" in over.stderr
        assert master(db_url) == before

        # Idempotent: the same file again changes no row and reports nothing.
        again = cli_report(db_url, data_dir, "--url", url)
        assert [again[n] for n in ("added", "changed", "reactivated", "expired", "removed")] == [
            0
        ] * 5
        assert again["universe"]["added"] == again["universe"]["removed"] == []
        assert master(db_url) == before


def test_a_live_instrument_wins_a_symbol_over_one_kept_for_history(
    db_url: str, tmp_path: Path
) -> None:
    """A stock listed again under a new key: its symbol means the live one, the old key still
    resolves, and the search lists the live one first."""
    served = tmp_path / "complete.json.gz"
    records = sample()
    served.write_bytes(gz(records))
    relisted = copy.deepcopy(without_stock(records, TCS))
    relisted += new_stock("NSE_EQ|INE467B01037", "TCS", "990002", int(time.time() * 1000) + DAY_MS)
    with serving(served) as url, ConnectionPool(db_url, min_size=1, max_size=1) as pool:
        resolver = SymbolResolver(pool, known_ttl_s=0.5)  # the API's memory of symbols
        cli_report(db_url, tmp_path, "--url", url)
        assert resolver.resolve(["TCS"]) == [TCS]
        served.write_bytes(gz(relisted))
        cli_report(db_url, tmp_path, "--url", url)
        time.sleep(0.6)
        assert resolver.resolve(["TCS"]) == ["NSE_EQ|INE467B01037"]
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT resolve_symbol('tcs')").fetchone() == ("NSE_EQ|INE467B01037",)
        assert conn.execute("SELECT resolve_symbol(%s)", [TCS]).fetchone() == (TCS,)
        listed = conn.execute(
            "SELECT instrument_key FROM instruments WHERE trading_symbol = 'TCS'"
            " ORDER BY NOT active"
        ).fetchall()
    assert [key for (key,) in listed] == ["NSE_EQ|INE467B01037", TCS]
    with psycopg.connect(db_url) as conn:
        found = search_instruments(conn, "TCS", "NSE_EQ", 10)
    assert [(r["instrument_key"], r["active"]) for r in found] == [
        ("NSE_EQ|INE467B01037", True),
        (TCS, False),
    ]


def test_the_refresh_request_and_its_report_round_trip() -> None:
    for request in (
        RefreshInstruments(),
        RefreshInstruments("https://mirror.example/m.gz", 10),
        RefreshInstruments(force=True),
    ):
        assert decode_request(encode_request(request)) == request
    answer = Answer(ok=True, report={"added": 2, "universe": {"added": []}})
    assert decode_answer(encode_answer(answer)) == answer
    for line in (
        b'{"op": "refresh_instruments", "url": 5}',
        b'{"op": "refresh_instruments", "max_bytes": 0}',
        b'{"op": "refresh_instruments", "max_bytes": true}',
        b'{"op": "refresh_instruments", "path": "/etc/passwd"}',
        b'{"op": "refresh_instruments", "force": "yes"}',
    ):
        with pytest.raises(InvalidMessage):
            decode_request(line)
    with pytest.raises(InvalidMessage):
        decode_answer(b'{"ok": true, "report": [1]}')


def subscriptions_of(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT instrument_key, status, error FROM subscriptions ORDER BY 1"
        ).fetchall()


def test_a_master_that_would_empty_the_store_is_refused_unless_forced(
    db_url: str, tmp_path: Path
) -> None:
    """One bad morning at Upstox (a valid but empty or cut-down file) must not mark the
    master inactive and drop the F&O universe from the feed: refused, nothing changed, the
    reason said; `--force` takes it."""
    served = tmp_path / "complete.json.gz"
    records = sample()
    served.write_bytes(gz(records))
    with serving(served) as url:
        first = cli_report(db_url, tmp_path, "--url", url)
        universe = [entry["instrument_key"] for entry in first["universe"]["added"]]
        with psycopg.connect(db_url) as conn:
            upsert(conn, universe, "full", "subscribed")
        before, following = master(db_url), subscriptions_of(db_url)

        # Half the universe gone (each stock with every contract on it): over the 20% limit.
        half = records
        for key in universe[: len(universe) // 2]:
            half = without_stock(half, key)
        for body, share in ((gz([]), "100%"), (gz(half), "50%")):
            served.write_bytes(body)
            refused = cli_refresh(db_url, tmp_path, "--url", url)
            assert refused.returncode == 1, refused.stdout
            assert f"of the {len(universe)} stocks of the F&O universe ({share})" in refused.stderr
            assert "over the 20% a refresh may remove" in refused.stderr
            assert "TICKVAULT_INSTRUMENTS_MAX_REMOVED_SHARE" in refused.stderr
            assert "nothing was changed" in refused.stderr
            assert "--force" in refused.stderr
            assert master(db_url) == before
            assert subscriptions_of(db_url) == following

        # The share is a setting: at 0.6 half the universe may go.
        env = {**_environment(db_url, tmp_path), "TICKVAULT_INSTRUMENTS_MAX_REMOVED_SHARE": "0.6"}
        allowed = subprocess.run(
            [sys.executable, "-m", "tickvault", "instruments", "refresh", "--url", url],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert allowed.returncode == 0, allowed.stderr
        assert f"F&O universe: {len(universe) - len(universe) // 2} stocks" in allowed.stdout

        # Even at a share of 1, the whole universe never goes without --force.
        served.write_bytes(gz([]))
        env["TICKVAULT_INSTRUMENTS_MAX_REMOVED_SHARE"] = "1"
        whole = subprocess.run(
            [sys.executable, "-m", "tickvault", "instruments", "refresh", "--url", url],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert whole.returncode == 1
        assert "stocks of the F&O universe (100%)" in whole.stderr

        forced = cli_report(db_url, tmp_path, "--url", url, "--force")
        assert forced["instruments"] == 0
        assert forced["universe"]["size"] == 0
        with psycopg.connect(db_url) as conn:
            assert conn.execute("SELECT count(*) FROM instruments WHERE active").fetchone() == (0,)


def test_the_schedule_step_refuses_an_empty_master_and_the_feed_keeps_its_universe(
    apache_server: DbServer, tmp_path: Path
) -> None:
    """The pre-open step runs the refresh by itself: an empty file fails the step with the
    reason in the schedule's status, and the running feed keeps every stock it carried. The
    command asks the running ingest: refused the same way, and taken with --force."""
    never = datetime_time(23, 59, 59)
    settings = Settings(
        data_dir=tmp_path / "data",
        simulator_rate=2000,
        preopen_at=never,
        postclose_at=never,
        schedule_step_attempts=1,
        option_chains=(),  # the master stays the sample's (see above)
    )

    async def run_step() -> dict[str, Any]:
        service = WebSocketService(settings, url)
        await service.start()
        seen: dict[str, Any] = {}
        try:
            simulator, schedule = service.simulator, service.schedule
            assert simulator is not None
            assert schedule is not None
            for _ in range(300):
                if TCS in simulator.followed_keys():
                    break
                await asyncio.sleep(0.1)
            seen["followed"] = set(simulator.followed_keys())
            simulator.instrument_file.replace(gz([]))
            [step] = [step for step in schedule.steps if step.name == "instruments"]
            await schedule._run_step(ist_today(), step)
            [seen["status"]] = [s for s in schedule.status().steps if s.step == "instruments"]
            seen["refused"] = await asyncio.to_thread(cli_refresh, url, settings.data_dir)
            await asyncio.sleep(1)  # an unsubscription, had one been sent, reaches the simulator
            seen["after"] = set(simulator.followed_keys())
            seen["master"] = master(url)
            seen["forced"] = await asyncio.to_thread(cli_refresh, url, settings.data_dir, "--force")
            await asyncio.sleep(1)
            seen["after_force"] = set(simulator.followed_keys())
        finally:
            await service.stop()
        return seen

    with sample_database(apache_server) as url:
        before = master(url)
        seen = asyncio.run(run_step())
    assert all(active for _, _, active, _, _ in before)
    status = seen["status"]
    assert status.last_outcome == "failed"
    assert status.last_result.startswith("RefreshRefused: ")
    assert "stocks of the F&O universe (100%)" in status.last_result
    refused = seen["refused"]
    assert refused.returncode == 1
    assert "the running ingest could not refresh:" in refused.stderr
    assert "stocks of the F&O universe (100%)" in refused.stderr
    assert seen["master"] == before
    assert TCS in seen["followed"]
    assert seen["after"] == seen["followed"]
    forced = seen["forced"]
    assert forced.returncode == 0, forced.stderr
    assert "F&O universe: 0 stocks" in forced.stdout
    assert "the running ingest subscribed 0 and unsubscribed 20" in forced.stdout
    assert TCS not in seen["after_force"]
