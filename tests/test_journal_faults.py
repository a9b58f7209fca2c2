"""A journal that cannot take frames never silences the feed: it is counted, /health says
why, and ingest resumes by itself once the cause goes. Real app, real database, real disks.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.journal import Journal
from tests.conftest import DbServer
from tests.disks import small_disk
from tests.test_api import client, live_api, wait_for

STATUS = "/api/v1/websocket/status"


def refused_frames(http: httpx.Client) -> float:
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "tickvault_frames_refused_total":
                return sample.value
    raise AssertionError("/metrics has no tickvault_frames_refused_total")


def rows_written(http: httpx.Client) -> int:
    return http.get(STATUS).json()["writer"]["rows_written"]


def assert_unhealthy_but_reading(http: httpx.Client, reason: str) -> None:
    """503 with the reason, the refusals counted, the socket still read and truly open.

    The reason is read from the 503 answer itself: a disk kept full by another writer frees
    and takes space in turns, so the next answer may already be 200 again.
    """
    answers: list[httpx.Response] = []

    def unhealthy() -> bool:
        answers.append(http.get("/health"))
        return answers[-1].status_code == 503

    wait_for(unhealthy, 30)
    assert reason in answers[-1].json()["reason"]
    assert refused_frames(http) > 0
    frames = http.get(STATUS).json()["feed"]["frames"]
    wait_for(lambda: http.get(STATUS).json()["feed"]["frames"] > frames, 10)
    status = http.get(STATUS).json()
    assert status["feed"]["state"] == "connected"
    assert status["pipeline"]["frames_refused"] > 0


def assert_resumed(http: httpx.Client) -> None:
    wait_for(lambda: http.get("/health").status_code == 200, 30)
    assert http.get(STATUS).json()["pipeline"]["journal_error"] is None
    written = rows_written(http)
    wait_for(lambda: rows_written(http) > written, 30)


def test_a_read_only_journal_is_reported_and_ingest_resumes_when_writable(
    apache_server: DbServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(self: Journal, frame: bytes, received_at_us: int) -> int:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    with live_api(apache_server, tmp_path / "data") as base, client(base) as http:
        assert http.get("/health").status_code == 200
        with monkeypatch.context() as remounted:
            remounted.setattr(Journal, "append", read_only)
            assert_unhealthy_but_reading(http, "Read-only file system")
        assert_resumed(http)


@contextmanager
def kept_full(directory: Path) -> Iterator[None]:
    """Keep directory's disk full: whatever space the journal frees is taken again at once."""
    stop = threading.Event()
    filler = directory / "filler"

    def take_space() -> None:
        with filler.open("wb", buffering=0) as out:
            while not stop.is_set():
                try:
                    out.write(b"\0" * 4096)
                except OSError:
                    stop.wait(0.005)

    thread = threading.Thread(target=take_space, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
        filler.unlink()


def test_a_small_journal_disk_keeps_ingesting_and_a_full_one_recovers(
    apache_server: DbServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    with (
        small_disk(data / "journal", "2m"),
        # No disk floor: this is the journal's own handling of a full disk (the floor's is
        # tests/test_disk_guard.py).
        live_api(apache_server, data, min_free_gb=0) as base,
        client(base) as http,
    ):
        # The journal writes several times its disk's size, letting committed segments go.
        wait_for(lambda: http.get(STATUS).json()["journal"]["bytes_appended"] > 6 * 2**20, 120)
        assert http.get("/health").status_code == 200
        assert refused_frames(http) == 0

        caplog.set_level(logging.WARNING, logger="ingest.pipeline")
        with kept_full(data / "journal"):
            assert_unhealthy_but_reading(http, "the disk is full")
            # The writer's commits free segments that new frames fill again, in turns: one
            # spell of refusals all the same.
            time.sleep(8)
        assert_resumed(http)
        said = [r for r in caplog.records if r.name == "ingest.pipeline"]
        assert [r.levelno for r in said] == [logging.ERROR, logging.WARNING], [
            r.getMessage()[:120] for r in said
        ]
        assert "the disk is full" in said[0].getMessage()
        assert "takes frames again" in said[1].getMessage()
