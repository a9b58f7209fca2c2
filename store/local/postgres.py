"""Where the local PostgreSQL lives, and running its programs as the right OS user.

PostgreSQL refuses to run as root, so when tickvault is run as root the server and its tools
run as an unprivileged system user (created on first use); as a normal user they run as that
user. Everything that touches the cluster goes through `PgInstall.run` so this rule lives in
one place.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from store.errors import StoreError

SERVICE_USER = "tickvault"


def service_user() -> str:
    """The OS user the server runs as: ourselves, or a system user when we are root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ],
            check=True,
            capture_output=True,
        )
    return SERVICE_USER


def find_bindir(configured: Path | None) -> Path:
    """The PostgreSQL bin directory: configured, else the newest Debian one, else pg_config's."""
    if configured is not None:
        if not (configured / "postgres").exists():
            raise StoreError(f"TICKVAULT_PG_BINDIR={configured} has no postgres binary")
        return configured
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
        return Path(out.stdout.strip())
    raise StoreError(
        "PostgreSQL is not installed: install it (Debian: apt-get install postgresql), "
        "or point TICKVAULT_DATABASE_URL at a running TimescaleDB (see docs/deployment.md)"
    )


@dataclass(frozen=True)
class PgInstall:
    """One PostgreSQL installation, found through its bin directory."""

    bindir: Path

    def pg_config(self, flag: str) -> str:
        out = subprocess.run(
            [str(self.bindir / "pg_config"), flag], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    @cached_property
    def major(self) -> int:
        version = self.pg_config("--version")  # "PostgreSQL 15.18 (Debian ...)"
        match = re.search(r"PostgreSQL (\d+)", version)
        if not match:
            raise StoreError(f"cannot read the PostgreSQL version from {version!r}")
        return int(match.group(1))

    @cached_property
    def sharedir(self) -> Path:
        # Debian layout first: a copied tree's pg_config still prints where it was built for.
        debian = self.bindir.parents[3] / "share" / "postgresql" / str(self.major)
        return debian if debian.is_dir() else Path(self.pg_config("--sharedir"))

    @cached_property
    def pkglibdir(self) -> Path:
        debian = self.bindir.parent / "lib"
        return debian if (debian / "plpgsql.so").exists() else Path(self.pg_config("--pkglibdir"))

    def timescaledb_version(self) -> str | None:
        """The default version of the installed timescaledb extension, or None."""
        control = self.sharedir / "extension" / "timescaledb.control"
        if not control.exists():
            return None
        match = re.search(r"default_version\s*=\s*'([^']+)'", control.read_text())
        return match.group(1) if match else "unknown"

    def has_community_module(self) -> bool:
        """Whether the Community (TSL) module is installed beside the Apache one."""
        return any(self.pkglibdir.glob("timescaledb-tsl-*.so"))

    def run(self, program: str, *args: str, user: str) -> subprocess.CompletedProcess[str]:
        """Run one of the installation's programs as `user` (root cannot run PostgreSQL)."""
        return subprocess.run(
            [str(self.bindir / program), *args],
            user=user if os.geteuid() == 0 else None,
            capture_output=True,
            text=True,
            cwd="/",
            check=False,
        )
