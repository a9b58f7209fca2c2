"""A private PostgreSQL + TimescaleDB cluster under the data directory.

The embedded default: `tickvault db start` gives a newcomer a real TimescaleDB without
docker. Clients reach it through a unix socket inside the cluster's own 0700 directory, so
only its owner (and root) can connect and no password is needed there; the loopback TCP port
asks for a generated password, kept in the data directory.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg

from store.errors import StoreError
from store.local.postgres import PgInstall, service_user

DATABASE = "tickvault"
SUPERUSER = "tickvault"

# Sized for sustained COPY ingest on a small machine: big enough WAL to keep checkpoints
# rare, and TimescaleDB's background workers for its policies (Community) or nothing (Apache).
# Once the open chunk outgrows shared_buffers, each new page needs a dirty one written out;
# the background writer's defaults clean at most 500 pages a second, so the COPY backends
# wrote the rest themselves, in their commits' path. Cleaning ahead up to 100,000 pages a
# second (also docker-compose.yml's) raised the ceiling in 8 of 10 alternated pairs on the two
# editions, and its slowest 10 s in 5 of 6 on Community (BENCHMARKS.md, 2026-12-07 18:56).
BACKGROUND_WRITER = {
    "bgwriter_delay": "'10ms'",
    "bgwriter_lru_maxpages": "1000",
    "bgwriter_lru_multiplier": "4.0",
}
INGEST_SETTINGS = {
    "shared_preload_libraries": "'timescaledb'",
    "shared_buffers": "'512MB'",
    "work_mem": "'32MB'",
    "maintenance_work_mem": "'256MB'",
    "wal_buffers": "'16MB'",
    "max_wal_size": "'4GB'",
    "min_wal_size": "'512MB'",
    "checkpoint_timeout": "'15min'",
    "checkpoint_completion_target": "0.9",
    **BACKGROUND_WRITER,
    "max_connections": "100",
    "max_worker_processes": "16",
    "timescaledb.max_background_workers": "8",
    "timescaledb.telemetry_level": "off",
    "timezone": "'UTC'",
    "logging_collector": "off",
    "log_min_messages": "warning",
}


@dataclass(frozen=True)
class ClusterStatus:
    running: bool
    data_dir: Path
    port: int
    url: str | None
    detail: str


class LocalCluster:
    """The cluster at `data_dir`, run by `install`'s programs on `port`."""

    def __init__(
        self,
        install: PgInstall,
        data_dir: Path,
        port: int,
        extra_settings: dict[str, str] | None = None,
    ) -> None:
        self.install = install
        self.data_dir = data_dir.absolute()
        self.port = port
        self.extra_settings = extra_settings or {}
        self.user = service_user()

    @property
    def password_file(self) -> Path:
        return self.data_dir.parent / "pg-password"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def url(self, database: str = DATABASE) -> str:
        """libpq URL through the unix socket: no secret in it."""
        return f"postgresql://{SUPERUSER}@/{database}?host={quote(str(self.data_dir))}&port={self.port}"

    def tcp_url(self, database: str = DATABASE) -> str:
        password = quote(self.password_file.read_text().strip(), safe="")
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{self.port}/{database}"

    def is_initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def is_running(self) -> bool:
        if not self.is_initialized():
            return False
        return (
            self.install.run(
                "pg_ctl", "status", "-D", str(self.data_dir), user=self.user
            ).returncode
            == 0
        )

    def initialize(self) -> None:
        """initdb once; later calls find PG_VERSION and return."""
        if self.is_initialized():
            return
        if self.install.timescaledb_version() is None:
            raise StoreError(
                f"the TimescaleDB extension is not installed for PostgreSQL {self.install.major}: "
                "run `tickvault db install` first, or set TICKVAULT_DATABASE_URL to a TimescaleDB "
                "server (docker compose up -d db)"
            )
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if not self.password_file.exists():
            self.password_file.touch(mode=0o600)
            self.password_file.write_text(secrets.token_urlsafe(24) + "\n")
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self._give_to_service_user(self.data_dir)
        self._check_reachable_by_service_user()
        with tempfile.TemporaryDirectory(prefix="tickvault-initdb-") as scratch:
            pwfile = Path(scratch) / "pw"
            pwfile.write_text(self.password_file.read_text())
            self._give_to_service_user(Path(scratch))
            self._give_to_service_user(pwfile)
            result = self.install.run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--pwfile",
                str(pwfile),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
                user=self.user,
            )
        if result.returncode != 0:
            raise StoreError(f"initdb failed in {self.data_dir}:\n{result.stderr.strip()}")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude_if_exists = 'tickvault.conf'\n")

    def start(self) -> ClusterStatus:
        """Start (initializing first where needed); starting a running cluster is a no-op."""
        self.initialize()
        if self.is_running():
            return self.status("already running")
        self._check_reachable_by_service_user()
        self._check_port_free()
        self._write_settings()
        result = self.install.run(
            "pg_ctl",
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            "120",
            user=self.user,
        )
        if result.returncode != 0:
            tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise StoreError(f"PostgreSQL did not start:\n{result.stderr.strip()}\n{tail}")
        self._ensure_database()
        return self.status("started")

    def _check_port_free(self) -> None:
        """One line naming the port, who holds it and the setting that moves ours, rather
        than PostgreSQL's "could not create any TCP/IP sockets" deep in its log."""
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", self.port))
                return
            except OSError:
                pass
        holder = postgres_on_port(self.port)
        held_by = (
            f"the PostgreSQL of {holder}"
            + (" (another tickvault store)" if holder.name == "pg" else "")
            if holder is not None
            else "another program"
        )
        raise StoreError(
            f"port {self.port} is taken by {held_by}: set TICKVAULT_PG_PORT to a free port for "
            f"the store in {self.data_dir}"
            + (", or stop that one (`tickvault db stop` where it runs)" if holder else "")
        )

    def stop(self) -> ClusterStatus:
        if not self.is_running():
            return self.status("not running")
        result = self.install.run(
            "pg_ctl",
            "stop",
            "-D",
            str(self.data_dir),
            "-m",
            "fast",
            "-w",
            "-t",
            "120",
            user=self.user,
        )
        if result.returncode != 0:
            raise StoreError(f"PostgreSQL did not stop:\n{result.stderr.strip()}")
        return self.status("stopped")

    def status(self, detail: str = "") -> ClusterStatus:
        running = self.is_running()
        if not detail:
            detail = (
                "running"
                if running
                else ("stopped" if self.is_initialized() else "not initialized")
            )
        return ClusterStatus(
            running=running,
            data_dir=self.data_dir,
            port=self.port,
            url=self.url() if running else None,
            detail=detail,
        )

    def _write_settings(self) -> None:
        settings = {
            **INGEST_SETTINGS,
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.data_dir}'",
            "unix_socket_permissions": "0700",
            **self.extra_settings,
        }
        conf = self.data_dir / "tickvault.conf"
        conf.write_text(
            "# Written by tickvault at every start; edit TICKVAULT_* settings instead.\n"
            + "".join(f"{name} = {value}\n" for name, value in settings.items())
        )
        self._give_to_service_user(conf)

    def _ensure_database(self) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')

    def _give_to_service_user(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, user=self.user, group=self.user)

    def _check_reachable_by_service_user(self) -> None:
        if os.geteuid() != 0:
            return
        probe = subprocess.run(["test", "-x", str(self.data_dir)], user=self.user, check=False)
        if probe.returncode != 0:
            raise StoreError(
                f"the server runs as OS user {self.user!r}, which cannot reach {self.data_dir}: "
                "a parent directory is closed to other users (as /root is). Set "
                "TICKVAULT_DATA_DIR to a directory under /var/lib, /srv or /tmp"
            )


def postgres_on_port(port: int) -> Path | None:
    """The data directory of the running PostgreSQL that listens on `port`, if one does and
    this user may read its `postmaster.pid` (whose fourth line is the port)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-D" not in args[:-1] or not args[0].endswith(b"postgres"):
            continue
        data_dir = Path(os.fsdecode(args[args.index(b"-D") + 1]))
        if not data_dir.is_absolute():  # the postmaster runs in its data directory
            try:
                data_dir = Path(os.readlink(cmdline.parent / "cwd"))
            except OSError:
                continue
        try:
            lines = (data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            continue
        if len(lines) > 3 and lines[3].strip() == str(port):
            return data_dir
    return None
