"""The disk floor: below `min_free_gb` on the data directory's or the journal's disk, new
frames are refused before anything is written, rather than a write failing halfway.

The pipeline asks `refusal()` before journaling each frame; the answer is remembered and
the disks asked again (statvfs) at most once a second, so the hot path pays a clock read.
A refused frame takes the journal-full path (counted in tickvault_frames_refused_total,
/health 503 with the reason), and frames already journaled are untouched: the writer keeps
committing them. Once space returns, the next check lets frames in again by itself.

The sizes that status and /metrics show (database, journal, archive) cost more to measure
and change slowly: `measure_forever` refreshes them every half minute, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from core.config import Settings
from ingest.journal import Journal, free_bytes
from ingest.status import DiskStatus

log = logging.getLogger(__name__)

GB = 1000**3
CHECK_EVERY_S = 1.0
MEASURE_EVERY_S = 30.0


def _database_bytes(pool: ConnectionPool) -> int:
    """The whole database on disk, tick chunks and bars included."""
    with pool.connection() as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


class BelowDiskFloor(RuntimeError):
    """A disk tickvault writes to has less free space than the configured floor."""


def tree_bytes(directory: Path) -> int:
    """Bytes of the files under directory (0 when it does not exist)."""
    total = 0
    for root, _, names in os.walk(directory):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # a file renamed or deleted meanwhile (an archive run)
    return total


class DiskGuard:
    """Watches the free space of the data directory's and the journal's file systems."""

    def __init__(
        self,
        data_dir: Path,
        journal_dir: Path,
        archive_dir: Path,
        min_free_gb: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._disks = {"data_dir": Path(data_dir), "journal": Path(journal_dir)}
        self._archive_dir = Path(archive_dir)
        self.min_free_bytes = int(min_free_gb * GB)
        self._clock = clock
        self._checked_at: float | None = None
        self._free: dict[str, int | None] = dict.fromkeys(self._disks)
        self._refusal: str | None = None
        self._database_bytes: int | None = None
        self._journal_bytes: int | None = None
        self._archive_bytes: int | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> DiskGuard:
        return cls(
            settings.data_dir, settings.journal_dir, settings.archive_dir, settings.min_free_gb
        )

    def refusal(self) -> str | None:
        """Why new frames must be refused now, or None; asks the disks at most once a second."""
        now = self._clock()
        if self._checked_at is None or now - self._checked_at >= CHECK_EVERY_S:
            self._checked_at = now
            self._check()
        return self._refusal

    def _check(self) -> None:
        for name, directory in self._disks.items():
            try:
                self._free[name] = free_bytes(directory)
            except OSError:
                self._free[name] = None  # not there (yet): the journal reports its own errors
        short = [
            f"{self._disks[name]} ({name}) has {free / GB:.2f} GB free"
            for name, free in self._free.items()
            if free is not None and free < self.min_free_bytes
        ]
        refusal = (
            f"{', '.join(dict.fromkeys(short))}, below the floor of "
            f"TICKVAULT_MIN_FREE_GB={self.min_free_bytes / GB:g}: new frames are refused until "
            "space is freed (frames already journaled are kept and written)"
            if short
            else None
        )
        # On crossing the floor only: the figures in the reason change with every check. The
        # pipeline logs the ERROR line when it refuses frames for it.
        if (refusal is None) != (self._refusal is None):
            if refusal is not None:
                log.warning("disk floor reached: %s", refusal)
            else:
                log.warning("free space is above the disk floor again: frames are accepted")
        self._refusal = refusal

    async def measure_forever(self, pool: ConnectionPool, journal: Journal) -> None:
        """Refresh the sizes status shows, every MEASURE_EVERY_S; a failed measure (the
        database down) keeps the last one and is tried again next round."""
        while True:
            self._journal_bytes = journal.status().bytes_on_disk
            self._archive_bytes = await asyncio.to_thread(tree_bytes, self._archive_dir)
            try:
                self._database_bytes = await asyncio.to_thread(_database_bytes, pool)
            except (psycopg.Error, PoolTimeout) as error:  # only a figure is stale
                log.debug("the database's size could not be read: %s", error)
            await asyncio.sleep(MEASURE_EVERY_S)

    def status(self) -> DiskStatus:
        return DiskStatus(
            min_free_bytes=self.min_free_bytes,
            data_dir_free_bytes=self._free["data_dir"],
            journal_free_bytes=self._free["journal"],
            database_bytes=self._database_bytes,
            journal_bytes=self._journal_bytes,
            archive_bytes=self._archive_bytes,
            refusing_frames=self._refusal,
        )
