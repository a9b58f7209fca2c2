"""`tickvault login` against the simulator's OAuth login: dialog, redirect, exchange, stored.

The test plays the browser: it opens the dialog URL the command prints and follows (or, for
the pasted path, reads) the redirect. The command is a real process; the simulator a real
server, whose new token then is the one the feed accepts.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from core.ist import IST
from core.upstox_wire import AUTHORIZE_PATH, LOGIN_TOKEN_PATH
from ingest.simulator import FeedSimulator
from ingest.tokens import load_token, save_token, token_path
from tests.conftest import REPO, free_port

CLIENT_ID = "app-4e1b"
SECRET = "client-secret-9d3a77"


def _environment(data_dir: Path, simulator: FeedSimulator, redirect: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TICKVAULT_", "UPSTOX_"))},
        "TICKVAULT_DATA_DIR": str(data_dir),
        "UPSTOX_ACCESS_TOKEN": "",
        "UPSTOX_CLIENT_ID": CLIENT_ID,
        "UPSTOX_CLIENT_SECRET": SECRET,
        "UPSTOX_REDIRECT_URI": redirect,
        "UPSTOX_LOGIN_BASE": simulator.login_url,
    }


async def _start(
    data_dir: Path, simulator: FeedSimulator, redirect: str, *args: str, secret: str = SECRET
) -> tuple[asyncio.subprocess.Process, str, str]:
    """Start `tickvault login`; return the process, what it printed and the dialog URL."""
    environment = {**_environment(data_dir, simulator, redirect), "UPSTOX_CLIENT_SECRET": secret}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tickvault",
        "login",
        *args,
        cwd=REPO,
        env=environment,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    printed = ""
    while "    http" not in printed or not printed.endswith("\n\n"):
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line, f"the command ended early: {printed}"
        printed += line.decode()
    dialog = re.search(r"^    (http\S+)$", printed, re.MULTILINE).group(1)
    return process, printed, dialog


async def _login(
    data_dir: Path, simulator: FeedSimulator, redirect: str, *args: str, secret: str = SECRET
) -> tuple[int, str, str]:
    """Run `tickvault login`, play the browser, return (exit status, stdout, stderr)."""
    process, printed, dialog = await _start(data_dir, simulator, redirect, *args, secret=secret)
    assert process.stdout is not None
    assert process.stdin is not None
    async with httpx.AsyncClient(trust_env=False, timeout=10) as browser:
        answer = await browser.get(dialog)
        assert answer.status_code == 302
        location = answer.headers["location"]
        if location.startswith("http://127.0.0.1") and "--paste" not in args:
            await process.stdout.readline()  # "waiting for the redirect": it listens
            landed = await browser.get(location)
            assert landed.status_code == 200
            assert "logged in" in landed.text
        else:
            process.stdin.write(f"{location}\n".encode())
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, printed + stdout.decode(), stderr.decode()


async def _accepted(simulator: FeedSimulator, token: str) -> bool:
    async with httpx.AsyncClient(trust_env=False) as http:
        answer = await http.get(
            simulator.url + AUTHORIZE_PATH, headers={"Authorization": f"Bearer {token}"}
        )
    return answer.status_code == 200


def _check_stored(data_dir: Path, stdout: str, stderr: str) -> str:
    stored = load_token(data_dir)
    assert stored is not None
    assert stored.kind == "daily"
    expires = stored.expires_at.astimezone(IST)
    assert (expires.hour, expires.minute) == (3, 30)
    assert 0 < (expires - datetime.now(IST)).total_seconds() <= 24 * 3600
    assert stat.S_IMODE(token_path(data_dir).stat().st_mode) == 0o600
    for secret in (stored.token, SECRET):
        assert secret not in stdout
        assert secret not in stderr
    return stored.token


@pytest.mark.parametrize(
    "redirect",
    ["http://127.0.0.1:{port}/upstox/callback", "https://app.example/callback?from=upstox"],
    ids=["loopback-listener", "pasted-url"],
)
def test_login_stores_the_token_the_simulator_issued(tmp_path: Path, redirect: str) -> None:
    data_dir = tmp_path / "data"
    save_token(data_dir, "yesterdays-token")
    redirect = redirect.format(port=free_port())

    async def scenario() -> None:
        async with FeedSimulator(token="yesterdays-token", client_secret=SECRET) as simulator:
            code, stdout, stderr = await _login(data_dir, simulator, redirect)
            assert code == 0, stderr
            assert "stored the daily token" in stdout
            token = _check_stored(data_dir, stdout, stderr)
            assert await _accepted(simulator, token)
            assert not await _accepted(simulator, "yesterdays-token")

    asyncio.run(scenario())


def test_login_takes_a_pasted_bare_code(tmp_path: Path) -> None:
    """--paste with a loopback redirect URI: nothing listens, the code alone is pasted."""
    data_dir = tmp_path / "data"

    async def scenario() -> None:
        async with FeedSimulator(client_secret=SECRET) as simulator:
            redirect = f"http://127.0.0.1:{free_port()}/cb"
            environment = _environment(data_dir, simulator, redirect)
            async with httpx.AsyncClient(trust_env=False) as browser:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "tickvault", "login", "--paste",
                    cwd=REPO, env=environment, stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                assert process.stdout is not None
                line = b""
                while b"    http" not in line:
                    line = await asyncio.wait_for(process.stdout.readline(), 30)
                answer = await browser.get(line.decode().strip())
                code = httpx.URL(answer.headers["location"]).params["code"]
            stdout, stderr = await process.communicate(f"{code}\n".encode())
            assert process.returncode == 0, stderr.decode()
            token = _check_stored(data_dir, stdout.decode(), stderr.decode())
            assert await _accepted(simulator, token)

    asyncio.run(scenario())


def test_a_wrong_client_secret_fails_in_one_line_and_stores_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    wrong = "not-the-secret-1234"

    async def scenario() -> tuple[int, str, str]:
        async with FeedSimulator(client_secret=SECRET) as simulator:
            redirect = f"http://127.0.0.1:{free_port()}/cb"
            return await _login(data_dir, simulator, redirect, secret=wrong)

    code, stdout, stderr = asyncio.run(scenario())
    assert code == 1
    assert stderr.strip().splitlines() == [
        "tickvault: the token exchange answered HTTP 401 (wrong client_secret)"
    ]
    assert wrong not in stdout + stderr
    assert not token_path(data_dir).exists()


def test_login_needs_the_app_settings(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tickvault", "login"],
        cwd=REPO,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("TICKVAULT_", "UPSTOX_"))},
            "TICKVAULT_DATA_DIR": str(tmp_path),
            "UPSTOX_CLIENT_ID": CLIENT_ID,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "needs UPSTOX_CLIENT_SECRET, UPSTOX_REDIRECT_URI" in done.stderr


def test_the_listener_takes_only_a_redirect_with_this_logins_state(tmp_path: Path) -> None:
    """Anyone can send a request to the loopback redirect URI: a code without the state, a
    wrong state, a stray request are refused (400, saying why) and the login waits on; only
    the real redirect ends it, and only its code is exchanged."""
    data_dir = tmp_path / "data"
    redirect = f"http://127.0.0.1:{free_port()}/upstox/callback"

    async def scenario() -> None:
        async with FeedSimulator(client_secret=SECRET) as simulator:
            process, _, dialog = await _start(data_dir, simulator, redirect)
            assert process.stdout is not None
            await process.stdout.readline()  # "waiting for the redirect": it listens
            async with httpx.AsyncClient(trust_env=False, timeout=10) as browser:
                # Someone else's real code, from a dialog opened without a state.
                theirs = await browser.get(dialog.split("&state=")[0])
                their_code = httpx.URL(theirs.headers["location"]).params["code"]
                ours = httpx.URL((await browser.get(dialog)).headers["location"])
                state = ours.params["state"]
                assert len(state) >= 16
                for params, why in (
                    ({"code": their_code}, "carried no state"),
                    ({"code": their_code, "state": state[:-1] + "x"}, "is not this login's"),
                    ({"code": their_code, "state": "é" * 22}, "is not this login's"),
                    ({"state": state}, "carried no code"),
                ):
                    refused = await browser.get(redirect, params=params)
                    assert refused.status_code == 400, params
                    assert why in refused.text
                    assert "still waiting" in refused.text
                    assert process.returncode is None
                stray = await browser.get(redirect.replace("/upstox/callback", "/favicon.ico"))
                assert stray.status_code == 404
                await asyncio.sleep(0.5)
                assert process.returncode is None, "a refused request ended the login"
                landed = await browser.get(str(ours))
                assert landed.status_code == 200
                assert "logged in" in landed.text
            stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
            assert process.returncode == 0, stderr.decode()
            assert stderr.decode().count("refused a request to the redirect URI") == 4
            assert their_code not in stdout.decode() + stderr.decode()
            assert await _accepted(simulator, _check_stored(data_dir, "", ""))
            # Their code was never exchanged: it still buys a token (theirs, not stored).
            async with httpx.AsyncClient(trust_env=False) as http:
                unused = await http.post(
                    simulator.login_url + LOGIN_TOKEN_PATH,
                    data={
                        "code": their_code,
                        "client_id": CLIENT_ID,
                        "client_secret": SECRET,
                        "redirect_uri": redirect,
                        "grant_type": "authorization_code",
                    },
                )
            assert unused.status_code == 200, unused.text
            assert load_token(data_dir).token != unused.json()["access_token"]

    asyncio.run(scenario())


def test_a_pasted_redirect_without_the_state_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    async def scenario() -> tuple[int, str]:
        async with FeedSimulator(client_secret=SECRET) as simulator:
            redirect = "https://app.example/callback"
            process, _, dialog = await _start(data_dir, simulator, redirect)
            async with httpx.AsyncClient(trust_env=False) as browser:
                answer = await browser.get(dialog.split("&state=")[0])
            location = answer.headers["location"]
            _, stderr = await process.communicate(f"{location}\n".encode())
            return process.returncode, stderr.decode()

    code, stderr = asyncio.run(scenario())
    assert code == 1
    assert "the redirect carried no state, so its code may be anyone's: start again" in stderr
    assert not token_path(data_dir).exists()
