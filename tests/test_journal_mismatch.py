"""A journal of another database: the ingest refuses it once, saying which two databases,
where the journal is and how to set it aside; /health says the same; `tickvault journal
set-aside` moves it (never while an ingest holds it), and the next start runs.

Real databases on the test server: the journal is written into one, then the ingest is
pointed at another, as when a database is dropped and created again.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psycopg
import pytest

from api.ingest_state import PublishedIngest
from core.config import Settings
from ingest.journal import Journal
from ingest.recovery import JournalMismatch
from ingest.service import WebSocketService
from tests.conftest import DbServer
from tests.test_api import sample_database
from tests.test_ingest_e2e import _wait_for
from tickvault.cli import main


def _settings(data_dir: Path) -> Settings:
    # Small segments, so that committed ones are deleted within seconds, as in a long run.
    return Settings(
        data_dir=data_dir,
        simulator_rate=3000,
        journal_segment_bytes=64 * 1024,
        schedule_enabled=False,
    )


async def _run_for(settings: Settings, url: str, seconds: float) -> None:
    service = WebSocketService(settings, url)
    await service.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await service.stop()


def _database_name(url: str) -> str:
    with psycopg.connect(url) as conn:
        (name,) = conn.execute("SELECT current_database()").fetchone()
    return name


def _tickvault(data_dir: Path, *argv: str) -> int:
    previous = os.environ.get("TICKVAULT_DATA_DIR")
    os.environ["TICKVAULT_DATA_DIR"] = str(data_dir)
    try:
        return main(list(argv))
    finally:
        if previous is None:
            del os.environ["TICKVAULT_DATA_DIR"]
        else:
            os.environ["TICKVAULT_DATA_DIR"] = previous


def test_a_journal_of_another_database_is_refused_named_and_set_aside(
    apache_server: DbServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    settings = _settings(data_dir)
    with sample_database(apache_server) as first, sample_database(apache_server) as second:
        asyncio.run(_run_for(settings, first, 4))
        with Journal(settings.journal_dir) as journal:
            assert journal.first_seq > 1, "committed segments should have been deleted"

        with pytest.raises(JournalMismatch) as refused:
            asyncio.run(_run_for(settings, second, 0))
        said = str(refused.value)
        assert str(settings.journal_dir) in said
        assert f"database '{_database_name(first)}'" in said, "the journal's database"
        assert f"database '{_database_name(second)}'" in said, "the database asking"
        assert "tickvault journal set-aside" in said
        assert "password" not in said.lower()

        published = PublishedIngest(data_dir)
        try:
            problem = published.problem_now()
        finally:
            published.close()
        assert problem is not None
        assert "belongs to another database" in problem
        assert "tickvault journal set-aside" in problem

        async def set_aside_while_running() -> int:
            service = WebSocketService(settings, first)
            await service.start()
            try:
                return await asyncio.to_thread(_tickvault, data_dir, "journal", "set-aside")
            finally:
                await service.stop()

        capsys.readouterr()
        assert asyncio.run(set_aside_while_running()) == 1
        assert f"in use by pid {os.getpid()}" in capsys.readouterr().err

        assert _tickvault(data_dir, "journal", "set-aside") == 0
        moved = [path for path in data_dir.iterdir() if ".set-aside-" in path.name]
        assert len(moved) == 1
        assert str(moved[0]) in capsys.readouterr().out

        async def runs_on_the_second() -> int:
            service = WebSocketService(settings, second)
            await service.start()
            try:
                await _wait_for(lambda: service.status().writer.rows_written > 0)
                return service.status().writer.rows_written
            finally:
                await service.stop()

        assert asyncio.run(runs_on_the_second()) > 0
