"""The writer of the latest-tick table (latest_table.py has its layout and rules): the ingest
publishes each changed instrument's slot and its status, never blocking on a reader."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import is_dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson

from ingest.channels.latest_table import (
    DEFAULT_CAPACITY,
    KEY_ENTRY,
    KEY_HEAD,
    MAX_KEY_BYTES,
    PUBLISH_INTERVAL_S,
    STATUS_HEAD,
    STATUS_INTERVAL_S,
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
    PublisherBusy,
    Shape,
    sizes,
)
from ingest.channels.table_file import create_table
from store.tick_row import Tick

try:
    from ingest.channels._slots import write_bodies, write_slots
except ImportError:  # not built: no C compiler at install time
    write_bodies = write_slots = None
    SLOTS_IMPLEMENTATION = "python"
else:
    SLOTS_IMPLEMENTATION = "compiled"

log = logging.getLogger(__name__)

# The rows changed since the last round as a writer that keeps them in C hands them over (the
# forming bars, ingest/_minute_bars.pyx): keys, their slot bodies packed one after another
# (each the shape's `body`: the mask of None columns, then the columns), and the rows it left
# for the publisher to pack.
PackedRows = tuple[list[str], bytes, list[Tick]]


class _Layout:
    """How the ticks with None in the same columns are packed: a struct whose None columns
    are pad bytes (written as zeros), the mask of those columns, and getters for the values
    and for the columns that must be None."""

    __slots__ = ("mask", "nulls", "nulls_of", "pack", "values_of")

    def __init__(self, null_columns: tuple[int, ...], codes: str) -> None:
        fmt = ["=I"]
        mask = 0
        values = []
        for column, code in enumerate(codes, start=1):
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
    """The writer: `publish(ticks)` stores each instrument's tick (or, for another `shape`,
    its row of that shape) in its slot, `publish_status` the IngestStatus. One per path (a
    second one raises PublisherBusy); not thread-safe: call it from one thread, the
    ingest's event loop.

    Slots are written by the compiled writer where it is built (`SLOTS_IMPLEMENTATION`),
    else by the reference; a subclass with `_write_slots = _write_bodies = None` is the
    reference alone.

    A key longer than MAX_KEY_BYTES in UTF-8, a key past `capacity` and a tick whose values
    do not fit its columns are counted (in the header, `counters()`), logged once per key,
    and skipped: the file never grows.
    """

    _write_slots: Callable[..., tuple[int, int]] | None = (
        None if write_slots is None else staticmethod(write_slots)
    )
    _write_bodies: Callable[..., tuple[int, int]] | None = (
        None if write_bodies is None else staticmethod(write_bodies)
    )

    def __init__(
        self,
        path: Path | str,
        capacity: int = DEFAULT_CAPACITY,
        *,
        status_bytes: int | None = None,
        shape: Shape = TICKS,
    ) -> None:
        self.path = Path(path)
        self.capacity = capacity
        self.shape = shape
        self._codes = shape.codes.encode()
        areas = sizes(capacity, status_bytes, shape)
        keys_at, slots_at, status_at, buffer, size = areas
        self.file_size = size
        self.start_token = uuid.uuid4().bytes
        self._mm, lock_fd = create_table(self.path, capacity, shape, self.start_token, areas)
        self._words = memoryview(self._mm).cast("Q")
        self._halves = memoryview(self._mm).cast("I")
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
        return self._published(self._store_rows(ticks if type(ticks) is list else list(ticks)))

    def publish_packed(self, packed: PackedRows) -> int:
        """`publish` for rows handed over packed (`PackedRows`): each body is copied to its
        key's slot as it is; a key's first row (and each one, where the slot writer is not
        built) goes through the reference, unpacked."""
        keys, bodies, rows = packed
        size = self.shape.body.size
        stored = 0
        at = 0
        end = len(keys)
        while at < end:
            if self._write_bodies is not None:
                at, written = self._write_bodies(self._mm, self._slots, keys, bodies, at, size)
                stored += written
                if at == end:
                    break
            stored += self._publish_one(self.shape.row(keys[at], bodies, at * size))
            at += 1
        return self._published(stored + self._store_rows(rows))

    def _store_rows(self, rows: list[Tick]) -> int:
        """The rows to their slots; how many were stored. The compiled writer (`_slots.pyx`),
        where it is built, writes the rows it can and hands back the first one it leaves to
        the reference (`_publish_one`), so rows are written in order whichever way each goes."""
        stored = 0
        at = 0
        end = len(rows)
        while at < end:
            if self._write_slots is not None:
                at, written = self._write_slots(self._mm, self._slots, rows, at, self._codes)
                stored += written
                if at == end:
                    break
            stored += self._publish_one(rows[at])
            at += 1
        return stored

    def publish_changed(self, changed: Mapping[str, Tick] | PackedRows) -> int:
        """The rows a `publish_forever` round takes: a mapping of key -> row, or packed."""
        if isinstance(changed, tuple):
            return self.publish_packed(changed)
        return self.publish(changed.values())

    def _published(self, stored: int) -> int:
        """Count a round's stored rows and beat the heartbeat; `stored`."""
        words = self._words
        if len(self._slots) != words[W_KEY_COUNT]:
            words[W_KEY_COUNT] = len(self._slots)  # after the new keys' first ticks
        self.ticks_published += stored
        words[W_TICKS_PUBLISHED] = self.ticks_published
        words[W_PUBLISHES] += 1
        words[W_HEARTBEAT_NS] = time.time_ns()
        return stored

    def _publish_one(self, tick: Tick) -> int:
        """The reference: one tick to its slot (1), or refused and counted (0)."""
        entry = self._slots.get(tick[0])
        if entry is None:
            entry = self._add(tick)
            if entry is None:
                return 0
        layout = entry[0]
        try:
            if layout.nulls_of(tick) != layout.nulls:
                raise struct.error  # a column the layout writes as None has a value now
            payload = layout.pack(layout.mask, *layout.values_of(tick))
        except struct.error:  # ... or a value became None: the tick's own layout
            payload = self._repack(entry, tick)
            if payload is None:
                return 0
        crc = zlib.crc32(payload)
        seq = entry[1] + 1
        word = entry[2]
        start = entry[3]
        # From the odd store to the even one: no call, so no thread switch in between.
        self._words[word] = seq
        self._halves[word * 2 + 2] = crc
        self._mm[start : start + len(payload)] = payload
        self._words[word] = seq + 1
        entry[1] = seq + 1
        return 1

    def _add(self, tick: Tick) -> list[Any] | None:
        key = tick[0]
        if key in self._refused:
            self.ticks_refused += 1
            self._words[W_TICKS_REFUSED] = self.ticks_refused
            return None
        try:
            encoded = key.encode()
        except (AttributeError, UnicodeEncodeError):
            return self._refuse(key, "the key is not a string of Unicode characters")
        width = self.shape.columns + 1
        if len(tick) != width:
            return self._refuse(key, f"a row of {len(tick)} columns, not {width}")
        if len(encoded) > MAX_KEY_BYTES:
            self.keys_too_long += 1
            self._words[W_KEYS_TOO_LONG] = self.keys_too_long
            return self._refuse(key, f"the key is longer than {MAX_KEY_BYTES} bytes")
        index = len(self._slots)
        if index >= self.capacity:
            self.keys_over_capacity += 1
            self._words[W_KEYS_OVER_CAPACITY] = self.keys_over_capacity
            return self._refuse(key, f"the table is full ({self.capacity} instruments)")
        at = self._keys_at + index * KEY_ENTRY
        KEY_HEAD.pack_into(self._mm, at, len(encoded), 0, zlib.crc32(encoded))
        self._mm[at + KEY_HEAD.size : at + KEY_HEAD.size + len(encoded)] = encoded
        slot_at = self._slots_at + index * self.shape.slot
        entry = [self._layout_of(tick), 0, slot_at // 8, slot_at + 12]
        self._slots[key] = entry
        return entry

    def _refuse(self, key: Any, why: str) -> None:
        self.ticks_refused += 1
        self._words[W_TICKS_REFUSED] = self.ticks_refused
        if len(self._refused) < 100_000:  # remembered, so each key is logged once
            self._refused[key] = why
            log.warning("not published: %r: %s", key, why)
        return None

    def _layout_of(self, tick: Tick) -> _Layout:
        width = self.shape.columns + 1
        nulls = tuple(column for column in range(1, width) if tick[column] is None)
        layout = self._layouts.get(nulls)
        if layout is None:
            layout = self._layouts[nulls] = _Layout(nulls, self.shape.codes)
        return layout

    def _repack(self, entry: list[Any], tick: Tick) -> bytes | None:
        layout = entry[0] = self._layout_of(tick)
        try:
            return layout.pack(layout.mask, *layout.values_of(tick))
        except struct.error as error:
            self.ticks_refused += 1
            self._words[W_TICKS_REFUSED] = self.ticks_refused
            if self.ticks_refused == 1 or self.ticks_refused % 10_000 == 0:
                log.error("a tick does not fit its columns (%s), not published: %r", error, tick)
            return None

    # --- status ----------------------------------------------------------------------------

    def publish_status(self, status: Any) -> bool:
        """Publish the IngestStatus (a dataclass, or a mapping) as JSON; False, counted and
        logged, when it does not fit its buffer (the previous one stays)."""
        # orjson writes the dataclasses as they are: asdict's deep copy and json's encoder took
        # about 3% of the ingest's CPU at 20,000 ticks/s, for a status listing every symbol.
        body = orjson.dumps(status if is_dataclass(status) else dict(status), default=str)
        room = self._status_buffer - STATUS_HEAD
        if len(body) > room:
            self.status_too_large += 1
            self._words[W_STATUS_TOO_LARGE] = self.status_too_large
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
        words[W_STATUS_GENERATION] = generation
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
        self._words[W_STATE] = STOPPED
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
    take_changed: Callable[[], Mapping[str, Tick] | PackedRows],
    status: Callable[[], Any] | None,
    *,
    capacity: int = DEFAULT_CAPACITY,
    interval_s: float = PUBLISH_INTERVAL_S,
    status_interval_s: float = STATUS_INTERVAL_S,
    shape: Shape = TICKS,
) -> None:
    """The ingest's publishing task: the instruments changed since the last round every
    `interval_s`, the status (when given) every `status_interval_s`; cancel it to stop (the
    table is then marked stopped). Runs on the event loop that feeds `take_changed`."""
    status_bytes = None if status is not None else 64
    publisher = LatestTickPublisher(path, capacity, status_bytes=status_bytes, shape=shape)
    try:
        next_status = 0.0
        while True:
            publisher.publish_changed(take_changed())
            now = time.monotonic()
            if status is not None and now >= next_status:
                publisher.publish_status(status())
                next_status = now + status_interval_s
            await asyncio.sleep(interval_s)
    finally:
        publisher.close()
