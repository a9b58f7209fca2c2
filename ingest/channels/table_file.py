"""The published table's file as its writer makes it: whole before anyone can open it.

The file is made beside its path, its blocks reserved, its header packed and the writer
marked running, its lock taken, and only then moved into place, so a reader finds either
the last table or this one, never half of one (latest_table.py has the layout).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import time
import uuid
from pathlib import Path

from ingest.channels.latest_table import (
    BOM,
    HEADER,
    HEADER_SIZE,
    KEY_ENTRY,
    LAYOUT_VERSION,
    MAGIC,
    MAX_KEY_BYTES,
    RUNNING,
    W_HEARTBEAT_NS,
    W_STATE,
    PublisherBusy,
    Shape,
    lock,
    pid_namespace,
)


def create_table(
    path: Path,
    capacity: int,
    shape: Shape,
    start_token: bytes,
    areas: tuple[int, int, int, int, int],
) -> tuple[mmap.mmap, int]:
    """The table at `path` for `capacity` instruments of `shape`, `areas` as `sizes` gives
    them: (its mapping, the descriptor holding the lock of `path` with the suffix .lock, which
    readers test). Raises PublisherBusy while another ingest holds that lock, and then leaves
    nothing behind."""
    size = areas[-1]
    lock_path = path.with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    mm: mmap.mmap | None = None
    lock_fd = -1
    try:
        # The blocks now: a full disk fails here, not later as SIGBUS on a page write.
        os.posix_fallocate(fd, 0, size)
        mm = mmap.mmap(fd, size)
        _pack_header(mm, capacity, shape, start_token, areas)
        with memoryview(mm) as view, view.cast("Q") as words:
            words[W_STATE] = RUNNING
            words[W_HEARTBEAT_NS] = time.time_ns()
        lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            lock(lock_fd)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise PublisherBusy(
                f"another ingest publishes at {path} (it holds {lock_path})"
            ) from None
        os.replace(temporary, path)
    except BaseException:
        if mm is not None:
            mm.close()
        if lock_fd >= 0:
            os.close(lock_fd)
        os.close(fd)
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    os.close(fd)  # the mapping keeps the file
    return mm, lock_fd


def _pack_header(
    mm: mmap.mmap,
    capacity: int,
    shape: Shape,
    start_token: bytes,
    areas: tuple[int, int, int, int, int],
) -> None:
    """The table's header, as every reader checks it (latest_table.HEADER): the layout, this
    process and its start, then `areas` (what `sizes` gives: keys_at, slots_at, status_at,
    the status buffer and the file's size)."""
    keys_at, slots_at, status_at, buffer, size = areas
    HEADER.pack_into(
        mm,
        0,
        MAGIC,
        LAYOUT_VERSION,
        BOM,
        HEADER_SIZE,
        capacity,
        shape.slot,
        KEY_ENTRY,
        MAX_KEY_BYTES,
        shape.columns,
        shape.columns_crc,
        0,
        os.getpid(),
        pid_namespace(),
        start_token,
        time.time_ns(),
        keys_at,
        slots_at,
        status_at,
        buffer,
        size,
        0,
    )
