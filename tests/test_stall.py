"""The stall watchdog: a silent feed reconnects during a session, and only then.

The decision is tested on its own with a clock we hold; the wiring with the real ingest, its
embedded simulator going quiet through /_sim/stall (its sockets keep answering pings) and a
real database, which must end with every tick the simulator sent stored once.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import psycopg
import pytest

from core.config import Settings
from ingest.client.watchdog import StallWatch, market_statuses, segments_of
from ingest.service import WebSocketService
from ingest.simulator.frames import market_info_frame, snapshot_frame
from ingest.upstox.proto import upstox_feed_v3_pb2 as pb
from tests.test_ingest_e2e import _assert_exactly_once, _wait_for

OPEN = {"NSE_EQ": "NORMAL_OPEN"}
EQ = ["NSE_EQ"]

# --- the decision --------------------------------------------------------------------------


def test_silence_during_a_session_is_a_stall_after_stall_s() -> None:
    watch = StallWatch(2.0)
    watch.market_info(OPEN)
    watch.opened(100.0)
    watch.data(101.0)
    assert not watch.stalled(102.9, EQ)
    assert watch.stalled(103.0, EQ)
    assert watch.stalls == 1
    assert watch.data_age(103.5) == pytest.approx(2.5)


def test_data_keeps_a_connection_from_stalling() -> None:
    watch = StallWatch(2.0)
    watch.market_info(OPEN)
    watch.opened(0.0)
    for now in (1.0, 2.5, 4.0, 5.5):
        watch.data(now)
        assert not watch.stalled(now + 1.9, EQ)
    assert watch.stalls == 0


def test_silence_is_normal_when_the_carried_segments_are_not_open() -> None:
    watch = StallWatch(2.0)
    watch.opened(0.0)
    assert not watch.stalled(60.0, EQ), "no market_info yet: nothing says the market is open"
    watch.market_info({"NSE_EQ": "NORMAL_CLOSE", "NSE_FO": "NORMAL_OPEN"})
    assert not watch.stalled(120.0, EQ), "only a segment the connection does not carry is open"
    assert not watch.stalled(120.0, []), "a connection with no keys"
    assert watch.stalls == 0


def test_a_market_that_opens_after_a_quiet_night_is_given_stall_s() -> None:
    watch = StallWatch(2.0)
    watch.market_info({"NSE_EQ": "PRE_OPEN_END"})
    watch.opened(0.0)
    watch.data(1.0)
    assert not watch.stalled(10_000.0, EQ)
    watch.market_info(OPEN)
    assert not watch.stalled(10_001.0, EQ), "the silence counts from the opening"
    assert not watch.stalled(10_002.5, EQ)
    assert watch.stalled(10_003.0, EQ)


def test_a_reopened_socket_starts_its_silence_again() -> None:
    watch = StallWatch(2.0)
    watch.market_info(OPEN)
    watch.opened(0.0)
    assert watch.stalled(2.0, EQ)
    watch.opened(2.5)
    assert watch.data_age(2.6) is None
    assert not watch.stalled(4.0, EQ)
    assert watch.stalled(4.5, EQ)
    assert watch.stalls == 2


def test_stall_s_must_be_positive() -> None:
    with pytest.raises(ValueError, match="stall_s must be positive"):
        StallWatch(0)


def test_market_info_frames_are_told_from_data_frames() -> None:
    info = market_info_frame(1, {"NSE_EQ": pb.NORMAL_CLOSE, "NSE_FO": pb.NORMAL_OPEN})
    assert market_statuses(info) == {"NSE_EQ": "NORMAL_CLOSE", "NSE_FO": "NORMAL_OPEN"}
    assert market_statuses(snapshot_frame(1, [])) is None
    assert segments_of(["NSE_EQ|INE009A01021", "NSE_INDEX|Nifty 50", "NSE_EQ|X"]) == {
        "NSE_EQ",
        "NSE_INDEX",
    }


# --- the wiring, with the real ingest and simulator ---------------------------------------


def _rows_written(service: WebSocketService) -> int:
    writer = service.status().writer
    return writer.rows_written if writer is not None else 0


async def _sim(service: WebSocketService, hook: str) -> None:
    assert service.simulator is not None
    async with httpx.AsyncClient(base_url=service.simulator.url) as http:
        (await http.get(f"/_sim/{hook}")).raise_for_status()


def _logged(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT segment, status FROM market_segment_status ORDER BY at, segment"
        ).fetchall()


def _service(tmp_path: Path, url: str) -> WebSocketService:
    settings = Settings(data_dir=tmp_path / "data", simulator_rate=2000, stall_s=2.0)
    return WebSocketService(settings, url, record_simulator=True)


def test_a_stall_in_session_reconnects_once_and_loses_nothing(
    instruments_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> WebSocketService:
        service = _service(tmp_path, instruments_db)
        await service.start()
        try:
            await _wait_for(lambda: _rows_written(service) > 600)
            await _sim(service, "stall?seconds=4")
            await _wait_for(lambda: service.status().feed.stalls == [1], 10)
            stalled = service.status().feed
            assert stalled.reconnects == 0, "closed as stalled, not yet opened again"
            await _wait_for(lambda: service.status().feed.reconnects == 1, 10)
            await asyncio.sleep(2.5)  # the simulator's stall is over: live ticks again
            before = _rows_written(service)
            await _wait_for(lambda: _rows_written(service) > before + 100, 10)
            feed = service.status().feed
            assert feed.stalls == [1], "one stall, one reconnect"
            assert feed.connections == 1
            assert feed.last_data_age_s is not None
            assert feed.last_data_age_s[0] is not None
            assert feed.last_data_age_s[0] < 1.0
        finally:
            await service.stop()
        return service

    with caplog.at_level(logging.WARNING, logger="ingest.client.connection"):
        service = asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert service.simulator is not None
    _assert_exactly_once(instruments_db, service.simulator)


def test_silence_out_of_session_is_left_alone(
    instruments_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    closed = "NSE_EQ=NORMAL_CLOSE&NSE_FO=NORMAL_CLOSE&NSE_INDEX=NORMAL_CLOSE"

    async def scenario() -> WebSocketService:
        service = _service(tmp_path, instruments_db)
        await service.start()
        try:
            await _wait_for(lambda: _rows_written(service) > 600)
            # The open market logged first (the statuses are logged once a second).
            await _wait_for(lambda: ("NSE_EQ", "NORMAL_OPEN") in _logged(instruments_db))
            await _sim(service, f"market_status?{closed}")
            await _wait_for(
                lambda: service.status().pipeline.market_status.get("NSE_EQ") == "NORMAL_CLOSE"
            )
            await _sim(service, "stall?seconds=8")  # watched for 5 s of it
            await asyncio.sleep(5)
            feed = service.status().feed
            assert feed.stalls == [0]
            assert feed.reconnects == 0
            assert feed.last_data_age_s is not None
            assert feed.last_data_age_s[0] is not None
            assert feed.last_data_age_s[0] > 4, "it was silent all along, and left so"
        finally:
            await service.stop()
        return service

    with caplog.at_level(logging.DEBUG):
        service = asyncio.run(scenario())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    ]
    logged = _logged(instruments_db)
    # The ingest logged the simulator's open market, then its close, once each.
    assert ("NSE_EQ", "NORMAL_OPEN") in logged
    assert logged[-3:] == [
        ("NSE_EQ", "NORMAL_CLOSE"),
        ("NSE_FO", "NORMAL_CLOSE"),
        ("NSE_INDEX", "NORMAL_CLOSE"),
    ]
    assert len(logged) == 6
    assert service.simulator is not None
    _assert_exactly_once(instruments_db, service.simulator)
