"""An append-only local journal of raw feed frames, so that no accepted tick is lost.

Every frame is appended here before it is decoded, and the database records the last journal
seq of each batch it commits. After a crash the ingest replays the frames after that seq, so
the journal only has to keep what the database does not hold yet. Frames are kept as raw
bytes, not ticks: one append per frame (10-100 ticks) fits the hot path, and replay goes
through the same decoder as live frames.

The files themselves, segments and their records, are ingest/journal_segments.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from types import TracebackType

from ingest.journal_dir import (
    DATABASE_FILE,
    HOLDER_FILE,
    holder_note,
    load_journal_id,
    lock,
    read_note,
    write_note,
)
from ingest.journal_segments import (
    SUFFIX,
    cut_torn_tail,
    encode_record,
    read_segments,
    segment_path,
)
from ingest.journal_segments import JournalCorrupt as JournalCorrupt
from ingest.status import JournalStatus

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
_SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT)
# A segment is at most this share of the space left on the journal's disk when it begins, so
# that committed segments are let go of well before a small disk fills (but not below a floor).
_SEGMENT_SHARE_OF_FREE = 4
_MIN_SEGMENT_BYTES = 64 * KiB


class JournalFull(RuntimeError):
    """The journal cannot take another frame: refusing it is better than losing it silently.

    Not an OSError, so that handlers of connection errors cannot mistake it for one.
    """


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding directory."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


class Journal:
    """The frame journal of one ingest process (the directory is locked against a second).

    An append is one `os.write`: once it returns, the record is in the OS page cache and
    survives a crash of this process, SIGKILL included. It reaches the disk on `sync()`, which
    the writer calls at least once per committed batch (about every 200 ms), and on rotation
    and close, so a power loss can lose the frames of the last unsynced moment.
    """

    def __init__(self, directory: Path, segment_bytes: int = 64 * MiB, max_bytes: int = 2 * GiB):
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        self._dir_fd = lock(self.directory)
        self.committed_seq = 0
        # Frames after this seq are kept even once committed: the custom handlers' signals
        # of them are not all stored yet (ingest/signals.py); None: no such hold.
        self.held_after: int | None = None
        self.torn_tail_bytes = 0
        self.bytes_appended = 0  # since this process opened it: shows segments being reused
        self._fd = -1
        self._segment_limit = segment_bytes
        self._torn_write_at: int | None = None  # a failed write's offset, if not cut yet
        self._fd_swap = threading.Lock()  # sync() may run in the writer's thread
        try:
            write_note(self.directory, HOLDER_FILE, holder_note(), self._dir_fd)
            self.journal_id = load_journal_id(self.directory, self._dir_fd)
            self._sizes = {
                int(path.name.removesuffix(SUFFIX)): path.stat().st_size
                for path in self.directory.glob("*" + SUFFIX)
            }
            self._bytes = sum(self._sizes.values())
            if self._sizes:
                self._open_newest()
            else:
                self._last_seq = 0
                self._start_segment()
        except BaseException:
            os.close(self._dir_fd)
            raise

    @property
    def database(self) -> str | None:
        """The database this journal's frames were last written to, as `bind_database` was
        told (None before the first, or in a journal older than this record)."""
        return read_note(self.directory, DATABASE_FILE)

    def bind_database(self, description: str) -> None:
        """Record the database the frames are written to, for the error that names it when
        the journal is later opened against another."""
        if description != self.database:
            write_note(self.directory, DATABASE_FILE, description + "\n", self._dir_fd)

    def _path(self, first_seq: int) -> Path:
        return segment_path(self.directory, first_seq)

    def _open_newest(self) -> None:
        """Find the last seq, cut a record torn by a crash, and append in a new segment.

        A new segment, so that the old ones are deleted as soon as the database says they
        are committed: a disk filled by committed frames before a restart frees itself.
        """
        first_seq = max(self._sizes)
        path = self._path(first_seq)
        self._last_seq, self.torn_tail_bytes = cut_torn_tail(path, first_seq)
        self._bytes -= self.torn_tail_bytes
        self._sizes[first_seq] -= self.torn_tail_bytes
        self._current = first_seq
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        os.fsync(self._fd)
        if self._sizes[first_seq]:
            self._start_segment()
        else:
            self._size_segment()

    def _start_segment(self) -> None:
        """Begin the segment of the next record once the previous one is on disk.

        Each step that can fail (a full disk) comes before the switch, so that a failed
        rotation leaves the journal appending to the old segment.
        """
        if self._fd >= 0:
            os.fsync(self._fd)
        first_seq = self._last_seq + 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(self._path(first_seq), flags, 0o644)
        with self._fd_swap:
            if self._fd >= 0:
                os.close(self._fd)
            self._fd = fd
        os.fsync(self._dir_fd)
        self._sizes[first_seq] = 0
        self._current = first_seq
        self._size_segment()

    def _size_segment(self) -> None:
        """Size the current segment to the space left: on a small disk, smaller segments are
        committed and deleted sooner, so the journal does not fill it with committed frames."""
        share = free_bytes(self.directory) // _SEGMENT_SHARE_OF_FREE
        self._segment_limit = min(self.segment_bytes, max(_MIN_SEGMENT_BYTES, share))

    def append(self, frame: bytes, received_at_us: int) -> int:
        """Journal one frame and return its seq.

        Raises JournalFull when neither max_bytes nor the disk leaves room once committed
        segments are let go of, and OSError when the disk refuses the write for another reason
        (a read-only remount, EIO). Either way nothing of the frame stays behind, its seq is
        not used up, and a later append tries again from a clean state.
        """
        if self._fd < 0:
            raise ValueError("the journal is closed")
        seq = self._last_seq + 1
        record = encode_record(seq, received_at_us, frame)
        if self._torn_write_at is not None:
            self._cut_torn_write()
        try:
            if self._sizes[self._current] >= self._segment_limit:
                self._start_segment()
            if self._bytes + len(record) > self.max_bytes:
                self._drop_hold()
            if self._bytes + len(record) > self.max_bytes and not self._release_committed():
                raise _full(self, f"{self._bytes} of max_bytes={self.max_bytes} bytes are in use")
            self._write_making_room(record)
        except OSError as exc:
            if exc.errno in _SPACE_ERRORS:
                raise _full(self, f"the disk is full ({exc.strerror})") from exc
            raise
        self._last_seq = seq
        return seq

    def _write_making_room(self, record: bytes) -> None:
        """Write; on a full disk let go of the committed current segment and write once more."""
        try:
            self._write(record)
        except OSError as exc:
            if exc.errno not in _SPACE_ERRORS or not (
                self._drop_hold() or self._release_committed()
            ):
                raise
            self._write(record)

    def _write(self, record: bytes) -> None:
        size = self._sizes[self._current]
        try:
            written = os.write(self._fd, record)
            while written < len(record):  # a regular file writes short only when running out
                written += os.write(self._fd, memoryview(record)[written:])
        except OSError:
            self._torn_write_at = size
            with contextlib.suppress(OSError):  # a read-only disk refuses this too: retried
                self._cut_torn_write()
            raise
        self._sizes[self._current] = size + written
        self._bytes += written
        self.bytes_appended += written

    def _cut_torn_write(self) -> None:
        """Cut what a failed write left, so that no record ever follows half of another."""
        assert self._torn_write_at is not None
        os.ftruncate(self._fd, self._torn_write_at)
        self._torn_write_at = None

    def _release_committed(self) -> bool:
        """Start a new segment and delete the current one if all of it is committed.

        Returns whether that freed anything: frames the database has not committed yet are
        never let go of.
        """
        if self._releasable_seq() != self._last_seq or not self._sizes[self._current]:
            return False
        self._start_segment()
        self._torn_write_at = None  # a failed write was in the segment let go of
        self.mark_committed(self.committed_seq)
        return True

    @property
    def last_seq(self) -> int:
        """The seq of the newest appended frame (0 before the first)."""
        return self._last_seq

    @property
    def first_seq(self) -> int:
        """The seq of the oldest frame still held (last_seq + 1 when none is): the ones
        before it were deleted as committed."""
        return min(self._sizes)

    def sync(self) -> None:
        """Make every appended frame survive a power loss, not just a process crash.

        Call it before committing a batch: a database holding seqs that a power loss took
        from the journal would see them handed out again to new frames. It is safe to call
        from another thread than `append`, so that the event loop need not wait on the disk:
        it syncs a duplicate of the segment's descriptor, which a rotation cannot close under
        it, and a rotation syncs the segment it leaves.
        """
        with self._fd_swap:
            if self._fd < 0:
                raise ValueError("the journal is closed")
            fd = os.dup(self._fd)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def hold(self, seq: int) -> None:
        """Keep the frames after `seq` even once committed (the signals' progress), and let
        go of the segments this hold alone kept."""
        self.held_after = seq
        self._delete_released()

    def _drop_hold(self) -> bool:
        """Let go of committed frames kept only for the signals, when the journal has no room
        for a new frame: the ticks come first. Returns whether that freed a segment."""
        if self.held_after is None or self.held_after >= self.committed_seq:
            return False
        before = len(self._sizes)
        log.warning(
            "frame journal %s is full: frames %d..%d are let go of before all their signals "
            "are stored (a crash now would lose those signals, not their ticks)",
            self.directory,
            self.held_after + 1,
            self.committed_seq,
        )
        self.held_after = None
        self._delete_released()
        return len(self._sizes) < before

    def _releasable_seq(self) -> int:
        """The last seq no one needs: committed, and not held."""
        if self.held_after is None:
            return self.committed_seq
        return min(self.committed_seq, self.held_after)

    def mark_committed(self, seq: int) -> None:
        """Frames up to seq are in the database: delete the segments holding nothing newer
        (or held)."""
        if seq > self._last_seq:
            raise ValueError(f"seq {seq} is committed but the journal ends at {self._last_seq}")
        self.committed_seq = max(self.committed_seq, seq)
        self._delete_released()

    def _delete_released(self) -> None:
        released = self._releasable_seq()
        starts = sorted(self._sizes)
        for first_seq, next_first in pairwise(starts):
            if next_first - 1 > released:
                break
            try:
                self._path(first_seq).unlink()
            except FileNotFoundError:
                pass
            except OSError:
                return  # a read-only disk: kept, and deleted by a later call once it can be
            self._bytes -= self._sizes.pop(first_seq)

    def replay(self, after_seq: int) -> Iterator[tuple[int, int, bytes]]:
        """Yield (seq, received_at_us, frame) after after_seq, up to the last seq at this call.

        Frames appended while the replay runs are left out: they already go down the live path.
        """
        starts = sorted(self._sizes)
        if starts[0] > after_seq + 1:
            raise ValueError(
                f"frames {after_seq + 1}..{starts[0] - 1} are no longer in journal "
                f"{self.directory}: they were deleted as committed, so the database that "
                f"committed them is not the one asking for frames after {after_seq}"
            )
        skip = sum(1 for first_seq in starts[1:] if first_seq <= after_seq + 1)
        return read_segments(self.directory, starts[skip:], after_seq, self._last_seq)

    def status(self) -> JournalStatus:
        return JournalStatus(
            journal_id=self.journal_id,
            last_seq=self.last_seq,
            committed_seq=self.committed_seq,
            backlog_frames=self._last_seq - self.committed_seq,
            bytes_on_disk=self._bytes,
            bytes_appended=self.bytes_appended,
            segments=len(self._sizes),
            max_bytes=self.max_bytes,
            torn_tail_bytes=self.torn_tail_bytes,
        )

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            with self._fd_swap:
                os.close(self._fd)
                self._fd = -1
            os.close(self._dir_fd)  # releases the lock

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType
    ) -> None:
        self.close()


def _full(journal: Journal, why: str) -> JournalFull:
    """The error of a frame `journal` cannot take, saying what to do."""
    committed, last = journal.committed_seq, journal.last_seq
    return JournalFull(
        f"frame journal {journal.directory} cannot take another frame: {why}; "
        f"the database has committed up to seq {committed} of {last}, "
        f"so {last - committed} frames wait only here. Get the database "
        "writer committing again (the journal frees segments as batches commit), or free "
        "disk space or raise max_bytes; frames arriving meanwhile cannot be journaled, so "
        "they are counted and dropped (the feed keeps being read)."
    )


async def sync_forever(journal: Journal, period_s: float = 0.2) -> None:
    """fsync the journal a few times a second even while nothing commits (an outage).

    In a thread, as the writer does, so that the event loop never waits on the disk. A
    failed sync is logged and tried again: the frames stay in the page cache, and the
    writer will not commit frames whose sync fails.
    """
    failing = False
    while True:
        await asyncio.sleep(period_s)
        try:
            await asyncio.to_thread(journal.sync)
        except OSError as error:
            if not failing:
                log.error("the frame journal cannot be synced to disk: %s", error)
            failing = True
        else:
            failing = False
