"""The disk floor: below TICKVAULT_MIN_FREE_GB new frames are refused cleanly (503 with the
reason, counted), every frame already journaled is still written, and ingest resumes by
itself when space returns. On real (tmpfs) disks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from core.config import Settings
from ingest.disk import GB, DiskGuard
from ingest.journal import free_bytes
from tests.conftest import DbServer
from tests.disks import small_disk
from tests.test_api import client, ingest_beside, sample_database, serve, wait_for
from tests.test_journal_faults import STATUS, refused_frames, rows_written

MiB = 2**20
FLOOR_BYTES = 24 * MiB


@contextmanager
def taken(directory: Path, leave_bytes: int) -> Iterator[None]:
    """Take the space of directory's disk but `leave_bytes`, at once (no moment of a full
    disk on the way), and give it back afterwards."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, free_bytes(directory) - leave_bytes)
    finally:
        os.close(fd)
    try:
        yield
    finally:
        filler.unlink()


def metric(http: httpx.Client, name: str, labels: dict[str, str] | None = None) -> float | None:
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and (labels is None or sample.labels == labels):
                return sample.value
    return None


def test_the_disk_floor_refuses_new_frames_keeps_journaled_ones_and_recovers(
    apache_server: DbServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with small_disk(data, "64m"), sample_database(apache_server) as url:
        settings = Settings(data_dir=data, simulator_rate=2000, min_free_gb=FLOOR_BYTES / GB)
        with (
            ingest_beside(settings, url),
            serve(create_app(settings, url)) as base,
            client(base) as http,
        ):
            wait_for(lambda: rows_written(http) > 0, 60)
            wait_for(lambda: http.get(STATUS).json()["disk"]["database_bytes"], 30)
            disk = http.get(STATUS).json()["disk"]
            assert disk["data_dir_free_bytes"] > FLOOR_BYTES
            assert disk["min_free_bytes"] == FLOOR_BYTES
            assert disk["refusing_frames"] is None
            assert metric(http, "tickvault_database_bytes") == disk["database_bytes"]
            assert metric(http, "tickvault_disk_free_bytes", {"disk": "journal"}) > FLOOR_BYTES
            # The ingest publishes its health every half second: a start may still show.
            with contextlib.suppress(AssertionError):
                wait_for(lambda: http.get("/health").status_code == 200, 10)
            assert http.get("/health").status_code == 200, http.get("/health").text
            assert refused_frames(http) == 0

            with taken(data, leave_bytes=FLOOR_BYTES // 2):
                answers: list[httpx.Response] = []

                def unhealthy() -> bool:
                    answers.append(http.get("/health"))
                    return answers[-1].status_code == 503

                wait_for(unhealthy, 10)
                reason = answers[-1].json()["reason"]
                assert "below the floor of TICKVAULT_MIN_FREE_GB" in reason
                assert str(data) in reason
                refused = refused_frames(http)
                wait_for(lambda: refused_frames(http) > refused, 10)  # the feed is still read
                # Every frame journaled before the floor is committed; no new one is taken.
                status = http.get(STATUS).json()
                last_seq = status["journal"]["last_seq"]
                wait_for(lambda: http.get(STATUS).json()["writer"]["committed_seq"] == last_seq, 30)
                status = http.get(STATUS).json()
                assert status["journal"]["last_seq"] == last_seq
                assert status["pipeline"]["frames_refused"] > 0
                assert status["disk"]["refusing_frames"] == reason.split(": ", 1)[1]
                assert metric(http, "tickvault_disk_below_floor") == 1
                with psycopg.connect(url) as conn:
                    committed = conn.execute("SELECT max(last_seq) FROM ingest_batches").fetchone()
                assert committed == (last_seq,)

            # Space is back: frames are accepted again by themselves.
            wait_for(lambda: http.get("/health").status_code == 200, 10)
            written = rows_written(http)
            wait_for(lambda: rows_written(http) > written, 30)
            status = http.get(STATUS).json()
            assert status["journal"]["last_seq"] > last_seq
            assert status["pipeline"]["journal_error"] is None
            assert status["disk"]["refusing_frames"] is None


def test_free_space_is_asked_at_most_once_a_second(tmp_path: Path) -> None:
    """The pipeline asks before every frame: the disks are asked once a second at most."""
    now = [0.0]
    with small_disk(tmp_path / "disk", "4m") as disk:
        guard = DiskGuard(
            disk, disk, disk / "archive", min_free_gb=2 * MiB / GB, clock=lambda: now[0]
        )
        assert guard.refusal() is None
        with taken(disk, leave_bytes=MiB):
            now[0] += 0.5
            assert guard.refusal() is None  # the answer of a moment ago
            now[0] += 0.6
            assert "has 0.00 GB free, below the floor" in (guard.refusal() or "")
            assert guard.status().journal_free_bytes < 2 * MiB
        now[0] += 1.0
        assert guard.refusal() is None
