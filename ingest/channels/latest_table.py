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

Shapes: a table's rows are of one Shape, a text key then 8-byte columns. The latest ticks
are TICKS (the slots described above); the forming 1-minute bars (`bars.bin`,
ingest/minute_bars.py) are BARS, in a table of their own with the same header, seqlock and
crc, and the shape's column signature in `columns_crc`, so a reader of one shape refuses
the other's file.

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

import fcntl
import logging
import os
import struct
import sys
import zlib
from pathlib import Path

from ingest.minute_bars import BAR_COLUMN_TYPES
from store.tick_row import TICK_COLUMN_TYPES, Tick

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
BOM = 0x01020304
RUNNING, STOPPED = 1, 2
STOPPED_BECAUSE = "stopped_because"  # the last status of an ingest that cannot run

# The static header, written once before the file is visible.
HEADER = struct.Struct("=8sIIIIIIIIIIQQ16sQQQQQQQ")
HEADER_FIELDS = (
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
W_STATE = 32
W_KEY_COUNT = 33
W_HEARTBEAT_NS = 34
W_PUBLISHES = 35
W_TICKS_PUBLISHED = 36
W_KEYS_OVER_CAPACITY = 37
W_KEYS_TOO_LONG = 38
W_TICKS_REFUSED = 39
W_STATUS_GENERATION = 40
W_STATUS_TOO_LARGE = 41

KEY_HEAD = struct.Struct("=HHI")


class Shape:
    """What a table's slots hold: a text key, then 8-byte columns (int8 and timestamptz as
    signed integers, float8 as doubles). The latest ticks are one shape (TICKS), the forming
    1-minute bars another (BARS, ingest/minute_bars.py): one seqlock, one crc, one reader and
    one writer for both, each table in its own file with the shape's signature in its header.
    """

    def __init__(self, name: str, column_types: dict[str, str]) -> None:
        self.name = name
        self.column_names = tuple(column_types)
        codes = []
        for column, pg_type in list(column_types.items())[1:]:
            if pg_type == "float8":
                codes.append("d")
            elif pg_type in ("int8", "timestamptz"):
                codes.append("q")
            else:  # a new column type needs a slot encoding (and a new LAYOUT_VERSION)
                raise RuntimeError(f"the published table cannot hold column {column} ({pg_type})")
        self.codes = "".join(codes)
        self.columns = len(self.codes)  # the columns after the key
        self.body = struct.Struct("=I" + self.codes)  # mask, columns
        self.payload = 4 + self.body.size  # crc, mask, columns: what follows a slot's seq
        self.slot = 8 + self.payload
        signature = ",".join(f"{n}:{t}" for n, t in column_types.items())
        self.columns_crc = zlib.crc32(signature.encode())

    def row(self, key: str, raw: bytes | memoryview, at: int = 0) -> Tick:
        """The row whose slot body (`body`) starts at raw[at]: a None for each masked column."""
        mask, *values = self.body.unpack_from(raw, at)
        if mask:
            for column in range(self.columns):
                if mask >> column & 1:
                    values[column] = None
        return (key, *values)


TICKS = Shape("tick", TICK_COLUMN_TYPES)
BARS = Shape("bar", BAR_COLUMN_TYPES)
# The tick table's layout under its long-standing names.
CODES = TICKS.codes
COLUMNS = TICKS.columns
BODY = TICKS.body
PAYLOAD = TICKS.payload
COLUMNS_CRC = TICKS.columns_crc
assert TICKS.slot == SLOT, "the slot layout changed: bump LAYOUT_VERSION"

# struct flock of Linux on x86-64 and aarch64: l_type, l_whence, l_start, l_len, l_pid.
FLOCK = struct.Struct("@hhqqi4x")
# Open file description locks (Linux): owned by the open file, not the process, so another
# descriptor of the lock file closed in the writer's process (a reader there) does not drop
# it, and a reader in the writer's own process sees it held.
OFD_LOCKS = sys.platform == "linux" and hasattr(fcntl, "F_OFD_GETLK")


def lock(fd: int) -> None:
    """Hold the writer's lock on `fd` (the whole file), or raise OSError(EAGAIN/EACCES)."""
    if OFD_LOCKS:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    else:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def published_path(data_dir: Path) -> Path:
    """The table of the ingest that runs on `data_dir` (`TICKVAULT_DATA_DIR`)."""
    return Path(data_dir) / "published" / "latest.bin"


def bars_path(data_dir: Path) -> Path:
    """The forming 1-minute bars of the ingest that runs on `data_dir` (shape BARS)."""
    return Path(data_dir) / "published" / "bars.bin"


def file_size(capacity: int, status_bytes: int | None = None, shape: Shape = TICKS) -> int:
    """Bytes of a table for `capacity` instruments (reserved on disk when it is made)."""
    return sizes(capacity, status_bytes, shape)[-1]


def sizes(
    capacity: int, status_bytes: int | None, shape: Shape = TICKS
) -> tuple[int, int, int, int, int]:
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1, got {capacity}")
    if status_bytes is None:
        # The status lists every subscribed symbol: room for a long one per instrument.
        status_bytes = 65_536 + 48 * capacity
    buffer = STATUS_HEAD + -(-status_bytes // 8) * 8
    keys = HEADER_SIZE
    slots = keys + -(-capacity * KEY_ENTRY // 4096) * 4096
    status = slots + -(-capacity * shape.slot // 4096) * 4096
    end = status + 2 * buffer
    return keys, slots, status, buffer, -(-end // 4096) * 4096


def pid_namespace() -> int:
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
