"""`tickvault db ...` as a user runs it: a real subprocess, a real private cluster."""

from __future__ import annotations

import os
import random
import re
import shutil
import string
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests import conftest

IST = timezone(timedelta(hours=5, minutes=30))


class Cli:
    """Runs the CLI with a data directory and port of its own, and nothing else from TICKVAULT_*."""

    def __init__(self, data_dir: Path, database_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TICKVAULT_")}
        self.env["TICKVAULT_DATA_DIR"] = str(data_dir)
        self.env["TICKVAULT_PG_PORT"] = str(conftest.free_port())
        if database_url is not None:
            self.env["TICKVAULT_DATABASE_URL"] = database_url

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tickvault", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def ok(self, *args: str) -> str:
        """stdout of a command that must succeed."""
        result = self.run(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def url(self, *args: str) -> str:
        return self.ok("db", "url", *args).strip().splitlines()[-1]


def refresh(cli: Cli, *args: str) -> str:
    return cli.ok("db", "refresh-bars", *args).strip()


def data_dir() -> Path:
    # Under /tmp and open to others: as root the server runs as another OS user.
    path = Path(tempfile.mkdtemp(prefix="tickvault-test-cli-"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def local() -> Iterator[Cli]:
    """The embedded cluster of one data directory, shared by this module's tests."""
    cli = Cli(data_dir())
    try:
        yield cli
    finally:
        cli.run("db", "stop")
        shutil.rmtree(cli.data_dir, ignore_errors=True)


@pytest.fixture
def fresh() -> Iterator[Cli]:
    cli = Cli(data_dir())
    yield cli
    shutil.rmtree(cli.data_dir, ignore_errors=True)


def assert_one_line_error(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tickvault: ")
    assert words in lines[0]


def test_status_of_a_new_data_dir_is_3(fresh: Cli) -> None:
    result = fresh.run("db", "status")
    assert result.returncode == 3
    assert "not initialized" in result.stdout


def test_start_prints_the_url_and_twice_is_fine(local: Cli) -> None:
    first = local.ok("db", "start").strip().splitlines()
    second = local.ok("db", "start").strip().splitlines()

    assert first[-1].startswith("postgresql://")
    assert "already running" in second[0]
    assert second[-1] == first[-1]
    assert "running" in local.ok("db", "status")


def test_url_reaches_the_database(local: Cli) -> None:
    local.ok("db", "start")
    with psycopg.connect(local.url()) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("tickvault",)


def test_the_embedded_store_runs_with_the_ingest_settings(local: Cli) -> None:
    """What an operator checks with SHOW: the buffer pool BENCHMARKS.md sizes its runs to, and
    a background writer that cleans ahead of the COPY (PostgreSQL's default is 200ms/100)."""
    local.ok("db", "start")
    names = ("shared_buffers", "bgwriter_delay", "bgwriter_lru_maxpages", "bgwriter_lru_multiplier")
    with psycopg.connect(local.url()) as conn:
        shown = [conn.execute(f"SHOW {name}").fetchone()[0] for name in names]
    assert shown == ["512MB", "10ms", "1000", "4"]


def test_tcp_url_works_and_needs_its_password(local: Cli) -> None:
    local.ok("db", "start")
    url = local.url("--tcp", "--show-password")
    params = conninfo_to_dict(url)
    assert params["host"] == "127.0.0.1"
    assert params["port"] == local.env["TICKVAULT_PG_PORT"]

    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT inet_server_addr()::text").fetchone() == ("127.0.0.1/32",)
    params["password"] = "wrong"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(make_conninfo(**params))


def test_tcp_url_shows_its_password_only_when_asked(local: Cli) -> None:
    local.ok("db", "start")
    shown = local.url("--tcp", "--show-password")
    password = conninfo_to_dict(shown)["password"]

    masked = local.url("--tcp")
    assert password not in masked
    assert masked == shown.replace(f":{quote(password, safe='')}@", ":********@")
    # The unix-socket URL, what `psql "$(tickvault db url | tail -1)"` uses, has no password.
    socket = local.url()
    assert "password" not in conninfo_to_dict(socket)
    assert "********" not in socket
    assert local.url("--show-password") == socket


def test_migrate_twice(local: Cli) -> None:
    local.ok("db", "start")
    first = local.ok("db", "migrate")
    second = local.ok("db", "migrate")

    assert first.startswith("applied migrations: 001, 002")
    assert second.strip() == "schema is up to date"
    with psycopg.connect(local.url()) as conn:
        versions = conn.execute("SELECT version FROM tickvault_migrations ORDER BY 1").fetchall()
    assert [v for (v,) in versions] == conftest.ALL_MIGRATIONS


def test_refresh_bars_folds_in_late_ticks_and_rebuilds_a_window(local: Cli) -> None:
    local.ok("db", "start")
    local.ok("db", "migrate")
    day = (datetime.now(IST) - timedelta(days=4)).date()
    session_open = datetime(day.year, day.month, day.day, 9, 15, tzinfo=IST)

    def insert(seconds: int, price: float) -> None:
        with psycopg.connect(local.url()) as conn:
            conn.execute(
                "INSERT INTO ticks (instrument_key, ts, ltp, volume_delta)"
                " VALUES ('K', %s, %s, 10)",
                [session_open + timedelta(seconds=seconds), price],
            )

    def bar() -> tuple:
        with psycopg.connect(local.url()) as conn:
            return conn.execute(
                "SELECT bucket, open, high, low, close, volume, tick_count FROM ohlc_5m"
                " WHERE instrument_key = 'K'"
            ).fetchone()

    for seconds, price in ((5, 100.0), (40, 101.5), (70, 99.0)):
        insert(seconds, price)
    assert re.fullmatch(r"bars refreshed \((apache|timescale) edition\).*", refresh(local))
    assert bar() == (session_open, 100.0, 101.5, 99.0, 99.0, 30, 3)

    insert(20, 105.0)  # late: its bucket is already materialized
    assert bar() == (session_open, 100.0, 101.5, 99.0, 99.0, 30, 3)
    refresh(local)
    assert bar() == (session_open, 100.0, 105.0, 99.0, 99.0, 40, 4)

    with psycopg.connect(local.url()) as conn:
        conn.execute("DELETE FROM ticks WHERE ts = %s", [session_open + timedelta(seconds=5)])
    window_end = session_open + timedelta(minutes=5)
    refresh(local, "--start", session_open.isoformat(), "--end", window_end.isoformat())
    assert bar() == (session_open, 105.0, 105.0, 99.0, 99.0, 30, 3)


def test_refresh_bars_wants_times_with_an_offset(local: Cli) -> None:
    result = local.run("db", "refresh-bars", "--start", "2026-11-20T09:15")
    assert result.returncode == 2
    assert "needs a UTC offset" in result.stderr


def test_stopped_cluster_status_3_and_one_line_errors(local: Cli) -> None:
    local.ok("db", "start")
    try:
        assert "stopped" in local.ok("db", "stop")
        assert local.run("db", "status").returncode == 3
        assert_one_line_error(local.run("db", "migrate"), "is not running")
        assert_one_line_error(local.run("db", "url"), "tickvault db start")
    finally:
        local.ok("db", "start")


def test_install_has_nothing_to_do_when_installed(fresh: Cli) -> None:
    assert "nothing to do" in fresh.ok("db", "install")


def test_database_url_is_used_instead_of_a_local_cluster(
    apache_server: conftest.DbServer,
) -> None:
    url = apache_server.create_database(migrated=False)
    cli = Cli(data_dir(), database_url=url)
    try:
        assert "nothing local to start" in cli.ok("db", "start")
        assert not (cli.data_dir / "pg").exists()
        assert "external server" in cli.ok("db", "status")
        assert cli.url() == url

        assert cli.ok("db", "migrate").startswith("applied migrations: 001")
        assert cli.ok("db", "migrate").strip() == "schema is up to date"
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT to_regclass('ticks') IS NOT NULL").fetchone() == (True,)
        assert "nothing local to stop" in cli.ok("db", "stop")
    finally:
        apache_server.drop_database(url)
        shutil.rmtree(cli.data_dir, ignore_errors=True)


def test_a_normal_user_runs_the_store_as_itself() -> None:
    """No root: the server runs as the invoking user, in a data directory that user owns."""
    if os.geteuid() != 0:
        pytest.skip("already a normal user: the rest of this file covers it")
    from store.local.postgres import SERVICE_USER, service_user

    user = service_user()  # the unprivileged system user, created when missing
    assert user == SERVICE_USER
    root = Path(tempfile.mkdtemp(prefix="tickvault-user-"))
    root.chmod(0o755)
    shutil.chown(root, user=user, group=user)
    cli = Cli(root / "data")
    cli.env["HOME"] = str(root)
    # The venv's interpreter may sit in root's closed home: run the system's own Python of
    # the same version over the venv's packages.
    system_python = Path(f"/usr/bin/python3.{sys.version_info.minor}")
    if not system_python.exists():
        pytest.skip(f"{system_python} is missing, and the venv's Python is root's alone")
    site = next(p for p in sys.path if p.endswith("site-packages"))
    readable = subprocess.run(["test", "-r", f"{site}/psycopg/__init__.py"], user=user, check=False)
    if readable.returncode != 0:
        pytest.skip(f"this checkout's packages ({site}) are closed to the user {user!r}")
    cli.env["PYTHONPATH"] = os.pathsep.join([str(conftest.REPO), site])

    def as_user(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(system_python), "-m", "tickvault", *args],
            env=cli.env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            user=user,
        )

    try:
        started = as_user("db", "start")
        assert started.returncode == 0, started.stderr
        url = as_user("db", "url").stdout.strip().splitlines()[-1]
        owner = (root / "data" / "pg").owner()
        assert owner == user
        with psycopg.connect(url) as conn:
            (current,) = conn.execute("SELECT current_user").fetchone()
        assert current == "tickvault"
        install = as_user("db", "install")
        assert "already installed" in install.stdout
    finally:
        as_user("db", "stop")
        shutil.rmtree(root, ignore_errors=True)


# An external server's URL as a user may spell it, and how `tickvault db url` shows it: a URL
# as a URL where it masks cleanly, anything else in libpq's key=value form.
EXTERNAL_URLS = [
    (
        "postgresql://alice:s3cr%40t-pw@db.example:5433/ticks?sslmode=require",
        "postgresql://alice:********@db.example:5433/ticks?sslmode=require",
    ),
    (
        "postgresql://alice:s3cret@db.example/ticks?password=s3cret-pw&application_name=nb",
        "postgresql://alice:********@db.example/ticks?password=********&application_name=nb",
    ),
    (
        "postgres://alice:p?w@db.example/ticks?password=s3cret-pw&application_name=nb",
        "user=alice password=******** dbname=ticks host=db.example application_name=nb",
    ),
    (
        "host=db.example port=5433 dbname=ticks user=alice password='s3cr et\\'pw' sslmode=require",
        "user=alice password=******** dbname=ticks host=db.example port=5433 sslmode=require",
    ),
    (
        "host = db.example  password = s3cret\\ pw user=alice sslpassword=keypass",
        "user=alice password=******** host=db.example sslpassword=********",
    ),
    (
        "postgresql://alice@db.example/ticks?sslmode=verify-full",
        "postgresql://alice@db.example/ticks?sslmode=verify-full",
    ),
]


@pytest.mark.parametrize(("url", "shown"), EXTERNAL_URLS)
def test_external_url_is_shown_without_its_password_unless_asked(url: str, shown: str) -> None:
    cli = Cli(data_dir(), database_url=url)
    try:
        assert cli.url() == shown
        assert cli.url("--show-password") == url
    finally:
        shutil.rmtree(cli.data_dir, ignore_errors=True)


def test_an_unreadable_url_is_one_line_that_does_not_repeat_it() -> None:
    cli = Cli(data_dir(), database_url="host=db.example s3cret-pw")
    try:
        result = cli.run("db", "url")
        assert_one_line_error(result, "not a valid libpq connection string")
        assert "s3cret" not in result.stderr + result.stdout
    finally:
        shutil.rmtree(cli.data_dir, ignore_errors=True)


@pytest.mark.parametrize("seed", range(5))
def test_masking_keeps_everything_but_the_password(seed: int) -> None:
    """Any password, in either spelling: gone from the output, every other setting intact."""
    from store.local.url import PASSWORD_MASK, masked_password

    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + " '\\\"=@:/?&%#$!;,"
    for _ in range(200):
        # The marker survives both spellings' quoting unchanged, so a leak would show it.
        password = "Zq9" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        params = {"host": "db.example", "port": "5433", "dbname": "ticks", "user": "alice"}
        keywords = make_conninfo(**params, password=password)
        uri = f"postgresql://alice:{quote(password, safe='')}@db.example:5433/ticks?sslmode=require"
        for url in (keywords, uri):
            masked = masked_password(url)
            assert "Zq9" not in masked
            expected = {**conninfo_to_dict(url), "password": PASSWORD_MASK}
            assert conninfo_to_dict(masked) == expected
