"""A `tickvault` command as a child process, its output read while it runs."""

from __future__ import annotations

import subprocess
import sys
import threading

from tests.conftest import REPO


class TickvaultCommand(subprocess.Popen[str]):
    """`python -m tickvault ARGS` in `env`, its output (stdout and stderr) read as text while
    it comes.

    A pipe read only at the end fills up (64 KiB) once the command logs a lot, as a start after
    15:45 IST does (the daily schedule's post-close steps run at once), and every process
    writing to it then blocks on its next line: an api before it listens, an ingest's event
    loop.
    """

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        super().__init__(
            [sys.executable, "-m", "tickvault", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.stdout is not None
        for line in self.stdout:
            self._lines.append(line)

    def said(self) -> str:
        """What the command has written so far."""
        return "".join(self._lines)

    def communicate(  # type: ignore[override]
        self, input: str | None = None, timeout: float | None = None
    ) -> tuple[str, None]:
        """Wait for the command to end; its whole output (the reader has taken the pipe)."""
        self.wait(timeout)
        self._reader.join(timeout)
        return self.said(), None
