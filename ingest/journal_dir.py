"""The journal directory's lock, and the notes that let a refusal name who holds it.

One ingest process holds a journal directory (an flock on it, released when the process ends
however it ends). It notes who it is in `holder`, so that a second process refused the lock
can say which instance runs there; `set_aside` moves a journal no process holds to a dated
name beside it, so that the next ingest starts a new one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

HOLDER_FILE = "holder"


class JournalInUse(RuntimeError):
    """Another process holds the journal: `holder` says which, as far as it is known."""

    def __init__(self, directory: Path, holder: str) -> None:
        super().__init__(f"journal {directory} is in use by {holder}")
        self.directory = directory
        self.holder = holder


def write_atomically(path: Path, text: str, dir_fd: int) -> None:
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    temporary.rename(path)
    os.fsync(dir_fd)


def lock(directory: Path) -> int:
    """The directory's descriptor, locked; JournalInUse naming the holder otherwise."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(dir_fd)
        raise JournalInUse(directory, _holder(directory)) from None
    return dir_fd


def _holder(directory: Path) -> str:
    try:
        held = json.loads((directory / HOLDER_FILE).read_text())
        return f"pid {held['pid']} on {held['host']} ({held['command']}, since {held['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it did not say which)"


def journal_holder(directory: Path) -> str | None:
    """Who holds the journal at directory now, or None when nobody does (or it is absent)."""
    try:
        os.close(lock(Path(directory)))
    except JournalInUse as refused:
        return refused.holder
    except FileNotFoundError:
        return None
    return None


def set_aside(directory: Path) -> Path:
    """Rename the journal at directory to a dated name beside it, and return that path: the
    next ingest starts a new journal (a new id) there. JournalInUse while a process holds it."""
    directory = Path(directory)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = directory.with_name(directory.name + ".set-aside-" + stamp)
    dir_fd = lock(directory)
    try:
        directory.rename(target)  # under the lock: no ingest opens it meanwhile
    finally:
        os.close(dir_fd)
    return target


def holder_note() -> str:
    """What `holder` says of this process."""
    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv)[:200],
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
