"""The readers of the latest-tick table (latest_table.py has its layout and rules): any process
on the machine maps the file and reads a slot or the status without ever blocking the ingest."""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import mmap
import os
import sys
import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ingest.channels.latest_table import (
    BOM,
    BUSY_TIMEOUT_S,
    FLOCK,
    HEADER,
    HEADER_FIELDS,
    HEADER_SIZE,
    KEY_ENTRY,
    KEY_HEAD,
    LAYOUT_VERSION,
    MAGIC,
    MAX_KEY_BYTES,
    OFD_LOCKS,
    STATUS_HEAD,
    STOPPED,
    STOPPED_BECAUSE,
    TICKS,
    W_HEARTBEAT_NS,
    W_KEY_COUNT,
    W_KEYS_OVER_CAPACITY,
    W_KEYS_TOO_LONG,
    W_PUBLISHES,
    W_STATE,
    W_STATUS_GENERATION,
    W_STATUS_TOO_LARGE,
    W_TICKS_PUBLISHED,
    W_TICKS_REFUSED,
    IncompatibleTable,
    IngestNotRunning,
    Shape,
    SlotBusy,
    pid_namespace,
)
from store.tick_row import Tick

log = logging.getLogger(__name__)


class _Mapping:
    """One mapped table file: its static header and the key directory read so far."""

    def __init__(self, path: Path, shape: Shape) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            stat = os.fstat(fd)
            self.ident = (stat.st_dev, stat.st_ino)
            if stat.st_size < HEADER_SIZE:
                raise IncompatibleTable(f"{path} is not a published tick table (too short)")
            self.mm = mmap.mmap(fd, stat.st_size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        header = dict(zip(HEADER_FIELDS, HEADER.unpack_from(self.mm, 0), strict=True))
        problem = None
        if header["magic"] != MAGIC:
            problem = "is not a published tick table"
        elif header["version"] != LAYOUT_VERSION or header["byte_order"] != BOM:
            problem = f"has layout {header['version']}, this code reads {LAYOUT_VERSION}"
        elif header["columns_crc"] != shape.columns_crc or header["slot_size"] != shape.slot:
            problem = f"holds rows of other columns than this code's {shape.name} columns"
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
        self.names: list[str] = []  # the keys in slot order
        self.known = 0  # directory entries read

    def slot_of(self, key: str) -> int | None:
        index = self.keys.get(key)
        if index is None and self.known < self.words[W_KEY_COUNT]:
            self.read_directory()
            index = self.keys.get(key)
        return index

    def read_directory(self) -> None:
        count = min(self.words[W_KEY_COUNT], self.header["capacity"])
        base = self.header["keys_offset"]
        mm = self.mm
        while self.known < count:
            at = base + self.known * KEY_ENTRY
            length, _, crc = KEY_HEAD.unpack_from(mm, at)
            encoded = mm[at + KEY_HEAD.size : at + KEY_HEAD.size + length]
            if length > MAX_KEY_BYTES or zlib.crc32(encoded) != crc:
                return  # not visible whole yet (never on x86): the next call reads it
            key = encoded.decode()
            self.keys[key] = self.known
            self.names.append(key)
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

    def __init__(
        self,
        path: Path | str,
        *,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
        shape: Shape = TICKS,
    ) -> None:
        self.path = Path(path)
        self.shape = shape
        self.busy_timeout_s = busy_timeout_s
        self.retries = 0  # reads repeated because the slot changed under them
        self.busy = 0  # reads given up
        self._table: _Mapping | None = None
        self._lock_fd = -1
        self._pid_namespace = pid_namespace()

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

    def changes(self, seqs: list[int]) -> tuple[list[int], dict[str, Tick]]:
        """What changed since a previous call: (the slots' sequence numbers now, the rows of
        the slots whose number differs from `seqs`, that call's first value; [] reads every
        row). One strided copy of the sequence words, then only the changed slots are read:
        a follower that polls costs what changed, not the table. A slot busy past the budget
        is left out and read again next time. Pass [] after `start_token` changed."""
        table = self._current()
        table.read_directory()
        stride = self.shape.slot // 8
        first = table.header["slots_offset"] // 8
        now = table.words[first : first + table.known * stride : stride].tolist()
        names = table.names
        rows: dict[str, Tick] = {}
        before = len(seqs)
        for index, seq in enumerate(now):
            if index < before and seqs[index] == seq:
                continue
            key = names[index]
            row = self._read_slot(table, key, index)
            if row is _BUSY:
                now[index] = -1
            elif row is not None:
                rows[key] = row
        return now, rows

    def ticks_published(self) -> int:
        """How many ticks the writer has published so far: a follower that sees it move knows
        a publish stored something, for the price of one memory read (and `_current`'s stat)."""
        return self._current().words[W_TICKS_PUBLISHED]

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
            "instruments": words[W_KEY_COUNT],
            "heartbeat_age_s": (now - words[W_HEARTBEAT_NS]) / 1e9,
            "publishes": words[W_PUBLISHES],
            "ticks_published": words[W_TICKS_PUBLISHED],
            "keys_over_capacity": words[W_KEYS_OVER_CAPACITY],
            "keys_too_long": words[W_KEYS_TOO_LONG],
            "ticks_refused": words[W_TICKS_REFUSED],
            "status_too_large": words[W_STATUS_TOO_LARGE],
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
                table = _Mapping(self.path, self.shape)
            except FileNotFoundError:
                raise IngestNotRunning(
                    f"no ingest has published here: {self.path} does not exist"
                ) from None
            self._table = table
        if table.words[W_STATE] == STOPPED:
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
        if OFD_LOCKS:
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
        query = FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
        answer = fcntl.fcntl(self._lock_fd, fcntl.F_OFD_GETLK, query)
        return FLOCK.unpack(answer)[0] != fcntl.F_UNLCK

    def _read_slot(self, table: _Mapping, key: str, index: int) -> Tick | object | None:
        shape = self.shape
        word = (table.header["slots_offset"] + index * shape.slot) // 8
        start = word * 8 + 8
        end = start + shape.payload
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
                        return shape.row(key, raw, 4)
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
            generation = words[W_STATUS_GENERATION]
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
