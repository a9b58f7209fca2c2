"""Which database tickvault talks to: TICKVAULT_DATABASE_URL, or the embedded local cluster."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from store.errors import StoreError
from store.local.cluster import LocalCluster
from store.local.postgres import PgInstall, find_bindir


class StoreSettings(Protocol):
    """Where the store is (core.config.Settings is one)."""

    @property
    def database_url(self) -> str | None: ...
    @property
    def pg_bindir(self) -> Path | None: ...
    @property
    def pg_data_dir(self) -> Path: ...
    @property
    def pg_port(self) -> int: ...


def local_cluster(settings: StoreSettings) -> LocalCluster:
    return LocalCluster(
        PgInstall(find_bindir(settings.pg_bindir)), settings.pg_data_dir, settings.pg_port
    )


def database_url(settings: StoreSettings, start: bool = False) -> str:
    """The libpq URL to use; with `start`, the local cluster is started when it is down."""
    if settings.database_url:
        return settings.database_url
    cluster = local_cluster(settings)
    if not cluster.is_running():
        if not start:
            raise StoreError(
                f"the local TimescaleDB in {cluster.data_dir} is not running: "
                "`tickvault db start` starts it (or set TICKVAULT_DATABASE_URL)"
            )
        cluster.start()
    return cluster.url()


def with_database(url: str, database: str) -> str:
    """`url` pointed at another database of the same server."""
    params = conninfo_to_dict(url)
    params["dbname"] = database
    return make_conninfo(**params)


def create_database(admin_url: str, database: str) -> str:
    """Create `database` on the server of `admin_url`; returns its URL (tests, benchmarks)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    return with_database(admin_url, database)


def drop_database(admin_url: str, url: str) -> None:
    """Drop the database `url` names, closing its sessions."""
    name = conninfo_to_dict(url)["dbname"]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


PASSWORD_MASK = "********"  # noqa: S105 (what is shown instead of a password)
_SECRET_KEYS = ("password", "sslpassword")


def masked_password(url: str) -> str:
    """`url` with its password shown as ********, the rest as it was.

    A URL without a password (the local store's unix-socket URL) comes back unchanged. The
    masked text is parsed again and compared: a spelling the URL masking misses is printed
    in libpq's key=value form instead, so a password is never shown by accident.
    """
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        # libpq's message quotes pieces of the string, which may be the password.
        raise ValueError(
            "the database URL is not a valid libpq connection string (not shown: it may hold "
            "a password)"
        ) from None
    if not any(key in params for key in _SECRET_KEYS):
        return url
    expected = {k: PASSWORD_MASK if k in _SECRET_KEYS else v for k, v in params.items()}
    if url.startswith(("postgresql://", "postgres://")):
        masked = _masked_uri(url)
        with contextlib.suppress(psycopg.ProgrammingError):
            if conninfo_to_dict(masked) == expected:
                return masked
    return make_conninfo(**expected)


def _masked_uri(url: str) -> str:
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    query = [
        (key, PASSWORD_MASK if key in _SECRET_KEYS else value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(
        parts._replace(
            netloc=f"{user}{colon and ':' + PASSWORD_MASK}{at}{hosts}",
            query=urlencode(query, safe="*"),
        )
    )
