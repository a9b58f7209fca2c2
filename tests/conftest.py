"""Real TimescaleDB clusters for the tests: no mocked database anywhere.

One private cluster per edition for the whole session, and a fresh migrated database per test
that asks for one. The Apache edition is what every machine has (`tickvault db install`);
Community is used where a Community build is found (TICKVAULT_COMMUNITY_PG_BINDIR, or the
default PostgreSQL's timescaledb carrying the TSL module) and its tests skip otherwise.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from store.instruments import default_sample_path, load_instruments
from store.local.cluster import LocalCluster
from store.local.postgres import PgInstall, find_bindir
from store.local.url import create_database, drop_database
from store.migrations import migrate

REPO = Path(__file__).resolve().parents[1]
# Every schema version in sql/, in order: a new migration must be added here on purpose.
ALL_MIGRATIONS = [
    "001",
    "002",
    "003",
    "004",
    "005",
    "006",
    "007",
    "008",
    "009",
    "010",
    "011",
    "012",
    "013",
    "014",
    "015",
    "016",
    "017",
    "018",
    "019",
    "020",
    "021",
    "022",
    "023",
    "024",
]


# Below Linux's ephemeral range (32768-60999): the kernel never hands these out for an
# outgoing connection, so a port found free here is still free when the subprocess it is for
# binds it. An ephemeral port can be taken in between by any test's client connection.
_LISTEN_PORTS = range(20000, 32000)
_pick = random.SystemRandom()  # not the seeded generator: parallel workers pick apart


def free_port() -> int:
    """A loopback port nothing listens on, for a server a test starts in another process."""
    while True:
        port = _pick.choice(_LISTEN_PORTS)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class DbServer:
    """A running server the tests may create databases on."""

    def __init__(self, admin_url: str, edition: str, cluster: LocalCluster | None = None) -> None:
        self.admin_url = admin_url
        self.edition = edition
        self.cluster = cluster

    def create_database(self, migrated: bool = True) -> str:
        url = create_database(self.admin_url, f"test_{uuid.uuid4().hex[:12]}")
        if migrated:
            migrate(url)
        return url

    def drop_database(self, url: str) -> None:
        drop_database(self.admin_url, url)


@contextmanager
def _running_server(bindir: Path, license_: str) -> Iterator[DbServer]:
    """A private cluster for the session, removed afterwards."""
    # /tmp, not pytest's tmp_path: the server may run as another OS user, and pytest's base
    # directory is closed to everyone but us.
    root = Path(tempfile.mkdtemp(prefix=f"tickvault-test-{license_}-"))
    root.chmod(0o755)
    cluster = LocalCluster(
        PgInstall(bindir),
        root / "pg",
        free_port(),
        extra_settings={"timescaledb.license": f"'{license_}'", "shared_buffers": "'128MB'"},
    )
    cluster.start()
    try:
        yield DbServer(cluster.url("postgres"), license_, cluster)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _community_bindir() -> Path | None:
    configured = os.environ.get("TICKVAULT_COMMUNITY_PG_BINDIR")
    if configured:
        return Path(configured)
    default = find_bindir(None)
    return default if PgInstall(default).has_community_module() else None


@pytest.fixture(scope="session")
def apache_server() -> Iterator[DbServer]:
    external = os.environ.get("TICKVAULT_TEST_DATABASE_URL")
    if external:
        yield DbServer(external, "apache")
        return
    with _running_server(find_bindir(None), "apache") as server:
        yield server


@pytest.fixture(scope="session")
def community_server() -> Iterator[DbServer]:
    bindir = _community_bindir()
    if bindir is None:
        pytest.skip(
            "TimescaleDB Community is not installed here (Debian ships only the Apache "
            "edition); set TICKVAULT_COMMUNITY_PG_BINDIR to a PostgreSQL bin directory whose "
            "timescaledb has the TSL module to run these tests"
        )
    with _running_server(bindir, "timescale") as server:
        yield server


@pytest.fixture
def db_url(apache_server: DbServer) -> Iterator[str]:
    """A fresh, migrated database on the Apache-edition server (what every machine has)."""
    url = apache_server.create_database()
    yield url
    apache_server.drop_database(url)


def _with_sample_instruments(url: str) -> str:
    with psycopg.connect(url) as conn:
        load_instruments(conn, default_sample_path())
    return url


@pytest.fixture
def instruments_db(db_url: str) -> str:
    """A fresh, migrated database with the sample instrument master loaded."""
    return _with_sample_instruments(db_url)


@pytest.fixture(params=["apache", "community"])
def edition_server(request: pytest.FixtureRequest) -> DbServer:
    """Each edition's server in turn (a test on Community skips where it is not installed)."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture
def edition_db_url(edition_server: DbServer) -> Iterator[str]:
    """A fresh, migrated database on each edition in turn."""
    url = edition_server.create_database()
    yield url
    edition_server.drop_database(url)


@pytest.fixture
def edition_instruments_db(edition_db_url: str) -> str:
    """`instruments_db` on each edition in turn: the exactly-once promises hold on both."""
    return _with_sample_instruments(edition_db_url)
