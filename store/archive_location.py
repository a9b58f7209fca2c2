"""Where the Parquet archive lives: a pyarrow filesystem and the archive's root inside it.

The data directory's disk and S3-compatible object storage are both a `pyarrow.fs`
filesystem, so store/archive.py writes, reads back and checks a day through one code path and
differs in one step only: how a day is made visible at once (a renamed directory on disk, the
manifest written last on object storage; see `archive_day`).

An `s3://bucket/prefix` root takes its credentials, region and endpoint from the variables
every AWS tool reads (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION or
AWS_DEFAULT_REGION, AWS_ENDPOINT_URL for MinIO, Ceph, R2 or the tests' server), never from the
URL: so no secret is part of the name that messages and logs carry (`url`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from core.config import archive_url_problem


@dataclass(frozen=True)
class ArchiveLocation:
    """The archive's root: `base` inside `filesystem`, named `url` in messages."""

    filesystem: pafs.FileSystem
    base: str
    url: str

    @property
    def local(self) -> bool:
        """On this machine's disk, where a directory can be renamed into place."""
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        """The filesystem's path of `parts` under the root."""
        return "/".join([self.base, *parts])

    def name(self, path: str) -> str:
        """How a message names `path` (a path under the root): the URL a user would type."""
        return self.url + path[len(self.base) :]


def archive_location(root: ArchiveLocation | Path | str) -> ArchiveLocation:
    """The location of `root`: a directory (a Path, or a string without a scheme) or an
    `s3://bucket/prefix` URL. Raises ValueError naming what is wrong with a URL."""
    if isinstance(root, ArchiveLocation):
        return root
    if isinstance(root, Path) or "://" not in root:
        directory = Path(root).absolute()
        return ArchiveLocation(pafs.LocalFileSystem(), directory.as_posix(), str(directory))
    problem = archive_url_problem(root)
    if problem is not None:
        raise ValueError(f"the archive URL {problem}")
    filesystem, base = pafs.FileSystem.from_uri(root)
    base = base.rstrip("/")
    return ArchiveLocation(filesystem, base, f"s3://{base}")
