"""The parity audit: bars tickvault stored from a live ingest against the simulator's candles
of the same ticks (clean), then a bar altered in the database (reported with the field and
the size of the difference), through run_audit, `tickvault audit` and GET /api/v1/audit.
Real TimescaleDB (both editions), a real simulator and real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from api.app import create_app
from core.config import Secret, Settings
from core.ist import IST, day_bounds
from ingest.jobs.audit import AuditReport, run_audit
from ingest.jobs.parity import compare_day
from ingest.service import WebSocketService
from ingest.simulator import FeedSimulator
from ingest.simulator.tape import SentTick
from ingest.tokens import UpstoxAccess, save_token
from ingest.upstox.candles import Candle
from store.audit import Bar, DayVolume, latest_results
from store.bars import refresh_bars
from store.instruments import default_sample_path, instrument_records, load_instruments
from tests.clock import FeedClock
from tests.conftest import REPO, DbServer
from tests.test_api import client, serve
from tests.test_candles import FAST
from tests.test_simulator import http_get
from tickvault.audit import exit_status, render

RELIANCE = "NSE_EQ|INE002A01018"  # tick size 10 paise in the sample master
INFY = "NSE_EQ|INE009A01021"
API_KEY = "audit-test-api-key"
TICK = 0.10


def test_compare_day_sizes_prices_in_ticks_and_volume_in_percent() -> None:
    start = datetime(2026, 1, 5, 9, 15, tzinfo=IST)
    minute = timedelta(minutes=1)
    bars = [
        Bar(start, 100.0, 100.5, 99.9, 100.2, 1000),
        Bar(start + minute, 100.2, 100.3, 100.0, 100.1, 500),
        Bar(start + 3 * minute, 100.1, 100.1, 100.1, 100.1, 10),
    ]
    candles = [
        Candle(start, 100.0, 100.5, 99.9, 100.2, 1000, 0),
        Candle(start + minute, 100.2, 100.6, 100.0, 100.1, 400, 0),  # high 3 ticks apart
        Candle(start + 2 * minute, 100.1, 100.2, 100.1, 100.2, 50, 0),
    ]
    audit = compare_day(RELIANCE, start.date(), TICK, bars, candles, DayVolume(1510, 9000, 40))
    assert audit.bars_verdict == "differs"
    assert audit.buckets_equal == 1
    assert audit.buckets_differing == 1
    [high, volume] = audit.differences
    assert (high.field, high.size, high.unit) == ("high", -3.0, "ticks")
    assert (volume.field, volume.size, volume.unit) == ("volume", 25.0, "percent")
    assert audit.missing_ours == (start + 2 * minute,)
    assert audit.missing_theirs == (start + 3 * minute,)
    assert audit.volume.verdict == "differs"  # 1510 in our ticks, 1450 in the candles
    assert audit.details()["volume"]["unheard_volume"] == 9000 - 1510
    # Less than half a tick apart is the same printed price.
    near = [Bar(start, 100.0 + TICK * 0.4, 100.5, 99.9, 100.2, 1000)]
    same = compare_day(RELIANCE, start.date(), TICK, near, candles[:1], DayVolume(1000, 1000, 1))
    assert (same.bars_verdict, same.volume.verdict) == ("clean", "conserved")


@pytest.fixture(params=["apache", "community"])
def server(request: pytest.FixtureRequest) -> DbServer:
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture
def instruments_db(server: DbServer) -> Iterator[str]:
    url = server.create_database()
    with psycopg.connect(url) as conn:
        load_instruments(conn, default_sample_path())
    yield url
    server.drop_database(url)


async def ingest_from(simulator: FeedSimulator, url: str, data_dir: Path) -> Settings:
    """Run tickvault's ingest against the simulator for a few seconds, stop it cleanly, and
    return settings whose candle source is that simulator."""
    settings = Settings(
        data_dir=data_dir,
        upstox_access_token="audit-test-token",
        upstox_api_base=simulator.url,
        rollup_interval_s=1,
    )
    service = WebSocketService(settings, url)
    await service.start()
    await asyncio.sleep(3)
    simulator.stall(60)  # the market pauses while the ingest catches up
    await asyncio.to_thread(wait_until_stored, url, simulator.sent_ticks())
    await service.stop()
    return settings


def wait_until_stored(url: str, sent: list[SentTick], timeout: float = 30) -> None:
    """Wait until the database holds the newest tick sent of every instrument: a fixed pause
    lost the last frames on a loaded machine, and the candles then had volume we did not."""
    newest: dict[str, int] = {}
    for key, ltt, *_ in sent:
        newest[key] = max(ltt, newest.get(key, ltt))
    query = (
        "SELECT instrument_key, (extract(epoch FROM max(ts)) * 1000)::bigint FROM ticks"
        " GROUP BY instrument_key"
    )
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while dict(conn.execute(query).fetchall()) != newest:
            assert time.monotonic() < deadline, "the ingest did not store every tick sent"
            time.sleep(0.1)


def cli_audit(settings: Settings, url: str, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "TICKVAULT_DATABASE_URL": url,
        "TICKVAULT_DATA_DIR": str(settings.data_dir),
        "UPSTOX_ACCESS_TOKEN": settings.upstox_access_token,
        "UPSTOX_API_BASE": settings.upstox_api_base,
        "TICKVAULT_LOG_LEVEL": "WARNING",
    }
    done = subprocess.run(
        [sys.executable, "-m", "tickvault", "audit", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


def alter_reliance(url: str, day: date) -> tuple[datetime, float, datetime]:
    """Raise the last trade of RELIANCE's busiest minute to 3 ticks above that minute's high,
    add 40 to the traded volume of its first minute, and rebuild the day's bars. Returns the
    two buckets and the new high."""
    start, end = day_bounds(day)
    with psycopg.connect(url, autocommit=True) as conn:
        bucket, high = conn.execute(
            "SELECT bucket, high FROM ohlc_1m WHERE instrument_key = %s AND bucket >= %s"
            " ORDER BY tick_count DESC, bucket LIMIT 1",
            [RELIANCE, start],
        ).fetchone()
        new_high = round(high + 3 * TICK, 2)
        conn.execute(
            "UPDATE ticks SET ltp = %s WHERE instrument_key = %s AND ts = (SELECT max(ts)"
            " FROM ticks WHERE instrument_key = %s AND ts >= %s AND ts < %s)",
            [new_high, RELIANCE, RELIANCE, bucket, bucket + timedelta(minutes=1)],
        )
        (first_bucket,) = conn.execute(
            "SELECT min(bucket) FROM ohlc_1m WHERE instrument_key = %s AND bucket >= %s",
            [RELIANCE, start],
        ).fetchone()
        conn.execute(
            "UPDATE ticks SET volume_delta = volume_delta + 40 WHERE instrument_key = %s"
            " AND ts = (SELECT max(ts) FROM ticks WHERE instrument_key = %s AND ts >= %s"
            " AND ts < %s)",
            [RELIANCE, RELIANCE, first_bucket, first_bucket + timedelta(minutes=1)],
        )
        refresh_bars(conn, start, end)  # a materialized bucket takes the change too
    return bucket, new_high, first_bucket


def test_bars_from_the_simulator_audit_clean_then_an_altered_bar_is_reported(
    instruments_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feed's clock runs 150 s behind: the few seconds ingested lie in minutes that are
    over, which an audit of today compares (the minute in progress it leaves out)."""
    url = instruments_db
    today = datetime.now(IST).date()
    clock = FeedClock(offset_s=-150)
    if clock.now().astimezone(IST).date() != today:
        pytest.skip("the feed's clock is still in yesterday (IST)")
    clock.install(monkeypatch)

    async def scenario() -> None:
        with psycopg.connect(url) as conn:
            records = instrument_records(conn)
        async with FeedSimulator(records, rate=2000, frame_interval=0.05) as simulator:
            settings = await ingest_from(simulator, url, tmp_path / "data")
            sent = simulator.sent_ticks()
            minutes = {(key, ltt // 60_000) for key, ltt, *_ in sent}

            report = await run_audit(url, UpstoxAccess.chosen(settings), today)
            audited = {audit.instrument_key: audit for audit in report.instruments}
            assert set(audited) == {key for key, _ in minutes}
            bad = {k: a.details() for k, a in audited.items() if a.bars_verdict != "clean"}
            assert not bad
            assert all(a.volume.verdict == "conserved" for a in audited.values())
            assert sum(a.buckets_equal for a in audited.values()) == len(minutes)
            assert audited[RELIANCE].volume.volume_delta_sum > 0
            assert report.clean

            status, out, err = await asyncio.to_thread(
                cli_audit, settings, url, "--date", today.isoformat(), "--symbols", "RELIANCE"
            )
            assert (status, err) == (0, "")
            assert f"parity audit of {today}: clean" in out
            assert RELIANCE in out

            bucket, new_high, first_bucket = alter_reliance(url, today)
            status, out, err = await asyncio.to_thread(
                cli_audit, settings, url, "--date", today.isoformat(), "--symbols", "RELIANCE",
                "--json",
            )  # fmt: skip
            assert status == 2, err
            # --json prints no verdict line: stderr says why the status is not 0.
            assert err.strip().endswith(
                "differences found: 1 of 1 instruments do not agree with Upstox's candles"
            ), err
            result = json.loads(out)
            assert (result["clean"], result["verdict"]) == (False, "differences found")
            [reliance] = result["instruments"]
            assert reliance["bars_verdict"] == "differs"
            assert reliance["volume_verdict"] == "differs"
            differences = {(d["bucket"], d["field"]): d for d in reliance["details"]["differences"]}
            high = differences[(bucket.astimezone(IST).isoformat(), "high")]
            assert (high["ours"], high["size"], high["unit"]) == (new_high, 3.0, "ticks")
            volume = differences[(first_bucket.astimezone(IST).isoformat(), "volume")]
            assert volume["ours"] - volume["theirs"] == 40
            assert volume["unit"] == "percent"
            assert volume["size"] == round(40 / volume["theirs"] * 100, 3)
            totals = reliance["details"]["volume"]
            assert totals["volume_delta_sum"] - totals["candles_volume"] == 40
            assert totals["bars_volume"] - totals["candles_volume"] == 40

            # The API answers each instrument's latest verdict of the day, and runs an audit.
            api_settings = replace(settings, data_dir=tmp_path / "api", api_key=Secret(API_KEY))
            with (
                serve(create_app(api_settings, url)) as base,
                client(base) as http,
            ):
                stored = await asyncio.to_thread(http.get, f"/api/v1/audit?date={today}")
                missing = await asyncio.to_thread(http.get, "/api/v1/audit?date=2020-01-06")
                not_a_date = await asyncio.to_thread(http.get, "/api/v1/audit?date=0")
                run = f"/api/v1/audit?date={today}&symbols=RELIANCE,INFY"
                keyless = await asyncio.to_thread(http.post, run)
                ran = await asyncio.to_thread(http.post, run, headers={"X-API-Key": API_KEY})
                unknown = await asyncio.to_thread(
                    http.post,
                    f"/api/v1/audit?date={today}&symbols=NOSUCHSYMBOL",
                    headers={"X-API-Key": API_KEY},
                )
                latest = await asyncio.to_thread(http.get, f"/api/v1/audit?date={today}")
            assert stored.status_code == 200
            body = stored.json()
            assert body["clean"] is False
            verdicts = {
                item["instrument_key"]: item["bars_verdict"] for item in body["instruments"]
            }
            assert verdicts == {key: "clean" for key in audited} | {RELIANCE: "differs"}
            assert missing.status_code == 404
            assert "tickvault audit --date 2020-01-06" in missing.json()["detail"]
            assert not_a_date.status_code == 422
            assert keyless.status_code == 401
            assert ran.status_code == 200, ran.text
            verdicts = {
                item["instrument_key"]: item["bars_verdict"] for item in ran.json()["instruments"]
            }
            assert verdicts == {RELIANCE: "differs", INFY: "clean"}
            assert unknown.status_code == 404
            assert "NOSUCHSYMBOL" in unknown.json()["detail"]
            run_ids = {
                item["instrument_key"]: item["run_id"] for item in latest.json()["instruments"]
            }
            assert run_ids[RELIANCE] == run_ids[INFY] == ran.json()["instruments"][0]["run_id"]

    asyncio.run(scenario())


def test_audit_without_a_token_or_with_a_refused_one_is_a_clear_error(
    db_url: str, tmp_path: Path
) -> None:
    today = datetime.now(IST).date().isoformat()
    no_token = Settings(data_dir=tmp_path, upstox_api_base="http://127.0.0.1:9")
    status, out, err = cli_audit(no_token, db_url, "--date", today)
    assert status == 1
    assert "UPSTOX_ACCESS_TOKEN" in err

    async def refused() -> tuple[int, str, str]:
        async with FeedSimulator() as simulator:
            simulator.reject_token()
            insert_tick(db_url)
            settings = Settings(
                data_dir=tmp_path,
                upstox_access_token="refused-token-not-in-output",
                upstox_api_base=simulator.url,
            )
            return await asyncio.to_thread(cli_audit, settings, db_url, "--date", today)

    status, out, err = asyncio.run(refused())
    assert status == 1
    assert "refused" in err
    assert "401" in err
    assert "refused-token-not-in-output" not in err + out


def test_the_audit_takes_the_token_tickvault_token_set_stored(db_url: str, tmp_path: Path) -> None:
    """No UPSTOX_ACCESS_TOKEN, a token in the data directory's file: the candles are asked
    for with it (the simulator takes that token alone), and a wrong one stored is refused."""
    today = datetime.now(IST).date().isoformat()

    async def audit_with_stored(stored: str) -> tuple[int, str, str]:
        async with FeedSimulator(token="the-stored-token") as simulator:
            insert_tick(db_url)
            save_token(tmp_path, stored)
            settings = Settings(data_dir=tmp_path, upstox_api_base=simulator.url)
            return await asyncio.to_thread(cli_audit, settings, db_url, "--date", today)

    status, out, err = asyncio.run(audit_with_stored("the-stored-token"))
    assert status in (0, 2), err  # it ran: clean, or differences found
    assert "refused" not in err
    status, out, err = asyncio.run(audit_with_stored("another-stored-token"))
    assert (status, "refused" in err) == (1, True), err
    assert "another-stored-token" not in err + out


def test_candles_that_cannot_be_fetched_are_that_instrument_s_error(
    db_url: str, tmp_path: Path
) -> None:
    """Upstox over its limits for longer than the retries last: the instrument's verdict is
    'error' with the reason, stored like any other, and the audit itself completes."""
    day = datetime.now(IST).date()
    insert_tick(db_url)

    async def throttled() -> AuditReport:
        async with FeedSimulator() as simulator:
            await asyncio.to_thread(http_get, f"{simulator.url}/_sim/throttle?n=100")
            settings = Settings(
                data_dir=tmp_path, upstox_access_token="t", upstox_api_base=simulator.url
            )
            return await run_audit(db_url, UpstoxAccess.chosen(settings), day, limits=FAST)

    report = asyncio.run(throttled())
    [audit] = report.instruments
    assert audit.bars_verdict == "error"
    assert audit.volume.verdict == "unknown"
    assert "429" in (audit.error or "")
    assert "gave up after 5 attempts" in (audit.error or "")
    with psycopg.connect(db_url) as conn:
        [stored] = latest_results(conn, day)
    assert (stored.bars_verdict, stored.details["error"]) == ("error", audit.error)
    assert not report.clean
    # No instrument's candles at all: the audit could not run (status 1, as the README
    # says), it did not find differences.
    result = report.as_json()
    assert result["verdict"] == "could not run"
    status, why = exit_status(result)
    assert status == 1
    assert why.startswith("could not run: no candles could be fetched for any of 1 instruments")
    assert "429" in why
    assert f"parity audit of {day}: could not run" in render(result)
    assert "DIFFERENCES" not in render(result)


def test_the_minute_still_forming_is_not_compared(db_url: str, tmp_path: Path) -> None:
    """A bar of the minute in progress has no candle yet (the simulator never streamed it):
    it is left out, not reported missing on Upstox's side."""

    async def audit_now() -> AuditReport:
        async with FeedSimulator() as simulator:
            settings = Settings(
                data_dir=tmp_path, upstox_access_token="t", upstox_api_base=simulator.url
            )
            return await run_audit(db_url, UpstoxAccess.chosen(settings), datetime.now(IST).date())

    for _ in range(3):  # a minute that turns between the tick and the audit: once more
        insert_tick(db_url)
        with psycopg.connect(db_url) as conn:
            (minute,) = conn.execute("SELECT date_trunc('minute', now())").fetchone()
        report = asyncio.run(audit_now())
        if report.until == minute:
            break
    assert report.until == minute
    [audit] = report.instruments
    assert (audit.missing_theirs, audit.missing_ours, audit.buckets_equal) == ((), (), 0)
    assert report.as_json()["compared_until"] == minute.astimezone(IST).isoformat()


def insert_tick(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO ticks (instrument_key, ts, ltp, volume_delta)"
            " VALUES (%s, now(), 100.0, 1)",
            [RELIANCE],
        )
