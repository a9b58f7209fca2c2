"""docker-compose.yml, the Dockerfile and .env.example, checked as files (no Docker engine here).

What these guard is what breaks a `docker compose up` on someone else's machine: an image
that moves under a floating tag, an app that starts before its database accepts
connections, a variable nobody told the user to set, a secret committed by accident.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
README = REPO / "README.md"

# ${NAME}, ${NAME:-default}, ${NAME:?message}; `$$` escapes a literal dollar.
_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")


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


def _readme_configuration() -> set[str]:
    """The variables in README.md's configuration table (first column, in backticks)."""
    return set(re.findall(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|", README.read_text(), re.MULTILINE))


def _compose_variables() -> set[str]:
    return set(_VARIABLE.findall(COMPOSE.read_text()))


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    images = [svc["image"] for svc in compose["services"].values() if "image" in svc]
    assert "timescale/timescaledb:2.19.3-pg15" in images
    for image in images:
        _, colon, tag = image.rpartition(":")
        assert colon, f"{image} has no tag"
        assert tag != "latest", f"{image} floats on the latest tag"
    base = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert base[0] == "python:3.11-slim"
    for image in base:
        assert not image.endswith(":latest")


def test_database_has_a_healthcheck_and_keeps_its_data(compose: dict[str, Any]) -> None:
    db = compose["services"]["db"]
    assert "pg_isready" in db["healthcheck"]["test"]
    data = [v for v in db["volumes"] if v.endswith(":/var/lib/postgresql/data")]
    assert data, "the database files are not on a volume"
    volume = data[0].split(":")[0]
    assert volume in compose["volumes"], f"{volume} is not a named volume"


def test_app_waits_for_a_healthy_database(compose: dict[str, Any]) -> None:
    app = compose["services"]["app"]
    assert app["depends_on"]["db"]["condition"] == "service_healthy"
    assert app["env_file"] == ".env"
    url = app["environment"]["TICKVAULT_DATABASE_URL"]
    assert "@db:5432/" in url, "the app must reach the db service by its name"
    assert app["environment"]["TICKVAULT_API_HOST"] == "0.0.0.0"


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    published = [
        (name, port)
        for name, service in compose["services"].items()
        for port in service.get("ports", [])
    ]
    assert ("app", "127.0.0.1:8000:8000") in published
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_every_compose_variable_is_in_env_example() -> None:
    missing = _compose_variables() - set(_env_example())
    assert not missing, f".env.example does not set {sorted(missing)}"


def test_every_variable_users_set_is_documented_in_readme() -> None:
    """Whatever compose interpolates or .env.example offers, README's table explains."""
    missing = (_compose_variables() | set(_env_example())) - _readme_configuration()
    assert not missing, f"README.md's configuration table lacks {sorted(missing)}"


def test_env_example_holds_no_secret() -> None:
    text = ENV_EXAMPLE.read_text()
    assert not _JWT.search(text), ".env.example holds what looks like a JWT"
    entries = _env_example()
    assert entries["UPSTOX_ACCESS_TOKEN"] == "", "the example token must be empty (simulator)"
    assert entries.get("TICKVAULT_API_KEY", "") == ""


def test_dockerfile_installs_the_project_and_serves_the_api() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^RUN pip install (-e )?\.$", text, re.MULTILINE)
    assert re.search(r"^EXPOSE 8000$", text, re.MULTILINE)
    assert 'CMD ["tickvault", "run"]' in text
    assert re.search(r"^USER (?!root)\S+", text, re.MULTILINE), "the app should not run as root"
    for needed in ("pyproject.toml", "ingest", "api", "tickvault", "sql"):
        assert re.search(rf"^COPY .*\b{needed}\b", text, re.MULTILINE), f"{needed} not copied"


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".env", ".venv", ".tickvault", ".git"} <= ignored
