"""The frame journal's files (ingest/journal.py): segment names, the record layout, and
reading records back, for a restart and for a replay.

Apart from the journal's bookkeeping (what is committed, held, full) so that the one place
that knows the bytes on disk is small enough to read whole. A segment is a file named by the
seq of its first record. A record is a header (magic, frame length, CRC-32 of seq +
received_at_us + frame, seq, received_at_us) and the frame.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

MAGIC = b"TVJ1"
HEADER = struct.Struct("<4sIIQq")  # magic, frame length, crc32, seq, received_at_us
_CRC_FROM = 12  # the CRC covers seq, received_at_us and the frame
_META = struct.Struct("<Qq")
SUFFIX = ".journal"


class JournalCorrupt(Exception):
    """A record that is neither valid nor a torn tail left by a crash."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt journal record at byte {offset}: {reason}")
        self.path = path
        self.offset = offset


def segment_path(directory: Path, first_seq: int) -> Path:
    return directory / f"{first_seq:020d}{SUFFIX}"


def encode_record(seq: int, received_at_us: int, frame: bytes) -> bytes:
    crc = zlib.crc32(frame, zlib.crc32(_META.pack(seq, received_at_us)))
    return HEADER.pack(MAGIC, len(frame), crc, seq, received_at_us) + frame


def _parse(data: bytes, offset: int) -> tuple[int, int, int] | str:
    """Return (seq, received_at_us, end) of the record at offset, or why it is not one."""
    if len(data) - offset < HEADER.size:
        return "short header"
    magic, length, crc, seq, received_at_us = HEADER.unpack_from(data, offset)
    end = offset + HEADER.size + length
    if magic != MAGIC:
        return "bad magic"
    if end > len(data):
        return "short frame"
    if zlib.crc32(memoryview(data)[offset + _CRC_FROM : end]) != crc:
        return "bad CRC"
    return seq, received_at_us, end


def records(path: Path, data: bytes, first_seq: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (seq, received_at_us, frame start, frame end) of every record of one segment."""
    offset, expected = 0, first_seq
    while offset < len(data):
        record = _parse(data, offset)
        if isinstance(record, str):
            raise JournalCorrupt(path, offset, record)
        seq, received_at_us, end = record
        if seq != expected:
            raise JournalCorrupt(path, offset, f"seq {seq} where {expected} was expected")
        yield seq, received_at_us, offset + HEADER.size, end
        offset, expected = end, expected + 1


def _valid_record_after(data: bytes, offset: int) -> bool:
    """Whether a valid record starts at or after offset: then offset is not a torn tail."""
    offset = data.find(MAGIC, offset)
    while offset >= 0:
        if not isinstance(_parse(data, offset), str):
            return True
        offset = data.find(MAGIC, offset + 1)
    return False


def cut_torn_tail(path: Path, first_seq: int) -> tuple[int, int]:
    """The last seq in the segment at `path` (first_seq - 1 when it has none) and the bytes
    of a record a crash tore at its end, cut off here. A corrupt record with a valid one
    after it is no torn tail: JournalCorrupt."""
    data = path.read_bytes()
    last_seq = first_seq - 1
    try:
        for seq, _, _, _ in records(path, data, first_seq):
            last_seq = seq
    except JournalCorrupt as exc:
        if _valid_record_after(data, exc.offset):
            raise
        os.truncate(path, exc.offset)
        return last_seq, len(data) - exc.offset
    return last_seq, 0


def read_segments(
    directory: Path, starts: list[int], after_seq: int, last_seq: int
) -> Iterator[tuple[int, int, bytes]]:
    """Yield (seq, received_at_us, frame) of the segments beginning at `starts`, in order,
    after `after_seq` and up to `last_seq`; a gap between two segments is JournalCorrupt."""
    expected = starts[0]
    for first_seq in starts:
        path = segment_path(directory, first_seq)
        if first_seq != expected:
            raise JournalCorrupt(path, 0, f"the previous segment ends at seq {expected - 1}")
        data = path.read_bytes()
        for seq, received_at_us, start, end in records(path, data, first_seq):
            if seq > last_seq:
                return
            if seq > after_seq:
                yield seq, received_at_us, data[start:end]
            expected = seq + 1
