"""The ingest's published state, for an API process that does not run the ingest itself.

`tickvault api` serves beside a `tickvault ingest` on the same machine and data directory.
That ingest publishes the latest tick per instrument and its status in
`published/latest.bin` (ingest/channels/); this module reads them for the routes:

- latest ticks and the status are read when asked, through a `LatestTickReader` per thread
  (a reader is not thread-safe). A read of a few keys takes tens of microseconds, so the hot
  case runs on the event loop, with a short busy budget; a read that finds a slot busy past
  it is retried in the threadpool with the reader's whole budget.
- whether the ingest publishes, for /health, is checked in the background every
  WATCH_INTERVAL_S and answered from memory, as the database's liveness is (api/liveness.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from ingest.channels.latest_reader import LatestTickReader
from ingest.channels.latest_table import BUSY_TIMEOUT_S, IngestNotRunning, SlotBusy, published_path
from ingest.status import IngestStatus
from store.tick_row import Tick

log = logging.getLogger(__name__)

# What a read on the event loop may spend spinning on a slot the ingest is writing; past it,
# the read is repeated in the threadpool with the reader's own budget (BUSY_TIMEOUT_S).
LOOP_BUSY_TIMEOUT_S = 0.001
WATCH_INTERVAL_S = 0.5
# The ingest beats its heartbeat every 25 ms: seconds without one is an ingest that hangs.
HEARTBEAT_STALE_S = 5.0
# A check older than a few rounds is not trusted: the watcher itself would have stopped.
_CHECK_STALE_S = 3 * (WATCH_INTERVAL_S + 1.0)
NOT_CHECKED = "the ingest's published state has not been read yet"

_STATUS = TypeAdapter(IngestStatus)


class StatusNotPublished(Exception):
    """The ingest runs but has not published its status yet (it is starting)."""


class PublishedIngest:
    """The state the ingest on `data_dir` publishes: `latest`, `every_key`, `status`, and
    `problem()` for /health. Thread-safe: each thread reads through its own reader."""

    def __init__(self, data_dir: Path) -> None:
        self.path = published_path(Path(data_dir).absolute())
        self._local = threading.local()
        self._readers: list[LatestTickReader] = []  # every thread's, to close them at the end
        self._readers_lock = threading.Lock()
        self._problem: str | None = NOT_CHECKED
        self._checked_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    # --- reads, in the calling thread ------------------------------------------------------

    def latest(self, keys: Iterable[str] | None, *, on_loop: bool = False) -> dict[str, Tick]:
        """The newest tick of each key that has one (of every published key for None).

        IngestNotRunning when no ingest publishes; SlotBusy when a slot stayed busy past the
        budget, which `on_loop` (a read on the event loop) makes LOOP_BUSY_TIMEOUT_S.
        """
        reader = self._reader(LOOP_BUSY_TIMEOUT_S if on_loop else BUSY_TIMEOUT_S)
        return reader.latest(reader.keys() if keys is None else keys)

    def status(self) -> IngestStatus:
        """The newest published status; IngestNotRunning, StatusNotPublished or SlotBusy."""
        reader = self._reader(BUSY_TIMEOUT_S)
        status = reader.status()
        if status is None:
            raise StatusNotPublished(
                f"the ingest (pid {reader.info()['pid']}) has not published its status yet"
                " (it is starting)"
            )
        return _STATUS.validate_python(status)

    def close(self) -> None:
        """Close every thread's reader; call when no request runs any more."""
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.close()

    def _reader(self, busy_timeout_s: float) -> LatestTickReader:
        readers: dict[float, LatestTickReader] | None = getattr(self._local, "readers", None)
        if readers is None:
            readers = self._local.readers = {}
        reader = readers.get(busy_timeout_s)
        if reader is None:
            reader = readers[busy_timeout_s] = LatestTickReader(
                self.path, busy_timeout_s=busy_timeout_s
            )
            with self._readers_lock:
                self._readers.append(reader)
        return reader

    # --- /health, from memory --------------------------------------------------------------

    async def start(self) -> None:
        """Check once, so that the first /health already knows, then keep checking."""
        await self._check()
        self._task = asyncio.create_task(self._keep_checking(), name="published-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.close()

    def problem(self) -> str | None:
        """None while the ingest publishes and says it is healthy, else why /health is 503."""
        checked = self._checked_at
        if checked is None:
            return NOT_CHECKED
        age = time.monotonic() - checked
        if age > _CHECK_STALE_S:
            return f"the ingest's published state was last read {age:.0f} s ago"
        return self._problem

    async def _keep_checking(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            await self._check()

    async def _check(self) -> None:
        # Off the event loop: the status of a large universe is megabytes of JSON to parse.
        try:
            problem = await asyncio.to_thread(self.problem_now)
        except SlotBusy:
            return  # the ingest is writing it: the last answer stands, the next round asks
        except Exception:
            log.exception("could not read the ingest's published state at %s", self.path)
            problem = f"the ingest's published state at {self.path} cannot be read"
        if problem != self._problem:
            if problem is None:
                log.info("the ingest publishes at %s", self.path)
            elif self._problem is None or self._problem == NOT_CHECKED:
                log.warning("%s", problem)
        self._problem = problem
        self._checked_at = time.monotonic()

    def problem_now(self) -> str | None:
        """Read the published state now: None when the ingest is healthy, else why not.
        `tickvault health` (the ingest container's healthcheck) asks this directly."""
        reader = self._reader(BUSY_TIMEOUT_S)
        try:
            info = reader.info()
            status: dict[str, Any] | None = reader.status()
        except IngestNotRunning as error:
            return str(error)
        if info["heartbeat_age_s"] > HEARTBEAT_STALE_S:
            return (
                f"the ingest (pid {info['pid']}) has not published for "
                f"{info['heartbeat_age_s']:.0f} s"
            )
        if status is None:
            return f"the ingest (pid {info['pid']}) has not published its status yet"
        return status.get("health_problem")
