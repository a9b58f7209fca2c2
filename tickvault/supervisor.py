"""`tickvault run`'s supervisor: a `tickvault ingest` child and a `tickvault api` child.

The parent has prepared the store (install check, start, migrate, sample instruments). It
starts the ingest, waits until it publishes (ingest/channels/), then starts the api; a
child that dies is started again after a delay (ingest/backoff.py), the ingest first so
that no feed is lost for longer than needed. One Ctrl-C or SIGTERM stops the api, then the
ingest (SIGTERM to each; the ingest exits once its open batch is flushed), and the parent
exits 0.

An ingest that exits with EXIT_CANNOT_RUN failed for a reason a restart cannot fix (its
journal belongs to another database): it is not started again, and the api is started or kept
so that /health and status say why (the ingest left the reason in its published table). When
the reason is another ingest holding the data directory, the whole run stops.

Each child leads a process group of its own: a Ctrl-C at the terminal reaches the parent
alone, which stops the children in order, and what a dead child leaves behind (the api's
uvicorn workers) is killed with its group before it is started again.

A supervisor killed outright (SIGKILL, the OOM killer) cannot stop its children, so each child
asks the kernel for a SIGTERM when the supervisor dies (`die_with_supervisor`): the ingest
then stops as on Ctrl-C, its open batch written, instead of running on unsupervised and
holding the data directory against the next `tickvault run`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from ingest.backoff import Backoff
from ingest.channels.latest_reader import LatestTickReader
from ingest.channels.latest_table import IngestNotRunning, published_path
from ingest.journal_dir import journal_holder

log = logging.getLogger(__name__)

# The supervisor's pid, in each child's environment: the child dies with that process.
SUPERVISOR_PID_VARIABLE = "TICKVAULT_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h

POLL_S = 0.2
HEALTHY_AFTER_S = 30.0  # a child up this long had worked: its next restart is quick again
API_STOP_TIMEOUT_S = 30.0
INGEST_STOP_TIMEOUT_S = 120.0  # the open batch, and a database retry or two, before a kill
# A child's exit status for "a restart cannot fix this" (sysexits.h's EX_CONFIG).
EXIT_CANNOT_RUN = 78


@dataclass
class Child:
    """One supervised `tickvault <command>` process."""

    command: str
    env: Mapping[str, str]
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.5, maximum=30.0))
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tickvault", self.command],
            env={**self.env, SUPERVISOR_PID_VARIABLE: str(os.getpid())},
            process_group=0,
        )
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("started tickvault %s (pid %d)", self.command, self.process.pid)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def exited(self) -> int | None:
        """The exit code when the child has died since the last look (its group killed),
        else None."""
        if self.process is None:
            return None
        code = self.process.poll()
        if code is None:
            return None
        self._kill_group()
        self.process = None
        return code

    def schedule_restart(self, code: int) -> float:
        if time.monotonic() - self.started_at >= HEALTHY_AFTER_S:
            self.backoff.reset()
        delay = self.backoff.delay()
        self.restart_at = time.monotonic() + delay
        log.warning(
            "tickvault %s exited with code %d; starting it again in %.1f s",
            self.command,
            code,
            delay,
        )
        return delay

    def due(self) -> bool:
        """Dead, and its restart delay is over."""
        restart_at = self.restart_at
        return self.process is None and restart_at is not None and time.monotonic() >= restart_at

    def stop(self, timeout: float) -> int | None:
        """SIGTERM, then wait up to `timeout` (SIGKILL to the group after that)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("tickvault %s did not stop in %.0f s: killed", self.command, timeout)
            self._kill_group()
            code = process.wait()
        self._kill_group()
        self.process = None
        return code

    def _kill_group(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


class Supervisor:
    def __init__(
        self, data_dir: Path, journal_dir: Path, env: Mapping[str, str] | None = None
    ) -> None:
        environment = dict(os.environ if env is None else env)
        self.ingest = Child("ingest", environment)
        self.api = Child("api", environment)
        self.published = published_path(data_dir.absolute())
        self.journal_dir = journal_dir
        self.ingest_cannot_run = False
        self._stop = threading.Event()

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self._stop.set()

    def run(self) -> int:
        previous = {
            signum: signal.signal(signum, self.request_stop)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self._supervise()
        finally:
            self._stop_children()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return 1 if self.ingest_cannot_run else 0

    def _supervise(self) -> None:
        self.ingest.start()
        while not self._stop.is_set():
            for child in (self.ingest, self.api):
                code = child.exited()
                if code == EXIT_CANNOT_RUN and child is self.ingest:
                    if not self._ingest_gives_up():
                        return
                elif code is not None:
                    child.schedule_restart(code)
                if child.due():
                    child.start()
            if (
                self.api.process is None
                and self.api.restart_at is None
                and (self.ingest_cannot_run or self._published())
            ):
                self.api.start()
            self._stop.wait(POLL_S)

    def _ingest_gives_up(self) -> bool:
        """The ingest cannot run: whether the api goes on (to say why) or the run stops."""
        self.ingest_cannot_run = True
        holder = journal_holder(self.journal_dir)
        if holder is not None:
            log.error(
                "tickvault ingest cannot run: another process holds its journal %s (%s); stopping",
                self.journal_dir,
                holder,
            )
            return False
        log.error(
            "tickvault ingest cannot run (its message above says why and what to do); it is "
            "not started again. The API answers on, and /health says why; start tickvault "
            "run again once the cause is fixed"
        )
        return True

    def _published(self) -> bool:
        """Is the ingest publishing (so that the api, started now, has something to serve)?"""
        with LatestTickReader(self.published) as reader:
            try:
                reader.info()
            except IngestNotRunning:
                return False
        log.info("the ingest publishes at %s", self.published)
        return True

    def _stop_children(self) -> None:
        log.info("stopping: the api, then the ingest (its open batch written first)")
        api = self.api.stop(API_STOP_TIMEOUT_S)
        ingest = self.ingest.stop(INGEST_STOP_TIMEOUT_S)
        log.info("stopped (api exit code %s, ingest exit code %s)", api, ingest)


def die_with_supervisor() -> None:
    """In a supervised child: SIGTERM when the supervisor dies, however it dies.

    The kernel's parent-death signal (prctl PR_SET_PDEATHSIG) fires when the thread that
    started the child ends; the supervisor starts children from its main thread, so that is
    when the process ends. A supervisor already gone before the request was made is checked
    for afterwards. Nothing happens outside a supervisor, or where prctl does not exist.
    """
    supervisor = os.environ.get(SUPERVISOR_PID_VARIABLE)
    if not supervisor or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("cannot ask to stop with the supervisor: %s", os.strerror(ctypes.get_errno()))
        return
    if os.getppid() != int(supervisor):
        os.kill(os.getpid(), signal.SIGTERM)
