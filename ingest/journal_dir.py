"""The journal directory's lock, and the notes that let a refusal name who holds it.

One ingest process holds a journal directory (an flock on it, released when the process ends
however it ends). It notes who it is in `holder`, so that a second process refused the lock
can say which instance runs there; `set_aside` moves a journal no process holds to a dated
name beside it, so that the next ingest starts a new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

HOLDER_FILE = "holder"
ID_FILE = "journal_id"
DATABASE_FILE = "database"  # the database the frames were last written to


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


def write_note(directory: Path, name: str, text: str, dir_fd: int) -> None:
    """Write a small file of what the journal knows about itself, if the disk lets it (on a
    full disk an older note is removed instead: no note is better than a wrong one)."""
    try:
        write_atomically(directory / name, text, dir_fd)
    except OSError as error:
        log.warning("journal %s: %s not recorded: %s", directory, name, error)
        with contextlib.suppress(OSError):
            (directory / name).unlink()


def read_note(directory: Path, name: str) -> str | None:
    try:
        return (directory / name).read_text().strip() or None
    except FileNotFoundError:
        return None


def load_journal_id(directory: Path, dir_fd: int) -> str:
    """The journal's identity, made once: batches record it, so recovery knows its frames."""
    path = directory / ID_FILE
    if not path.exists():
        write_atomically(path, uuid.uuid4().hex + "\n", dir_fd)
    return path.read_text().strip()


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
