"""The latest tick per instrument and the ingest's status, published for other local processes.

The ingest (the one writer) keeps a file in the data directory, `published/latest.bin`,
mapped into memory; other processes on the machine (the API's workers, any number of
readers) map the same file and read it without a round trip to the ingest and without ever
blocking it: the kdb+tick shape, where the tickerplant publishes and other processes answer.

Layout, in native byte order, every field at an offset aligned to its size:

    header  4096 bytes. Written once before the file is visible: magic, LAYOUT_VERSION, a
            byte-order mark, sizes and offsets, a signature of TICK_COLUMNS' names and types,
            the writer's pid, pid namespace and start token (16 random bytes, new for every
            writer). Then mutable 8-byte words (`_W_*`): state, key count, heartbeat,
            counters, status generation.
    keys    capacity entries of KEY_ENTRY bytes: entry i names slot i (u16 length, u16 0,
            u32 crc32 of the key, the key in UTF-8, at most MAX_KEY_BYTES). Keys are
            appended, never moved or removed, and the key count is raised only after the
            new keys' slots hold their first tick: a reader caches key -> slot for good.
    slots   capacity slots of SLOT bytes: u64 seq, u32 crc32 of what follows, u32 None-mask,
            then the 22 columns after the key in TICK_COLUMNS order, 8 bytes each (int8 and
            timestamptz as signed integers, float8 as doubles; a None column is 0 with its
            bit set in the mask). Tick times stay integers (microseconds since 2000).
    status  two buffers, each: u64 seq, u64 published_at (Unix ns), u32 length, u32 crc32,
            8 bytes reserved, then the IngestStatus as JSON. The status generation word says
            which buffer holds the newest: generation n is in buffer n % 2.

Consistency: a seqlock per slot (and per status buffer). The writer makes the sequence odd,
writes the body and its crc32, then makes it even again; a reader loads the sequence, copies
the body, loads the sequence again, and uses the copy only when the two loads are equal and
even and the crc32 matches, else it retries, for at most `busy_timeout_s`, then reports the
slot busy (SlotBusy): a torn value is never served. Python's slice assignment to an mmap is
a memcpy, not atomic, so the sequence is a field of its own, 8-byte aligned, loaded and
stored through a memoryview cast to "Q": one 8-byte load or store, which is atomic on
x86-64 and ARMv8. The ordering assumption is x86-64's (stores become visible in program
order, loads are not reordered with loads); the writer's GIL keeps its stores in order
within the process, and no call between the odd and the even store lets CPython switch
threads there. On a weakly ordered CPU (ARM) the seqlock alone could let a mixed copy
through; the crc32 over the body catches that too, so the guarantee does not rest on the
memory model.

Restarts and liveness: a writer builds a complete file under a temporary name and renames
it over `latest.bin`, so a reader never sees a half-made header, and a mapped file is never
truncated under a reader (which would be SIGBUS). A reader notices the new inode on its next
call, maps the new file and sees the new start token. While it runs, the writer holds a
POSIX lock on `published/latest.lock`; a reader asks the kernel whether the lock is held
(F_GETLK, acquiring nothing), which works across pid namespaces (two containers sharing the
data volume) and is not fooled by a reused pid. A clean stop marks the file stopped.

Cost: the cache records which instruments changed (a dict store per tick); `publish_forever`
publishes those every PUBLISH_INTERVAL_S and the status every STATUS_INTERVAL_S, on the
ingest's event loop. Readers cost the writer nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import itertools
import json
import logging
import mmap
import os
import struct
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, is_dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

from store.tick import TICK_COLUMN_TYPES, TICK_COLUMNS, Tick

log = logging.getLogger(__name__)

MAGIC = b"TVLATEST"
LAYOUT_VERSION = 1
DEFAULT_CAPACITY = 50_000  # the cache's own bound: the F&O universe with its options
MAX_KEY_BYTES = 56
PUBLISH_INTERVAL_S = 0.025
STATUS_INTERVAL_S = 0.5
BUSY_TIMEOUT_S = 0.01  # a writer taken off the CPU mid-slot holds it for a time slice

HEADER_SIZE = 4096
KEY_ENTRY = 64
SLOT = 192
STATUS_HEAD = 32
_BOM = 0x01020304
_RUNNING, _STOPPED = 1, 2
STOPPED_BECAUSE = "stopped_because"  # the last status of an ingest that cannot run

# The static header, written once before the file is visible.
_HEADER = struct.Struct("=8sIIIIIIIIIIQQ16sQQQQQQQ")
_HEADER_FIELDS = (
    "magic",
    "version",
    "byte_order",
    "header_size",
    "capacity",
    "slot_size",
    "key_entry_size",
    "max_key_bytes",
    "columns",
    "columns_crc",
    "reserved",
    "pid",
    "pid_namespace",
    "start_token",
    "started_at_ns",
    "keys_offset",
    "slots_offset",
    "status_offset",
    "status_buffer_size",
    "file_size",
    "reserved2",
)
# The mutable header: 8-byte words from byte 256 on (index = byte offset / 8).
_W_STATE = 32
_W_KEY_COUNT = 33
_W_HEARTBEAT_NS = 34
_W_PUBLISHES = 35
_W_TICKS_PUBLISHED = 36
_W_KEYS_OVER_CAPACITY = 37
_W_KEYS_TOO_LONG = 38
_W_TICKS_REFUSED = 39
_W_STATUS_GENERATION = 40
_W_STATUS_TOO_LARGE = 41

_KEY_HEAD = struct.Struct("=HHI")


def _column_codes() -> str:
    codes = []
    for name, pg_type in list(TICK_COLUMN_TYPES.items())[1:]:
        if pg_type == "float8":
            codes.append("d")
        elif pg_type in ("int8", "timestamptz"):
            codes.append("q")
        else:  # a new column type needs a slot encoding (and a new LAYOUT_VERSION)
            raise RuntimeError(f"the published table cannot hold column {name} ({pg_type})")
    return "".join(codes)


_CODES = _column_codes()
_COLUMNS = len(_CODES)  # the columns after the key
_BODY = struct.Struct("=I" + _CODES)  # mask, columns
_PAYLOAD = 4 + _BODY.size  # crc, mask, columns: what follows a slot's seq
_COLUMNS_CRC = zlib.crc32(",".join(f"{n}:{t}" for n, t in TICK_COLUMN_TYPES.items()).encode())
assert 8 + _PAYLOAD == SLOT, "the slot layout changed: bump LAYOUT_VERSION"

# struct flock of Linux on x86-64 and aarch64: l_type, l_whence, l_start, l_len, l_pid.
_FLOCK = struct.Struct("@hhqqi4x")
# Open file description locks (Linux): owned by the open file, not the process, so another
# descriptor of the lock file closed in the writer's process (a reader there) does not drop
# it, and a reader in the writer's own process sees it held.
_OFD_LOCKS = sys.platform == "linux" and hasattr(fcntl, "F_OFD_GETLK")


def _lock(fd: int) -> None:
    """Hold the writer's lock on `fd` (the whole file), or raise OSError(EAGAIN/EACCES)."""
    if _OFD_LOCKS:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    else:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def published_path(data_dir: Path) -> Path:
    """The table of the ingest that runs on `data_dir` (`TICKVAULT_DATA_DIR`)."""
    return Path(data_dir) / "published" / "latest.bin"


def file_size(capacity: int, status_bytes: int | None = None) -> int:
    """Bytes of a table for `capacity` instruments (reserved on disk when it is made)."""
    return _sizes(capacity, status_bytes)[-1]


def _sizes(capacity: int, status_bytes: int | None) -> tuple[int, int, int, int, int]:
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1, got {capacity}")
    if status_bytes is None:
        # The status lists every subscribed symbol: room for a long one per instrument.
        status_bytes = 65_536 + 48 * capacity
    buffer = STATUS_HEAD + -(-status_bytes // 8) * 8
    keys = HEADER_SIZE
    slots = keys + -(-capacity * KEY_ENTRY // 4096) * 4096
    status = slots + -(-capacity * SLOT // 4096) * 4096
    end = status + 2 * buffer
    return keys, slots, status, buffer, -(-end // 4096) * 4096


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


class PublisherBusy(RuntimeError):
    """Another live writer publishes at this path."""


class IngestNotRunning(Exception):
    """No ingest publishes here now: none has, it stopped, or it is gone. The message says
    which, in one line (the API answers 503 with it)."""


class IncompatibleTable(IngestNotRunning):
    """The file is not a table this code can read (another layout version or tick shape)."""


class SlotBusy(Exception):
    """A slot (or the status) kept changing under every read for the whole busy budget.

    `keys` are the instruments that could not be read; `partial` holds what could.
    """

    def __init__(self, keys: list[str], partial: dict[str, Tick] | None = None) -> None:
        super().__init__(f"busy past the read budget: {', '.join(keys[:5])}")
        self.keys = keys
        self.partial = partial or {}


class _Layout:
    """How the ticks with None in the same columns are packed: a struct whose None columns
    are pad bytes (written as zeros), the mask of those columns, and getters for the values
    and for the columns that must be None."""

    __slots__ = ("mask", "nulls", "nulls_of", "pack", "values_of")

    def __init__(self, null_columns: tuple[int, ...]) -> None:
        fmt = ["=I"]
        mask = 0
        values = []
        for column, code in enumerate(_CODES, start=1):
            if column in null_columns:
                fmt.append("8x")
                mask |= 1 << (column - 1)
            else:
                fmt.append(code)
                values.append(column)
        self.pack = struct.Struct("".join(fmt)).pack
        self.mask = mask
        self.values_of = _getter(values)
        self.nulls_of = _getter(list(null_columns))
        self.nulls = (None,) * len(null_columns)


def _getter(columns: list[int]) -> Callable[[Tick], tuple[Any, ...]]:
    """A tuple of the tick's values in `columns`, in C where it can (itemgetter of one index
    gives the value alone, of none is refused)."""
    if len(columns) >= 2:
        return itemgetter(*columns)
    if len(columns) == 1:
        (column,) = columns
        return lambda tick: (tick[column],)
    return itemgetter(slice(0, 0))


class LatestTickPublisher:
    """The writer: `publish(ticks)` stores each instrument's tick in its slot, `publish_status`
    the IngestStatus. One per data directory (a second one raises PublisherBusy); not
    thread-safe: call it from one thread, the ingest's event loop.

    A key longer than MAX_KEY_BYTES in UTF-8, a key past `capacity` and a tick whose values
    do not fit its columns are counted (in the header, `counters()`), logged once per key,
    and skipped: the file never grows.
    """

    def __init__(
        self,
        path: Path | str,
        capacity: int = DEFAULT_CAPACITY,
        *,
        status_bytes: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.capacity = capacity
        keys_at, slots_at, status_at, buffer, size = _sizes(capacity, status_bytes)
        self.file_size = size
        self.start_token = uuid.uuid4().bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.path.with_suffix(".lock")
        temporary = self.path.with_name(
            f".{self.path.name}.{os.getpid()}.{self.start_token.hex()[:8]}.tmp"
        )
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        lock_fd = -1
        try:
            # The blocks now: a full disk fails here, not later as SIGBUS on a page write.
            os.posix_fallocate(fd, 0, size)
            self._mm = mmap.mmap(fd, size)
            _HEADER.pack_into(
                self._mm,
                0,
                MAGIC,
                LAYOUT_VERSION,
                _BOM,
                HEADER_SIZE,
                capacity,
                SLOT,
                KEY_ENTRY,
                MAX_KEY_BYTES,
                _COLUMNS,
                _COLUMNS_CRC,
                0,
                os.getpid(),
                _pid_namespace(),
                self.start_token,
                time.time_ns(),
                keys_at,
                slots_at,
                status_at,
                buffer,
                size,
                0,
            )
            self._words = memoryview(self._mm).cast("Q")
            self._halves = memoryview(self._mm).cast("I")
            self._words[_W_STATE] = _RUNNING
            self._words[_W_HEARTBEAT_NS] = time.time_ns()
            lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                _lock(lock_fd)
            except OSError as error:
                if error.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                raise PublisherBusy(
                    f"another ingest publishes at {self.path} (it holds {self._lock_path})"
                ) from None
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(Exception):
                self._release()
            if lock_fd >= 0:
                os.close(lock_fd)
            os.close(fd)
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        os.close(fd)  # the mapping keeps the file
        self._lock_fd = lock_fd
        self._keys_at = keys_at
        self._slots_at = slots_at
        self._status_at = status_at
        self._status_buffer = buffer
        # key -> [layout, seq, seq word, payload offset]; the seq is ours to keep (one writer).
        self._slots: dict[str, list[Any]] = {}
        self._layouts: dict[tuple[int, ...], _Layout] = {}
        self._refused: dict[str, str] = {}  # key -> why, bounded (see _refuse)
        self._status_seqs = [0, 0]
        self._status_generation = 0
        self.keys_over_capacity = 0
        self.keys_too_long = 0
        self.ticks_refused = 0
        self.ticks_published = 0
        self.status_too_large = 0
        self.closed = False
        log.info(
            "publishing the latest ticks at %s: %d instruments, %.1f MiB",
            self.path,
            capacity,
            size / 2**20,
        )

    # --- ticks -----------------------------------------------------------------------------

    def publish(self, ticks: Iterable[Tick]) -> int:
        """Store each tick in its instrument's slot (a later tick of the same key wins);
        returns how many were stored. Also beats the heartbeat."""
        words = self._words
        halves = self._halves
        mm = self._mm
        slots = self._slots
        crc32 = zlib.crc32
        added = False
        stored = 0
        for tick in ticks:
            entry = slots.get(tick[0])
            if entry is None:
                entry = self._add(tick)
                if entry is None:
                    continue
                added = True
            layout = entry[0]
            try:
                if layout.nulls_of(tick) != layout.nulls:
                    raise struct.error  # a column the layout writes as None has a value now
                payload = layout.pack(layout.mask, *layout.values_of(tick))
            except struct.error:  # ... or a value became None: the tick's own layout
                payload = self._repack(entry, tick)
                if payload is None:
                    continue
            crc = crc32(payload)
            seq = entry[1] + 1
            word = entry[2]
            start = entry[3]
            # From the odd store to the even one: no call, so no thread switch in between.
            words[word] = seq
            halves[word * 2 + 2] = crc
            mm[start : start + _BODY.size] = payload
            words[word] = seq + 1
            entry[1] = seq + 1
            stored += 1
        if added:
            words[_W_KEY_COUNT] = len(slots)  # after the new keys' first ticks
        self.ticks_published += stored
        words[_W_TICKS_PUBLISHED] = self.ticks_published
        words[_W_PUBLISHES] += 1
        words[_W_HEARTBEAT_NS] = time.time_ns()
        return stored

    def _add(self, tick: Tick) -> list[Any] | None:
        key = tick[0]
        if key in self._refused:
            self.ticks_refused += 1
            self._words[_W_TICKS_REFUSED] = self.ticks_refused
            return None
        try:
            encoded = key.encode()
        except (AttributeError, UnicodeEncodeError):
            return self._refuse(key, "the key is not a string of Unicode characters")
        if len(tick) != len(TICK_COLUMNS):
            return self._refuse(key, f"a tick of {len(tick)} columns, not {len(TICK_COLUMNS)}")
        if len(encoded) > MAX_KEY_BYTES:
            self.keys_too_long += 1
            self._words[_W_KEYS_TOO_LONG] = self.keys_too_long
            return self._refuse(key, f"the key is longer than {MAX_KEY_BYTES} bytes")
        index = len(self._slots)
        if index >= self.capacity:
            self.keys_over_capacity += 1
            self._words[_W_KEYS_OVER_CAPACITY] = self.keys_over_capacity
            return self._refuse(key, f"the table is full ({self.capacity} instruments)")
        at = self._keys_at + index * KEY_ENTRY
        _KEY_HEAD.pack_into(self._mm, at, len(encoded), 0, zlib.crc32(encoded))
        self._mm[at + _KEY_HEAD.size : at + _KEY_HEAD.size + len(encoded)] = encoded
        slot_at = self._slots_at + index * SLOT
        entry = [self._layout_of(tick), 0, slot_at // 8, slot_at + 12]
        self._slots[key] = entry
        return entry

    def _refuse(self, key: Any, why: str) -> None:
        self.ticks_refused += 1
        self._words[_W_TICKS_REFUSED] = self.ticks_refused
        if len(self._refused) < 100_000:  # remembered, so each key is logged once
            self._refused[key] = why
            log.warning("not published: %r: %s", key, why)
        return None

    def _layout_of(self, tick: Tick) -> _Layout:
        nulls = tuple(column for column in range(1, len(TICK_COLUMNS)) if tick[column] is None)
        layout = self._layouts.get(nulls)
        if layout is None:
            layout = self._layouts[nulls] = _Layout(nulls)
        return layout

    def _repack(self, entry: list[Any], tick: Tick) -> bytes | None:
        layout = entry[0] = self._layout_of(tick)
        try:
            return layout.pack(layout.mask, *layout.values_of(tick))
        except struct.error as error:
            self.ticks_refused += 1
            self._words[_W_TICKS_REFUSED] = self.ticks_refused
            if self.ticks_refused == 1 or self.ticks_refused % 10_000 == 0:
                log.error("a tick does not fit its columns (%s), not published: %r", error, tick)
            return None

    # --- status ----------------------------------------------------------------------------

    def publish_status(self, status: Any) -> bool:
        """Publish the IngestStatus (a dataclass, or a mapping) as JSON; False, counted and
        logged, when it does not fit its buffer (the previous one stays)."""
        data = asdict(status) if is_dataclass(status) else dict(status)
        body = json.dumps(data, separators=(",", ":"), default=str).encode()
        room = self._status_buffer - STATUS_HEAD
        if len(body) > room:
            self.status_too_large += 1
            self._words[_W_STATUS_TOO_LARGE] = self.status_too_large
            if self.status_too_large == 1:
                log.error(
                    "the status (%d bytes) exceeds its %d bytes: kept the last", len(body), room
                )
            return False
        generation = self._status_generation + 1
        buffer = generation % 2
        at = self._status_at + buffer * self._status_buffer
        word = at // 8
        seq = self._status_seqs[buffer] + 1
        words = self._words
        words[word] = seq
        words[word + 1] = time.time_ns()
        self._halves[word * 2 + 4] = len(body)
        self._halves[word * 2 + 5] = zlib.crc32(body)
        self._mm[at + STATUS_HEAD : at + STATUS_HEAD + len(body)] = body
        words[word] = seq + 1
        self._status_seqs[buffer] = seq + 1
        self._status_generation = generation
        words[_W_STATUS_GENERATION] = generation
        return True

    # --- the rest --------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return {
            "instruments": len(self._slots),
            "ticks_published": self.ticks_published,
            "keys_over_capacity": self.keys_over_capacity,
            "keys_too_long": self.keys_too_long,
            "ticks_refused": self.ticks_refused,
            "status_too_large": self.status_too_large,
        }

    def close(self, because: str | None = None) -> None:
        """Mark the table stopped (readers say so, and `because`, the reason of a stop that a
        restart cannot undo, when given) and let go of the file and its lock."""
        if self.closed:
            return
        self.closed = True
        if because is not None:
            self.publish_status({STOPPED_BECAUSE: because})
        self._words[_W_STATE] = _STOPPED
        self._release()
        os.close(self._lock_fd)  # releases the lock

    def _release(self) -> None:
        for name in ("_words", "_halves"):
            view = getattr(self, name, None)
            if view is not None:
                view.release()
        mm = getattr(self, "_mm", None)
        if mm is not None:
            mm.close()

    def __enter__(self) -> LatestTickPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def publish_stopped(path: Path, because: str) -> None:
    """Leave, for readers, a stopped table that says why the ingest cannot run (nothing
    when another ingest publishes there: its table stands)."""
    with contextlib.suppress(PublisherBusy):
        LatestTickPublisher(path, capacity=1).close(because)


async def publish_forever(
    path: Path,
    take_changed: Callable[[], Mapping[str, Tick]],
    status: Callable[[], Any],
    *,
    capacity: int = DEFAULT_CAPACITY,
    interval_s: float = PUBLISH_INTERVAL_S,
    status_interval_s: float = STATUS_INTERVAL_S,
) -> None:
    """The ingest's publishing task: the instruments changed since the last round every
    `interval_s`, the status every `status_interval_s`; cancel it to stop (the table is
    then marked stopped). Runs on the event loop that feeds the cache."""
    publisher = LatestTickPublisher(path, capacity)
    try:
        next_status = 0.0
        while True:
            publisher.publish(take_changed().values())
            now = time.monotonic()
            if now >= next_status:
                publisher.publish_status(status())
                next_status = now + status_interval_s
            await asyncio.sleep(interval_s)
    finally:
        publisher.close()


# --- readers -------------------------------------------------------------------------------


class _Mapping:
    """One mapped table file: its static header and the key directory read so far."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            stat = os.fstat(fd)
            self.ident = (stat.st_dev, stat.st_ino)
            if stat.st_size < HEADER_SIZE:
                raise IncompatibleTable(f"{path} is not a published tick table (too short)")
            self.mm = mmap.mmap(fd, stat.st_size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        header = dict(zip(_HEADER_FIELDS, _HEADER.unpack_from(self.mm, 0), strict=True))
        problem = None
        if header["magic"] != MAGIC:
            problem = "is not a published tick table"
        elif header["version"] != LAYOUT_VERSION or header["byte_order"] != _BOM:
            problem = f"has layout {header['version']}, this code reads {LAYOUT_VERSION}"
        elif header["columns_crc"] != _COLUMNS_CRC or header["slot_size"] != SLOT:
            problem = "holds ticks of other columns than this code's TICK_COLUMNS"
        elif header["file_size"] != stat.st_size:
            problem = "is not of the size its header says"
        if problem is not None:
            self.mm.close()
            raise IncompatibleTable(f"{path} {problem}")
        self.header = header
        self.pid = header["pid"]
        self.start_token = header["start_token"].hex()
        self.words = memoryview(self.mm).cast("Q")
        self.halves = memoryview(self.mm).cast("I")
        self.keys: dict[str, int] = {}
        self.known = 0  # directory entries read

    def slot_of(self, key: str) -> int | None:
        index = self.keys.get(key)
        if index is None and self.known < self.words[_W_KEY_COUNT]:
            self.read_directory()
            index = self.keys.get(key)
        return index

    def read_directory(self) -> None:
        count = min(self.words[_W_KEY_COUNT], self.header["capacity"])
        base = self.header["keys_offset"]
        mm = self.mm
        while self.known < count:
            at = base + self.known * KEY_ENTRY
            length, _, crc = _KEY_HEAD.unpack_from(mm, at)
            encoded = mm[at + _KEY_HEAD.size : at + _KEY_HEAD.size + length]
            if length > MAX_KEY_BYTES or zlib.crc32(encoded) != crc:
                return  # not visible whole yet (never on x86): the next call reads it
            self.keys[encoded.decode()] = self.known
            self.known += 1

    def close(self) -> None:
        self.words.release()
        self.halves.release()
        self.mm.close()


class LatestTickReader:
    """A reader of the table at `path` (`published_path(data_dir)`), for any process.

    `latest(keys)` gives the newest tick of each key that has one, as the same tuple the
    ingest's cache holds; `status()` the newest IngestStatus as a dict. Both raise
    IngestNotRunning when no ingest publishes there (no file, stopped, or gone), and SlotBusy
    when a value kept changing under every read for `busy_timeout_s`. A restarted ingest is
    followed by itself (`start_token` changes). Cheap to call: a stat and a lock query, then
    memory reads; not thread-safe (one per thread).
    """

    def __init__(self, path: Path | str, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.retries = 0  # reads repeated because the slot changed under them
        self.busy = 0  # reads given up
        self._table: _Mapping | None = None
        self._lock_fd = -1
        self._pid_namespace = _pid_namespace()

    @property
    def start_token(self) -> str:
        """The running writer's start token (hex): a new one means the ingest restarted."""
        return self._current().start_token

    def latest(self, keys: Iterable[str]) -> dict[str, Tick]:
        table = self._current()
        found: dict[str, Tick] = {}
        busy: list[str] = []
        for key in keys:
            index = table.slot_of(key)
            if index is None:
                continue
            tick = self._read_slot(table, key, index)
            if tick is _BUSY:
                busy.append(key)
            elif tick is not None:
                found[key] = tick
        if busy:
            raise SlotBusy(busy, found)
        return found

    def keys(self) -> list[str]:
        """Every instrument key published, in slot order."""
        table = self._current()
        table.read_directory()
        return list(table.keys)

    def status(self) -> dict[str, Any] | None:
        """The newest published IngestStatus as a dict (None before the first)."""
        table = self._current()
        read = self._read_status(table)
        return None if read is None else json.loads(read[1])

    def info(self) -> dict[str, Any]:
        """The writer and the table: pid, start token, sizes, counters, ages in seconds."""
        table = self._current()
        words = table.words
        header = table.header
        now = time.time_ns()
        status = self._read_status(table)
        return {
            "path": str(self.path),
            "pid": table.pid,
            "start_token": table.start_token,
            "started_at": header["started_at_ns"] / 1e9,
            "capacity": header["capacity"],
            "file_size": header["file_size"],
            "instruments": words[_W_KEY_COUNT],
            "heartbeat_age_s": (now - words[_W_HEARTBEAT_NS]) / 1e9,
            "publishes": words[_W_PUBLISHES],
            "ticks_published": words[_W_TICKS_PUBLISHED],
            "keys_over_capacity": words[_W_KEYS_OVER_CAPACITY],
            "keys_too_long": words[_W_KEYS_TOO_LONG],
            "ticks_refused": words[_W_TICKS_REFUSED],
            "status_too_large": words[_W_STATUS_TOO_LARGE],
            "status_age_s": None if status is None else (now - status[0]) / 1e9,
        }

    def close(self) -> None:
        if self._table is not None:
            self._table.close()
            self._table = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> LatestTickReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- inside ----------------------------------------------------------------------------

    def _current(self) -> _Mapping:
        """The mapping of the file at the path now, checked to have a live writer."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self.close()
            raise IngestNotRunning(
                f"no ingest has published here: {self.path} does not exist"
            ) from None
        table = self._table
        if table is None or table.ident != (stat.st_dev, stat.st_ino):
            if table is not None:
                table.close()
                self._table = None
            try:
                table = _Mapping(self.path)
            except FileNotFoundError:
                raise IngestNotRunning(
                    f"no ingest has published here: {self.path} does not exist"
                ) from None
            self._table = table
        if table.words[_W_STATE] == _STOPPED:
            because = _stopped_because(self._read_status(table))
            raise IngestNotRunning(
                f"the ingest (pid {table.pid}) has stopped" + (f": {because}" if because else "")
            )
        if not self._writer_alive(table):
            raise IngestNotRunning(
                f"the ingest (pid {table.pid}) is gone: it ended without stopping (killed?)"
            )
        return table

    def _writer_alive(self, table: _Mapping) -> bool:
        if _OFD_LOCKS:
            try:
                return self._lock_held()
            except OSError:
                pass
        if table.header["pid_namespace"] != self._pid_namespace:
            return True  # nothing better to ask: the heartbeat (info()) tells the rest
        try:
            os.kill(table.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _lock_held(self) -> bool:
        if self._lock_fd < 0:
            self._lock_fd = os.open(self.path.with_suffix(".lock"), os.O_RDONLY | os.O_CLOEXEC)
        query = _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
        answer = fcntl.fcntl(self._lock_fd, fcntl.F_OFD_GETLK, query)
        return _FLOCK.unpack(answer)[0] != fcntl.F_UNLCK

    def _read_slot(self, table: _Mapping, key: str, index: int) -> Tick | object | None:
        word = (table.header["slots_offset"] + index * SLOT) // 8
        start = word * 8 + 8
        end = start + _PAYLOAD
        words = table.words
        mm = table.mm
        deadline = 0.0
        for attempt in itertools.count():
            seq = words[word]
            if not seq & 1:
                raw = mm[start:end]
                if words[word] == seq:
                    if seq == 0:
                        return None  # never written (a key is listed after its first tick)
                    if zlib.crc32(raw[4:]) == int.from_bytes(raw[:4], sys.byteorder):
                        return _decode(key, raw)
            self.retries += 1
            if attempt >= 100:  # spun enough: the writer may be off the CPU
                if not deadline:
                    deadline = time.monotonic() + self.busy_timeout_s
                elif time.monotonic() > deadline:
                    self.busy += 1
                    return _BUSY
                time.sleep(0 if attempt < 1000 else 0.0001)
        raise AssertionError("unreachable")

    def _read_status(self, table: _Mapping) -> tuple[int, bytes] | None:
        words = table.words
        deadline = 0.0
        for attempt in itertools.count():
            generation = words[_W_STATUS_GENERATION]
            if generation == 0:
                return None
            at = (
                table.header["status_offset"]
                + (generation % 2) * table.header["status_buffer_size"]
            )
            word = at // 8
            seq = words[word]
            if not seq & 1:
                published_at = words[word + 1]
                length = table.halves[word * 2 + 4]
                crc = table.halves[word * 2 + 5]
                if length <= table.header["status_buffer_size"] - STATUS_HEAD:
                    body = table.mm[at + STATUS_HEAD : at + STATUS_HEAD + length]
                    if words[word] == seq and zlib.crc32(body) == crc:
                        return published_at, body
            self.retries += 1
            if attempt >= 100:
                if not deadline:
                    deadline = time.monotonic() + self.busy_timeout_s
                elif time.monotonic() > deadline:
                    self.busy += 1
                    raise SlotBusy(["(status)"])
                time.sleep(0 if attempt < 1000 else 0.0001)
        raise AssertionError("unreachable")


_BUSY = object()


def _stopped_because(status: tuple[int, bytes] | None) -> str | None:
    """The reason a stopped ingest left as its last status, if it left one."""
    if status is None or not status[1].startswith(b'{"' + STOPPED_BECAUSE.encode()):
        return None  # a running ingest's last status: not parsed (megabytes, for a universe)
    because = json.loads(status[1]).get(STOPPED_BECAUSE)
    return str(because) if because else None


def _decode(key: str, raw: bytes) -> Tick:
    mask, *values = _BODY.unpack_from(raw, 4)
    if mask:
        for column in range(_COLUMNS):
            if mask >> column & 1:
                values[column] = None
    return (key, *values)
