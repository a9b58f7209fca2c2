"""Small real file systems for the tests of what happens when a disk fills up."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's syntax, "2m") mounted at path, unmounted afterwards.

    Mounting needs root (CI runs as root); elsewhere the test skips and says why.
    """
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill_disk(directory: Path, leave_bytes: int = 0) -> Path:
    """Write a file that takes all the space of directory's file system but leave_bytes."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError:
            pass
    if leave_bytes:
        size = filler.stat().st_size
        with filler.open("r+b") as out:
            out.truncate(max(0, size - leave_bytes))
    return filler
