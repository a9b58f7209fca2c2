"""docker-compose.yml, the Dockerfile and .env.example, checked as files (no Docker engine here).

What these guard is what breaks a `docker compose up` on someone else's machine: an image
that moves under a floating tag or dependencies that move under a loose pin, an app that
starts before its database accepts connections, a variable nobody told the user to set, a
secret committed by accident, a placeholder password taken for a real one. And what a
compromised app could do: connect as the database superuser, gain privileges, write its own
image's files, eat the host's memory. The database role the app connects as is set up by
deploy/app_role.py; its tests run it against a real TimescaleDB.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from core.config import Settings
from ingest.service import WebSocketService
from ingest.status import BarsStatus, IngestStatus
from store.bars import refresh_bars
from store.instruments import default_sample_path, load_instruments
from store.local.cluster import BACKGROUND_WRITER
from tests.command import TickvaultCommand
from tests.conftest import REPO, DbServer

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
CONFIGURATION_DOC = REPO / "docs" / "configuration.md"
DEPLOY = REPO / "deploy"
REFUSE = DEPLOY / "refuse-placeholders.sh"
APP_ROLE_SCRIPT = DEPLOY / "app_role.py"
LOCK = REPO / "requirements.lock"
JUPYTER_IN = DEPLOY / "jupyter.in"
JUPYTER_LOCK = DEPLOY / "jupyter.lock"

# ${NAME}, ${NAME:-default}, ${NAME:?message}; `$$` escapes a literal dollar.
_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Z_a-z][A-Za-z0-9_]*)")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
# postgresql://USER:${VARIABLE:?message}@db:5432/tickvault
_COMPOSE_URL = re.compile(
    r"^postgresql://(?P<user>[^:@]+):\$\{(?P<variable>[A-Z_]+):\?[^}]+\}@db:5432/tickvault$"
)
_DB_CAPABILITIES = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"}


def _app_role_name() -> str:
    match = re.search(r'^APP_ROLE = "([a-z_]+)"$', APP_ROLE_SCRIPT.read_text(), re.MULTILINE)
    assert match, "deploy/app_role.py names the app's role in APP_ROLE"
    return match[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _env_example() -> dict[str, str]:
    entries = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, separator, value = line.partition("=")
            assert separator, f".env.example line {line!r} is not NAME=value"
            entries[name.strip()] = value.strip()
    return entries


def _documented_configuration() -> set[str]:
    """The variables in docs/configuration.md's table (first column, in backticks)."""
    return set(
        re.findall(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|", CONFIGURATION_DOC.read_text(), re.MULTILINE)
    )


def _compose_variables() -> set[str]:
    return set(_VARIABLE.findall(COMPOSE.read_text()))


def _bytes(size: str | int) -> int:
    match = re.fullmatch(r"(\d+)([kmg]?)b?", str(size).lower())
    assert match, f"{size!r} is not a size"
    return int(match[1]) * 1024 ** " kmg".index(match[2] or " ")


def _lock_entries(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a pip-compile --generate-hashes file."""
    text = re.sub(r"\\\n", " ", path.read_text())
    entries = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split()
        name, equals, version = requirement.partition("==")
        assert equals, f"{path.name}: {requirement!r} is not pinned with =="
        hashes = [o.removeprefix("--hash=sha256:") for o in options if o.startswith("--hash=")]
        entries[canonicalize_name(name)] = (version, hashes)
    return entries


# --- images and dependencies ------------------------------------------------------------


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    images = {name: svc["image"] for name, svc in compose["services"].items() if "image" in svc}
    # The newest 2.x on PostgreSQL 17 (the SQL needs nothing newer than 2.28.3, tested here).
    assert images["db"].startswith("timescale/timescaledb:2.29.2-pg17")
    for name, image in images.items():
        # An exact release in the tag; a digest, where given, must be a whole sha256.
        match = re.fullmatch(
            r"(?P<repo>[^:@]+):(?P<tag>[^:@]+)(?P<digest>@sha256:[0-9a-f]{64})?", image
        )
        assert match, f"{name}: {image} is not REPO:TAG[@sha256:DIGEST]"
        assert re.search(r"\d+\.\d+\.\d+", match["tag"]), f"{name}: {image} floats on its tag"
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", DOCKERFILE.read_text(), re.MULTILINE)
    base, _ = stages[0]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    named = {stage for _, stage in stages}
    for image, _ in stages[1:]:
        assert image in named, f"{image}: a later stage builds on an earlier one, not a new image"


def test_the_image_holds_every_package_the_project_installs() -> None:
    """A package that pyproject.toml lists but the Dockerfile does not copy installs as a
    missing import in the image, found only when the container starts."""
    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    package_dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    copied = set(re.findall(r"^COPY (\S+) \1$", DOCKERFILE.read_text(), re.MULTILINE))
    tops = {package_dirs.get(name, name.replace(".", "/")).split("/")[0] for name in listed}
    assert tops <= copied, f"the Dockerfile does not copy {sorted(tops - copied)}"


def test_dockerfile_installs_the_lock_with_hashes_then_the_project_alone() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^COPY requirements\.lock ", text, re.MULTILINE)
    locked = re.search(
        r"^RUN pip install --require-hashes --only-binary=:all: --no-deps -r requirements\.lock",
        text,
        re.MULTILINE,
    )
    project = re.search(r"^RUN pip install --no-deps --no-build-isolation \.$", text, re.MULTILINE)
    assert locked, "the dependencies are installed from requirements.lock, hashes required"
    assert project, "the project is installed alone, with the locked setuptools"
    assert locked.start() < project.start()
    for install in re.findall(r"pip install [^\n]*", text):
        assert "--require-hashes" in install or install.endswith(
            "--no-deps --no-build-isolation ."
        ), f"an install outside the locks: {install}"
    assert re.search(
        r"^RUN pip install --require-hashes --only-binary=:all: --no-deps -r deploy/jupyter\.lock",
        text,
        re.MULTILINE,
    )


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    assert "autogenerated by pip-compile with Python 3.11" in LOCK.read_text()
    locked = _lock_entries(LOCK)
    for name, (version, hashes) in locked.items():
        assert hashes, f"{name}=={version} has no hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = [Requirement(r) for r in project["project"]["dependencies"]]
    wanted += [Requirement(r) for r in project["build-system"]["requires"]]  # built --no-deps
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is not in requirements.lock"
        assert requirement.specifier.contains(locked[name][0], prereleases=True), (
            f"requirements.lock has {name}=={locked[name][0]}, pyproject.toml wants {requirement}"
        )
        # What an extra (psycopg[binary], uvicorn[standard]) adds is locked too.
        for extra in requirement.extras:
            for dependency in importlib.metadata.requires(requirement.name) or []:
                needed = Requirement(dependency)
                if (
                    needed.marker
                    and needed.marker.evaluate({"extra": extra})
                    and (not needed.marker.evaluate({"extra": ""}))
                ):
                    assert canonicalize_name(needed.name) in locked, (
                        f"{requirement.name}[{extra}] needs {needed.name}, not in the lock"
                    )


def test_jupyter_lock_agrees_with_the_app_lock() -> None:
    app, jupyter = _lock_entries(LOCK), _lock_entries(JUPYTER_LOCK)
    for line in JUPYTER_IN.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            assert name in jupyter, f"{requirement} is not in deploy/jupyter.lock"
            assert requirement.specifier.contains(jupyter[name][0])
    for name, (version, hashes) in jupyter.items():
        assert hashes, f"{name}=={version} has no hash"
        if name in app:
            assert app[name][0] == version, f"the two images would run two versions of {name}"


# --- the services -------------------------------------------------------------------------


def test_database_has_a_healthcheck_and_keeps_its_data(compose: dict[str, Any]) -> None:
    db = compose["services"]["db"]
    assert "pg_isready" in db["healthcheck"]["test"]
    data = [v for v in db["volumes"] if v.endswith(":/var/lib/postgresql/data")]
    assert data, "the database files are not on a volume"
    volume = data[0].split(":")[0]
    assert volume in compose["volumes"], f"{volume} is not a named volume"


def test_ingest_and_api_wait_for_a_healthy_database_and_the_migrations(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    migrate = services["migrate"]
    for name in ("ingest", "api", "jupyter"):
        assert services[name]["depends_on"]["db"]["condition"] == "service_healthy", name
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        ), name
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert migrate.get("restart", "no") == "no", "a one-shot service"
    for name in ("ingest", "api"):
        assert services[name]["env_file"] == ".env"
        url = services[name]["environment"]["TICKVAULT_DATABASE_URL"]
        assert "@db:5432/" in url, f"{name} must reach the db service by its name"
    assert services["api"]["environment"]["TICKVAULT_API_HOST"] == "0.0.0.0"


def test_ingest_and_api_are_two_services_sharing_the_data_volume(
    compose: dict[str, Any],
) -> None:
    """One job per process: the api reads what the ingest publishes on the shared volume."""
    services = compose["services"]
    assert "app" not in services, "one container running both jobs is gone"
    assert services["ingest"]["command"] == ["tickvault", "ingest"]
    assert services["api"]["command"] == ["tickvault", "api"]
    for name in ("ingest", "api"):
        assert "data:/data" in services[name]["volumes"], f"{name} does not share /data"
        assert services[name]["restart"] == "unless-stopped", name
    assert "data" in compose["volumes"]
    # The archive outlives retention on a volume of its own; the notebooks read it.
    assert "archive:/data/archive" in services["ingest"]["volumes"]
    assert "archive:/data/archive:ro" in services["jupyter"]["volumes"]
    assert "archive" in compose["volumes"]
    # The api comes up without waiting for the feed: history answers meanwhile.
    assert services["api"]["depends_on"]["ingest"]["condition"] == "service_started"
    assert services["ingest"]["healthcheck"]["test"] == ["CMD", "tickvault", "health"]
    assert "ports" not in services["ingest"], "the ingest serves nothing over TCP"
    assert int(services["api"]["environment"]["TICKVAULT_API_WORKERS"]) >= 2
    assert services["ingest"]["stop_grace_period"] == "30s", "time to flush the open batch"


def test_app_connects_as_its_own_role_and_only_migrate_as_the_owner(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    owner = services["db"]["environment"]["POSTGRES_USER"]
    role = _app_role_name()
    assert role != owner

    migrate = _COMPOSE_URL.match(services["migrate"]["environment"]["TICKVAULT_DATABASE_URL"])
    assert migrate, "the migrate service's URL is postgresql://USER:${PASSWORD:?...}@db..."
    assert (migrate["user"], migrate["variable"]) == (owner, "POSTGRES_PASSWORD")
    assert services["migrate"]["command"] == ["sh", "/app/deploy/migrate.sh"]
    steps = [line for line in (DEPLOY / "migrate.sh").read_text().splitlines() if line[:1] != "#"]
    assert steps[-2:] == ["tickvault db migrate", "python /app/deploy/app_role.py"]

    for name in ("ingest", "api", "jupyter"):
        environment = services[name]["environment"]
        url = _COMPOSE_URL.match(environment["TICKVAULT_DATABASE_URL"])
        assert url, f"{name}'s URL is postgresql://USER:${{PASSWORD:?...}}@db..."
        assert (url["user"], url["variable"]) == (role, "TICKVAULT_APP_PASSWORD"), name
        # env_file hands it all of .env: the owner's password must be blanked over it.
        assert environment["POSTGRES_PASSWORD"] == "", f"{name} would see the owner's password"
    for name, service in services.items():
        if name not in ("db", "migrate"):
            assert "${POSTGRES_PASSWORD" not in str(service), f"{name} gets the owner's password"


def test_api_allows_the_hosts_it_is_reached_by(compose: dict[str, Any]) -> None:
    app = compose["services"]["api"]
    allowed = set(app["environment"]["TICKVAULT_API_ALLOWED_HOSTS"].split(","))
    assert {"127.0.0.1", "localhost"} <= allowed
    healthcheck = " ".join(app["healthcheck"]["test"])
    (host,) = re.findall(r"http://([^:/']+)", healthcheck)
    assert host in allowed, "the healthcheck would be refused by the Host check"


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    published = [
        (name, port)
        for name, service in compose["services"].items()
        for port in service.get("ports", [])
    ]
    assert ("api", "127.0.0.1:8000:8000") in published
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_every_service_is_locked_down(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("cap_drop") == ["ALL"], f"{name} keeps Docker's default capabilities"
        added = set(service.get("cap_add", []))
        assert added <= (_DB_CAPABILITIES if name == "db" else set()), f"{name} adds {added}"
        assert service.get("read_only") is True, f"{name}'s root filesystem is writable"
        tmpfs = [entry.split(":")[0] for entry in service.get("tmpfs", [])]
        assert "/tmp" in tmpfs, f"{name} has no writable /tmp"
        assert "mem_limit" in service, f"{name} may use all of the host's memory"
        assert 128 * 2**20 <= _bytes(service["mem_limit"]) <= 4 * 2**30, name
    db = compose["services"]["db"]
    # The official entrypoint chowns the data directory and drops to postgres: these five.
    assert set(db["cap_add"]) == _DB_CAPABILITIES
    assert "/var/run/postgresql" in db["tmpfs"], "postgres writes its socket and lock there"
    assert "data:/data" in compose["services"]["ingest"]["volumes"], "the journal is writable"


# --- placeholders and secrets --------------------------------------------------------------


def _refuse(*command: str, **passwords: str) -> subprocess.CompletedProcess[str]:
    """deploy/refuse-placeholders.sh with these passwords (and no others) in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("PASSWORD")}
    return subprocess.run(
        ["sh", str(REFUSE), *command],
        env={**env, **passwords},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_placeholder_passwords_are_refused_at_start() -> None:
    placeholders = {k: v for k, v in _env_example().items() if k.endswith("PASSWORD")}
    assert set(placeholders) == {"POSTGRES_PASSWORD", "TICKVAULT_APP_PASSWORD"}
    real = {"POSTGRES_PASSWORD": "b7f0c2e9a1d4", "TICKVAULT_APP_PASSWORD": "0e5d8a3c6f21"}
    for name, placeholder in placeholders.items():
        result = _refuse("echo", "started", **{**real, name: placeholder})
        assert result.returncode != 0
        assert "started" not in result.stdout
        assert f"tickvault: {name} is still the placeholder from .env.example" in result.stderr

    same = _refuse(
        "echo", "started", POSTGRES_PASSWORD="b7f0c2e9", TICKVAULT_APP_PASSWORD="b7f0c2e9"
    )
    assert same.returncode != 0
    assert "are the same" in same.stderr

    for passwords in (real, {"TICKVAULT_APP_PASSWORD": real["TICKVAULT_APP_PASSWORD"]}, {}):
        started = _refuse("echo", "started", **passwords)
        assert (started.returncode, started.stdout) == (0, "started\n"), started.stderr


def test_every_container_starts_through_the_refusal(compose: dict[str, Any]) -> None:
    services = compose["services"]
    db = services["db"]
    shell, script, entrypoint = db["entrypoint"]
    assert (shell, entrypoint) == ("sh", "docker-entrypoint.sh")
    assert f"./deploy/refuse-placeholders.sh:{script}:ro" in db["volumes"]
    assert db["command"][0] == "postgres", "an entrypoint set in compose drops the image's CMD"

    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["sh", "/app/deploy/refuse-placeholders.sh"]' in text
    assert re.search(r"^COPY deploy deploy$", text, re.MULTILINE)
    for name in ("migrate", "ingest", "api", "jupyter"):
        assert "entrypoint" not in services[name], f"{name} would skip the image's refusal"


def test_production_database_cleans_ahead_as_the_benchmarked_one(compose: dict[str, Any]) -> None:
    """BENCHMARKS.md measures the embedded store's settings: production's background writer
    must be the one measured, not PostgreSQL's default of 500 pages a second."""
    flags = compose["services"]["db"]["command"][1:]
    assert flags[::2] == ["-c"] * (len(flags) // 2), flags
    given = dict(flag.split("=", 1) for flag in flags[1::2])
    assert given == {name: value.strip("'") for name, value in BACKGROUND_WRITER.items()}


def test_every_compose_variable_is_in_env_example() -> None:
    missing = _compose_variables() - set(_env_example())
    assert not missing, f".env.example does not set {sorted(missing)}"


def test_every_variable_users_set_is_documented() -> None:
    """Whatever compose interpolates or .env.example offers, the configuration table explains."""
    missing = (_compose_variables() | set(_env_example())) - _documented_configuration()
    assert not missing, f"docs/configuration.md's table lacks {sorted(missing)}"


def test_env_example_holds_no_secret() -> None:
    text = ENV_EXAMPLE.read_text()
    assert not _JWT.search(text), ".env.example holds what looks like a JWT"
    entries = _env_example()
    assert entries["UPSTOX_ACCESS_TOKEN"] == "", "the example token must be empty (simulator)"
    assert entries.get("TICKVAULT_API_KEY", "") == ""
    for name, value in entries.items():
        if name.endswith("PASSWORD"):
            assert value.startswith("change-me"), f"{name}: placeholders only, and refused ones"


def test_dockerfile_serves_the_api_unprivileged() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^EXPOSE 8000$", text, re.MULTILINE)
    assert 'CMD ["tickvault", "run"]' in text
    assert re.search(r"^USER (?!root)\S+", text, re.MULTILINE), "the app should not run as root"
    for needed in ("pyproject.toml", "ingest", "api", "tickvault", "sql", "deploy"):
        assert re.search(rf"^COPY .*\b{needed}\b", text, re.MULTILINE), f"{needed} not copied"


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".env", ".venv", ".tickvault", ".git"} <= ignored
    assert not {"deploy", "requirements.lock"} & ignored, "the image needs them"


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    """Where a Docker CLI exists; this machine has none, and the tests above stand in for it."""
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI here")
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if plugin.returncode != 0:
        pytest.skip("the docker CLI here has no compose plugin")
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    (tmp_path / ".env").write_text(
        "POSTGRES_PASSWORD=b7f0c2e9a1d4\nTICKVAULT_APP_PASSWORD=0e5d8a3c6f21\n"
    )
    result = subprocess.run(
        ["docker", "compose", "config", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- the app's role, on a real TimescaleDB ---------------------------------------------------


@dataclass(frozen=True)
class AppRole:
    owner_url: str
    app_url: str
    role: str
    password: str
    server: DbServer

    def setup(self) -> subprocess.CompletedProcess[str]:
        """deploy/app_role.py, run as the migrate service runs it."""
        env = {
            **os.environ,
            "TICKVAULT_DATABASE_URL": self.owner_url,
            "TICKVAULT_APP_USER": self.role,
            "TICKVAULT_APP_PASSWORD": self.password,
        }
        return subprocess.run(
            [sys.executable, str(APP_ROLE_SCRIPT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def app_role(apache_server: DbServer) -> Iterator[AppRole]:
    """A migrated database (as the owner) and a role of the app's own, set up by the script."""
    owner_url = apache_server.create_database()
    role = f"tickvault_app_{uuid.uuid4().hex[:8]}"  # roles are per server: one of our own
    password = uuid.uuid4().hex
    created = AppRole(
        owner_url,
        make_conninfo(owner_url, user=role, password=password),
        role,
        password,
        apache_server,
    )
    try:
        result = created.setup()
        assert result.returncode == 0, result.stderr
        yield created
    finally:
        apache_server.drop_database(owner_url)
        with psycopg.connect(apache_server.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def _acl(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT relname, relacl::text FROM pg_class"
            " WHERE relnamespace = 'public'::regnamespace ORDER BY 1"
        ).fetchall()


def test_app_role_is_not_the_owner_and_may_create_nothing(app_role: AppRole) -> None:
    before = _acl(app_role.owner_url)
    again = app_role.setup()
    assert again.returncode == 0, again.stderr
    assert _acl(app_role.owner_url) == before, "a second run changes nothing"

    with psycopg.connect(app_role.owner_url) as conn:
        attributes = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls,"
            " (SELECT count(*) FROM pg_auth_members WHERE member = r.oid)"
            " FROM pg_roles r WHERE rolname = %s",
            [app_role.role],
        ).fetchone()
    assert attributes == (False, False, False, False, False, 0)

    with psycopg.connect(app_role.app_url, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (app_role.role,)
        for statement in (
            "CREATE TABLE public.sneaky (a int)",
            "CREATE FUNCTION public.sneaky() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "DROP TABLE ticks",
            "ALTER TABLE ticks ADD COLUMN sneaky int",
            "TRUNCATE ticks",
            "INSERT INTO tickvault_migrations VALUES ('999', 'sneaky', 'apache', false)",
            "DELETE FROM tickvault_migrations",
            "CREATE ROLE sneaky",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        for relation in (
            "ticks",
            "ingest_batches",
            "instruments",
            "subscriptions",
            "ohlc_1m",
            "ohlc_5m",
            "tickvault_migrations",
        ):
            conn.execute(f"SELECT * FROM {relation} LIMIT 1")

    # A table a later migration creates (as the owner) is the app's to use at once.
    with psycopg.connect(app_role.owner_url) as conn:
        conn.execute("CREATE TABLE later_migration (id bigserial PRIMARY KEY, v text)")
    with psycopg.connect(app_role.app_url) as conn:
        conn.execute("INSERT INTO later_migration (v) VALUES ('x')")
        conn.execute("UPDATE later_migration SET v = 'y'")
        conn.execute("DELETE FROM later_migration")


def test_app_role_password_is_the_one_given(app_role: AppRole) -> None:
    cluster = app_role.server.cluster
    if cluster is None:
        pytest.skip("needs the test-owned cluster's password-checked TCP port")
    tcp = conninfo_to_dict(cluster.tcp_url(conninfo_to_dict(app_role.owner_url)["dbname"]))
    tcp.update(user=app_role.role, password=app_role.password)
    with psycopg.connect(make_conninfo(**tcp)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (app_role.role,)
    tcp["password"] = "wrong"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(make_conninfo(**tcp))

    with psycopg.connect(app_role.owner_url) as conn:
        (stored,) = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", [app_role.role]
        ).fetchone()
    assert stored.startswith("SCRAM-SHA-256$")


def test_app_role_runs_the_ingest_and_the_bar_rollup(app_role: AppRole, tmp_path: Path) -> None:
    """What `tickvault run` does after its startup, as the app's role: the Apache edition's
    rollup included, since tickvault writes those bars itself."""
    with psycopg.connect(app_role.app_url) as conn:
        load_instruments(conn, default_sample_path())  # a temp table, then an upsert

    async def scenario() -> IngestStatus:
        settings = Settings(data_dir=tmp_path / "data", simulator_rate=3000, rollup_interval_s=1)
        service = WebSocketService(settings, app_role.app_url)
        await service.start()
        await asyncio.sleep(3)
        await service.stop()
        return service.status()

    status = asyncio.run(scenario())
    assert status.bars == BarsStatus(edition="apache", last_rollup_error=None)
    with psycopg.connect(app_role.app_url, autocommit=True) as conn:
        refresh_bars(conn)
        (ticks,) = conn.execute("SELECT count(*) FROM ticks").fetchone()
        (batches,) = conn.execute("SELECT count(*) FROM ingest_batches").fetchone()
        (subscribed,) = conn.execute(
            "SELECT count(*) FROM subscriptions WHERE status = 'subscribed'"
        ).fetchone()
        rolled = conn.execute(
            "SELECT relation FROM bar_rollup_state WHERE refreshed_at IS NOT NULL ORDER BY 1"
        ).fetchall()
    assert ticks > 500
    assert batches > 0
    assert subscribed > 0
    assert rolled == [("ohlc_1m",), ("ohlc_5m",), ("option_chain_1m",)]

    # Bars of a closed minute: the rollup, run as the app, materializes them.
    with psycopg.connect(app_role.app_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ticks (instrument_key, ts, ltp, volume_delta)"
            " VALUES ('K', now() - INTERVAL '1 hour', 100, 5)"
        )
        refresh_bars(conn)
        stored = conn.execute(
            "SELECT (SELECT count(*) FROM ohlc_1m_store WHERE instrument_key = 'K'),"
            " (SELECT count(*) FROM ohlc_5m_store WHERE instrument_key = 'K')"
        ).fetchone()
    assert stored == (1, 1)


def test_tickvault_starts_as_the_app_role(app_role: AppRole, tmp_path: Path) -> None:
    """The compose app's own command, against a database the migrate service prepared."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKVAULT_")}
    env.update(
        TICKVAULT_DATABASE_URL=app_role.app_url,
        TICKVAULT_DATA_DIR=str(tmp_path / "data"),
        TICKVAULT_ROLLUP_INTERVAL_S="1",
        UPSTOX_ACCESS_TOKEN="",
    )
    process = TickvaultCommand(["ingest"], env)
    try:
        deadline = time.monotonic() + 60
        ticks = 0
        while process.poll() is None and ticks == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            with psycopg.connect(app_role.owner_url) as conn:
                (ticks,) = conn.execute("SELECT count(*) FROM ticks").fetchone()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert ticks > 0, output[-2000:]
    assert process.returncode == 0, output[-2000:]
