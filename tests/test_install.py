"""A regular `pip install .` (not editable) carries everything, the migrations included."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

from tests.conftest import ALL_MIGRATIONS, REPO, DbServer

UNSHIPPED = (".git", ".venv", ".tickvault", "build", "*.egg-info", "__pycache__", ".*_cache")


def test_a_regular_install_migrates_a_database(apache_server: DbServer, tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves a build/ directory beside the sources.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*UNSHIPPED))
    wheels = tmp_path / "wheels"
    build = ["wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    subprocess.run(
        [sys.executable, "-m", "pip", *build, str(source)],
        check=True,
        capture_output=True,
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The dependencies come from this interpreter's site-packages (no network needed); a .pth
    # line names a directory, so the project's editable finder there stays out.
    (site_packages,) = venv.glob("lib/python*/site-packages")
    (site_packages / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    [wheel] = wheels.glob("tickvault-*.whl")
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )

    url = apache_server.create_database(migrated=False)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TICKVAULT_")}
        migrate = subprocess.run(
            [str(venv / "bin" / "tickvault"), "db", "migrate"],
            env={**env, "TICKVAULT_DATABASE_URL": url},
            cwd=tmp_path,  # not the repository: nothing may be read from the source tree
            capture_output=True,
            text=True,
            check=False,
        )
        assert migrate.returncode == 0, migrate.stderr
        assert migrate.stdout.strip().splitlines()[-1] == (
            f"applied migrations: {', '.join(ALL_MIGRATIONS)}"
        )
    finally:
        apache_server.drop_database(url)
    # Every package, as the image's `tickvault run` imports them: a package missing from
    # pyproject.toml's list would fail here, not in production.
    imports = "import api.app, ingest.service, ingest.simulator.command, tickvault.cli, store.sql"
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", f"{imports}; print(store.sql.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(venv))
