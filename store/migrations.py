"""Versioned schema migrations from `sql/`, applied in order, each in its own transaction.

A file is `NNN_name.sql` for both TimescaleDB editions, or `NNN_name.timescale.sql` /
`NNN_name.apache.sql` where the editions differ (continuous aggregates exist only in
Community). A version applies once, recorded in `tickvault_migrations`; a version with no
file for this server's edition is recorded as skipped so the sequence stays whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import psycopg

from store.editions import Edition, server_edition
from store.errors import StoreError

_FILE = re.compile(
    r"^(?P<version>\d{3})_(?P<name>[a-z0-9_]+?)(?:\.(?P<edition>apache|timescale))?\.sql$"
)


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    files: dict[str | None, Path]  # by edition; None: for both

    def path_for(self, edition: Edition) -> Path | None:
        """The file to run on `edition`; None when this version has nothing for it."""
        return self.files.get(None) or self.files.get(edition.value)


def default_sql_dir() -> Path:
    """The shipped migrations: the package store.sql, which is the repository's sql/."""
    return Path(str(files("store.sql")))


def discover(sql_dir: Path | None = None) -> list[Migration]:
    """Every migration in `sql_dir` (default: the shipped ones), in version order."""
    sql_dir = sql_dir or default_sql_dir()
    by_version: dict[str, dict[str | None, Path]] = {}
    names: dict[str, str] = {}
    for path in sorted(sql_dir.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise StoreError(f"{path} is not named NNN_name[.apache|.timescale].sql")
        version = match["version"]
        if names.setdefault(version, match["name"]) != match["name"]:
            raise StoreError(f"migration version {version} has two names in {sql_dir}")
        by_version.setdefault(version, {})[match["edition"]] = path
    return [
        Migration(version, names[version], files) for version, files in sorted(by_version.items())
    ]


def check_timescaledb(conn: psycopg.Connection) -> None:
    """Refuse, before touching anything, a server that cannot run our schema."""
    available = conn.execute(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if available is None:
        raise StoreError(
            "this PostgreSQL has no timescaledb extension: install it (`tickvault db install`) or "
            "point TICKVAULT_DATABASE_URL at a TimescaleDB server. Nothing was changed."
        )
    preload = conn.execute("SHOW shared_preload_libraries").fetchone()
    if preload is None or "timescaledb" not in preload[0]:
        raise StoreError(
            "timescaledb is installed but not in shared_preload_libraries: add it to "
            "postgresql.conf and restart the server. Nothing was changed."
        )


def migrate(url: str, sql_dir: Path | None = None) -> list[str]:
    """Apply what is missing; return the versions applied now (empty on a second run)."""
    with psycopg.connect(url, autocommit=True) as conn:
        migrations = discover(sql_dir)
        if _up_to_date(conn, migrations):
            return []  # found by reads alone: a role without DDL rights (the compose app) starts
        check_timescaledb(conn)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS tickvault_migrations ("
            " version text PRIMARY KEY, name text NOT NULL, edition text NOT NULL,"
            " skipped boolean NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM tickvault_migrations")}
        applied = []
        for migration in migrations:
            if migration.version in done:
                continue
            with conn.transaction():
                common = migration.files.get(None)
                if common is not None:  # the first one creates the extension
                    conn.execute(common.read_text().encode())
                edition = server_edition(conn)
                path = migration.path_for(edition)
                if path is not None and path is not common:
                    conn.execute(path.read_text().encode())
                conn.execute(
                    "INSERT INTO tickvault_migrations (version, name, edition, skipped)"
                    " VALUES (%s, %s, %s, %s)",
                    [migration.version, migration.name, edition.value, path is None],
                )
            applied.append(migration.version)
        return applied


def _up_to_date(conn: psycopg.Connection, migrations: list[Migration]) -> bool:
    """Whether every migration is recorded already."""
    if conn.execute("SELECT to_regclass('tickvault_migrations')").fetchone() == (None,):
        return False
    done = {row[0] for row in conn.execute("SELECT version FROM tickvault_migrations")}
    return all(migration.version in done for migration in migrations)
