"""Make the TimescaleDB extension available to the local PostgreSQL.

Debian 12 does not package TimescaleDB; Debian 13 ("trixie") has its source (the Apache-2
edition). We fetch that source through apt with a private sources list, so the machine's own
apt configuration is never touched, build it with cmake against the installed PostgreSQL and
install it. Elsewhere we say what to do instead of guessing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from store.errors import StoreError
from store.local.postgres import PgInstall

SOURCE_SUITE = "trixie"
SOURCE_PACKAGE = "timescaledb"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
TRIXIE_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

NOT_POSSIBLE_HINT = (
    "Either run TimescaleDB with docker compose (`docker compose up -d db`, then "
    "export TICKVAULT_DATABASE_URL=postgresql://postgres:<password>@127.0.0.1:5432/tickvault), "
    "or install Timescale's package for your PostgreSQL (e.g. timescaledb-2-postgresql-{major})."
)


def install_timescaledb(pg: PgInstall, say: Callable[[str], None] = print) -> bool:
    """Install the extension where it is missing; return False when it was already there."""
    version = pg.timescaledb_version()
    if version is not None:
        say(f"TimescaleDB {version} is already installed for PostgreSQL {pg.major}: nothing to do")
        return False
    if os.geteuid() != 0:
        raise StoreError(
            "installing TimescaleDB needs root (it writes into PostgreSQL's directories). "
            "Run `sudo tickvault db install`. " + NOT_POSSIBLE_HINT.format(major=pg.major)
        )
    if not Path("/etc/debian_version").exists() or shutil.which("apt-get") is None:
        raise StoreError(
            "this is not a Debian system, so tickvault cannot build TimescaleDB itself. "
            + NOT_POSSIBLE_HINT.format(major=pg.major)
        )
    say(f"Installing the build tools for PostgreSQL {pg.major} with apt-get")
    _apt_install_build_tools(pg.major)
    with tempfile.TemporaryDirectory(prefix="tickvault-timescaledb-") as scratch:
        work = Path(scratch)
        source = _fetch_debian_source(work, say)
        _build_and_install(pg, source, say)
    version = pg.timescaledb_version()
    if version is None:
        raise StoreError("the build finished but timescaledb.control is not installed")
    say(f"TimescaleDB {version} installed for PostgreSQL {pg.major}")
    return True


def _run(args: list[str], cwd: Path | None = None) -> None:
    result = subprocess.run(
        args,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-3000:]
        raise StoreError(f"`{' '.join(args)}` failed:\n{output}")


def _apt_install_build_tools(major: int) -> None:
    _run(["apt-get", "update", "-qq"])
    _run(
        [
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            f"postgresql-server-dev-{major}",
            "cmake",
            "make",
            "gcc",
            "libssl-dev",
            "xz-utils",
        ]
    )


def _fetch_debian_source(work: Path, say: Callable[[str], None]) -> Path:
    """Download Debian 13's source package with apt, through a private sources list only."""
    apt_dir = work / "apt"
    for sub in ("lists/partial", "cache/archives/partial"):
        (apt_dir / sub).mkdir(parents=True)
    sources = apt_dir / "sources.list"
    sources.write_text(
        f"deb-src [signed-by={TRIXIE_KEYRING}] {DEBIAN_MIRROR} {SOURCE_SUITE} main\n"
    )
    private = [
        "-o",
        f"Dir::Etc::SourceList={sources}",
        "-o",
        "Dir::Etc::SourceParts=/nonexistent",
        "-o",
        f"Dir::State::Lists={apt_dir / 'lists'}",
        "-o",
        f"Dir::Cache={apt_dir / 'cache'}",
        "-o",
        "APT::Sandbox::User=root",
    ]
    say(f"Fetching the {SOURCE_PACKAGE} source package of Debian {SOURCE_SUITE}")
    _run(["apt-get", *private, "update", "-qq"])
    download = work / "download"
    download.mkdir()
    _run(["apt-get", *private, "source", "--download-only", "-qq", SOURCE_PACKAGE], cwd=download)
    tarballs = sorted(download.glob(f"{SOURCE_PACKAGE}_*.orig.tar.*"))
    if not tarballs:
        raise StoreError(f"apt fetched no {SOURCE_PACKAGE} source tarball")
    _run(["tar", "xf", str(tarballs[-1]), "-C", str(work)])
    trees = [p for p in work.glob(f"{SOURCE_PACKAGE}-*") if (p / "CMakeLists.txt").exists()]
    if not trees:
        raise StoreError(f"the {SOURCE_PACKAGE} tarball holds no source tree")
    return trees[0]


def _build_and_install(pg: PgInstall, source: Path, say: Callable[[str], None]) -> None:
    say(f"Building {source.name} against PostgreSQL {pg.major}")
    build = source / "build"
    _run(
        [
            "cmake",
            "-S",
            str(source),
            "-B",
            str(build),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPG_CONFIG={pg.bindir / 'pg_config'}",
            "-DAPACHE_ONLY=ON",
            "-DUSE_TELEMETRY=OFF",
            "-DSEND_TELEMETRY_DEFAULT=OFF",
            "-DREGRESS_CHECKS=OFF",
            "-DTAP_CHECKS=OFF",
            "-DWARNINGS_AS_ERRORS=OFF",
            "-DLINTER=OFF",
        ]
    )
    _run(["make", "-C", str(build), f"-j{os.cpu_count() or 2}"])
    _run(["make", "-C", str(build), "install"])
