"""The frame journal on a real directory, including a process really killed mid-append."""

from __future__ import annotations

import errno
import inspect
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ingest.journal import Journal, JournalCorrupt, JournalFull
from ingest.status import JournalStatus
from tests.disks import fill_disk, small_disk

HEADER = 28  # bytes before each frame
SMALL = {"segment_bytes": 1000, "max_bytes": 10_000}  # 100-byte frames: 8 records a segment
RECEIVED = 1_736_915_400_000_000


def frame(seq: int) -> bytes:
    """Frames of varied length that a reader can rebuild from the seq alone."""
    return seq.to_bytes(8, "big") * (1 + seq % 7) + b"x" * (seq % 13)


def fixed(seq: int) -> bytes:
    return seq.to_bytes(4, "big") * 25  # 100 bytes, so record offsets are easy to compute


def fill(journal: Journal, count: int, make=fixed) -> list[int]:
    return [journal.append(make(seq), RECEIVED + seq) for seq in range(1, count + 1)]


def segments(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("*.journal"))


def test_append_returns_seqs_and_replay_gives_frames_back(tmp_path: Path) -> None:
    with Journal(tmp_path / "j") as journal:
        assert fill(journal, 50, frame) == list(range(1, 51))
        replayed = list(journal.replay(0))
    assert replayed == [(seq, RECEIVED + seq, frame(seq)) for seq in range(1, 51)]


def test_reopen_keeps_the_id_and_continues_the_seq(tmp_path: Path) -> None:
    with Journal(tmp_path, **SMALL) as journal:
        fill(journal, 20)
        journal_id = journal.journal_id
    with Journal(tmp_path, **SMALL) as journal:
        assert journal.journal_id == journal_id
        assert len(journal_id) == 32
        assert journal.append(b"next", RECEIVED) == 21
        assert [seq for seq, _, _ in journal.replay(18)] == [19, 20, 21]


def test_replay_after_skips_committed_frames(tmp_path: Path) -> None:
    with Journal(tmp_path, **SMALL) as journal:
        fill(journal, 30)
        assert [seq for seq, _, _ in journal.replay(25)] == [26, 27, 28, 29, 30]
        assert list(journal.replay(30)) == []


def test_replay_stops_at_the_last_seq_of_its_call(tmp_path: Path) -> None:
    with Journal(tmp_path, **SMALL) as journal:
        fill(journal, 5)
        replay = journal.replay(0)
        journal.append(b"live", RECEIVED)
        assert [seq for seq, _, _ in replay] == [1, 2, 3, 4, 5]


def test_second_journal_on_a_directory_is_refused(tmp_path: Path) -> None:
    with Journal(tmp_path), pytest.raises(RuntimeError, match="in use"):
        Journal(tmp_path)


def test_rotation_and_mark_committed_delete_only_fully_committed_segments(
    tmp_path: Path,
) -> None:
    with Journal(tmp_path, **SMALL) as journal:
        fill(journal, 40)
        names = [f"{first:020d}.journal" for first in (1, 9, 17, 25, 33)]
        assert segments(tmp_path) == names

        journal.mark_committed(20)  # 17..24 is only partly committed
        assert segments(tmp_path) == names[2:]
        journal.mark_committed(40)  # everything, but 33..40 is the current segment
        assert segments(tmp_path) == names[4:]
        assert journal.status() == JournalStatus(
            journal_id=journal.journal_id,
            last_seq=40,
            committed_seq=40,
            backlog_frames=0,
            bytes_on_disk=8 * (HEADER + 100),
            bytes_appended=40 * (HEADER + 100),
            segments=1,
            max_bytes=10_000,
            torn_tail_bytes=0,
        )
        assert journal.append(b"after", RECEIVED) == 41
        with pytest.raises(ValueError, match=r"frames 21\.\.32 are no longer"):
            journal.replay(20)
        with pytest.raises(ValueError, match="ends at 41"):
            journal.mark_committed(42)


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(-10, id="short-frame"),
        pytest.param(-(HEADER + 100) + 5, id="short-header"),
        pytest.param(b"TVJ1\xff\xff", id="garbage-after"),
        pytest.param(b"\0" * 300, id="zeros-after"),
        pytest.param("flip-last-byte", id="bad-crc-at-end"),
    ],
)
def test_torn_tail_is_dropped_and_appends_continue(tmp_path: Path, tail: object) -> None:
    with Journal(tmp_path, **SMALL) as journal:
        fill(journal, 5)
    path = tmp_path / segments(tmp_path)[-1]
    data = path.read_bytes()
    if isinstance(tail, int):
        path.write_bytes(data[:tail])
    elif isinstance(tail, bytes):
        path.write_bytes(data + tail)
    else:
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    whole = 5 if isinstance(tail, bytes) else 4
    torn = path.stat().st_size - whole * (HEADER + 100)

    with Journal(tmp_path, **SMALL) as journal:
        assert journal.status().last_seq == whole
        assert journal.status().torn_tail_bytes == torn
        assert journal.append(b"new", RECEIVED) == whole + 1
    with Journal(tmp_path, **SMALL) as journal:
        replayed = list(journal.replay(0))
    assert replayed[:whole] == [(seq, RECEIVED + seq, fixed(seq)) for seq in range(1, whole + 1)]
    assert replayed[whole:] == [(whole + 1, RECEIVED, b"new")]


def test_corrupt_record_in_the_middle_of_the_newest_segment_fails_the_open(
    tmp_path: Path,
) -> None:
    with Journal(tmp_path, **SMALL) as journal:
        fill(journal, 5)
    path = tmp_path / segments(tmp_path)[-1]
    data = bytearray(path.read_bytes())
    data[2 * (HEADER + 100) + HEADER + 50] ^= 0xFF  # inside the frame of seq 3
    path.write_bytes(data)

    with pytest.raises(JournalCorrupt, match="bad CRC") as caught:
        Journal(tmp_path, **SMALL)
    assert (caught.value.path, caught.value.offset) == (path, 2 * (HEADER + 100))
    assert path.read_bytes() == data  # nothing was cut


def test_corrupt_record_in_an_older_segment_fails_the_replay(tmp_path: Path) -> None:
    with Journal(tmp_path, **SMALL) as journal:
        fill(journal, 20)
    path = tmp_path / segments(tmp_path)[1]  # seqs 9..16
    data = bytearray(path.read_bytes())
    data[3 * (HEADER + 100) + 1] ^= 0xFF  # the magic of seq 12
    path.write_bytes(data)

    with Journal(tmp_path, **SMALL) as journal:
        replayed = journal.replay(0)
        assert [next(replayed)[0] for _ in range(11)] == list(range(1, 12))
        with pytest.raises(JournalCorrupt, match="bad magic") as caught:
            next(replayed)
    assert (caught.value.path, caught.value.offset) == (path, 3 * (HEADER + 100))


def test_journal_full_refuses_frames_until_segments_are_committed(tmp_path: Path) -> None:
    with Journal(tmp_path, segment_bytes=1000, max_bytes=3000) as journal:
        with pytest.raises(JournalFull, match="committed up to seq 0 of 23") as caught:
            fill(journal, 30)
        assert "23 frames wait only here" in str(caught.value)
        assert journal.status().bytes_on_disk <= 3000
        assert [seq for seq, _, _ in journal.replay(0)] == list(range(1, 24))

        journal.mark_committed(10)  # frees the segment of seqs 1..8
        assert journal.append(fixed(24), RECEIVED) == 24
        assert segments(tmp_path) == [f"{first:020d}.journal" for first in (9, 17)]


def test_full_current_segment_is_let_go_once_all_committed(tmp_path: Path) -> None:
    with Journal(tmp_path, segment_bytes=10_000, max_bytes=1000) as journal:
        with pytest.raises(JournalFull):
            fill(journal, 10)
        journal.mark_committed(7)
        assert journal.append(fixed(8), RECEIVED) == 8
        assert segments(tmp_path) == [f"{8:020d}.journal"]
        assert list(journal.replay(7)) == [(8, RECEIVED, fixed(8))]


CHILD = f"""
import sys
from pathlib import Path
from ingest.journal import Journal
{inspect.getsource(frame)}
journal = Journal(Path(sys.argv[1]), segment_bytes=200_000)
seq = 1
while True:
    assert journal.append(frame(seq), seq) == seq
    print(seq, flush=True)
    seq += 1
"""


def test_sync_from_the_writer_thread_runs_beside_appends_and_rotations(tmp_path: Path) -> None:
    errors: list[Exception] = []
    appending = True

    def sync_until_done(journal: Journal) -> None:
        try:
            while appending:
                journal.sync()
        except Exception as error:  # reported by the assertion below
            errors.append(error)

    with Journal(tmp_path / "j", segment_bytes=1000, max_bytes=10**7) as journal:
        syncer = threading.Thread(target=sync_until_done, args=(journal,))
        syncer.start()
        try:
            seqs = fill(journal, 2000)  # 8 records a segment: 250 rotations
        finally:
            appending = False
            syncer.join()
        assert errors == []
        assert len(segments(tmp_path / "j")) == 250
        assert [seq for seq, _, _ in journal.replay(0)] == seqs
        journal.close()
        with pytest.raises(ValueError, match="closed"):
            journal.sync()


def test_frames_survive_sigkill_mid_append(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    printed = [int(child.stdout.readline()) for _ in range(5000)]
    child.send_signal(signal.SIGKILL)
    printed += [int(line) for line in child.stdout.read().split()]
    assert child.wait() == -signal.SIGKILL

    with Journal(tmp_path) as journal:
        replayed = list(journal.replay(0))
    assert printed == list(range(1, len(printed) + 1))
    assert len(replayed) >= len(printed)
    assert replayed == [(seq, seq, frame(seq)) for seq in range(1, len(replayed) + 1)]


def test_a_small_disk_never_fills_with_committed_frames(tmp_path: Path) -> None:
    """The default 64 MiB segment on a 2 MiB disk: segments size themselves to the space."""
    with small_disk(tmp_path / "disk", "2m") as disk, Journal(disk) as journal:
        for seq in range(1, 5001):  # 5,000 frames of 2 KiB: five times the disk
            assert journal.append(seq.to_bytes(4, "big") * 512, RECEIVED) == seq
            if seq % 50 == 0:
                journal.mark_committed(seq)
        assert journal.status().bytes_on_disk < 1024 * 1024


def test_a_disk_full_of_committed_frames_takes_frames_again_after_a_restart(
    tmp_path: Path,
) -> None:
    """The database was away until the journal filled the disk; after a restart it is back."""
    with small_disk(tmp_path / "disk", "1m") as disk:
        with Journal(disk) as journal, pytest.raises(JournalFull, match="the disk is full"):
            fill(journal, 100_000)
        with Journal(disk) as journal:
            last = journal.last_seq
            journal.mark_committed(last)  # the replayed backlog is written, then this
            for seq in range(last + 1, last + 5001):  # more than half the disk
                assert journal.append(fixed(seq), RECEIVED) == seq
            assert len(list(journal.replay(last))) == 5000


def test_a_disk_full_of_uncommitted_frames_refuses_and_loses_none(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "1m") as disk, Journal(disk) as journal:
        fill(journal, 10)
        filler = fill_disk(disk)
        with pytest.raises(JournalFull, match="the disk is full"):
            fill(journal, 100)  # what still fits the last page of the segment, then no more
        last = journal.last_seq
        assert [seq for seq, _, _ in journal.replay(0)] == list(range(1, last + 1))
        journal.mark_committed(last)  # the writer catches up: the journal lets its segment go
        assert journal.append(fixed(last + 1), RECEIVED) == last + 1
        filler.unlink()
        assert journal.append(fixed(last + 2), RECEIVED) == last + 2
        assert [seq for seq, _, _ in journal.replay(last)] == [last + 1, last + 2]


def test_a_refused_write_leaves_no_torn_record_and_uses_no_seq(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only remount mid-write: half a record is written, then every call fails."""
    real_write, real_ftruncate = os.write, os.ftruncate
    read_only = True

    def half_then_refuse(fd: int, data: bytes) -> int:
        if read_only:
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_write(fd, data)

    def refuse_while_read_only(fd: int, length: int) -> None:
        if read_only:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        real_ftruncate(fd, length)

    with Journal(tmp_path) as journal:
        fill(journal, 5)
        monkeypatch.setattr(os, "write", half_then_refuse)
        monkeypatch.setattr(os, "ftruncate", refuse_while_read_only)
        for _ in range(3):
            with pytest.raises(OSError, match="Read-only"):
                journal.append(fixed(6), RECEIVED)
        read_only = False
        assert journal.append(fixed(6), RECEIVED) == 6
        assert journal.append(fixed(7), RECEIVED) == 7
    with Journal(tmp_path) as reopened:
        assert reopened.torn_tail_bytes == 0
        assert [seq for seq, _, _ in reopened.replay(0)] == list(range(1, 8))


def test_frames_held_for_the_signals_stay_until_the_journal_needs_their_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Committed frames whose signals are not all stored are kept (ingest/signals.py), but
    never at the price of a new frame: a full journal lets go of them, saying so."""
    with Journal(tmp_path, segment_bytes=1000, max_bytes=3000) as journal:
        fill(journal, 20)
        journal.hold(4)
        journal.mark_committed(20)
        assert segments(tmp_path) == [f"{first:020d}.journal" for first in (1, 9, 17)]
        assert next(journal.replay(4))[0] == 5
        journal.hold(10)  # the signals of frames up to 10 are stored: the segment 1..8 goes
        assert segments(tmp_path) == [f"{first:020d}.journal" for first in (9, 17)]
        with caplog.at_level(logging.WARNING, logger="ingest.journal"):
            for seq in range(21, 40):  # more than max_bytes holds with 9..16 kept
                assert journal.append(fixed(seq), RECEIVED) == seq
                journal.mark_committed(seq)
    assert "frames 11..31 are let go of before all their signals are stored" in caplog.text
