"""Subscription changes from an API process, sent to `tickvault ingest` over its control socket.

A real `tickvault ingest` (on its built-in simulator) against a test database, and the API
in-process without an ingest of its own, as `tickvault api` runs it.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import stat
from pathlib import Path

import httpx
import pytest

from api import create_app
from core.config import Secret, Settings
from ingest.channels.control import (
    MAX_LINE_BYTES,
    Answer,
    InvalidMessage,
    Subscribe,
    Unsubscribe,
    control_path,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
)
from tests.conftest import DbServer
from tests.test_api import API_KEY, client, sample_database, serve, wait_for
from tests.test_api_process import ingest_process, stop

STATUS = "/api/v1/websocket/status"
SUBSCRIPTIONS = "/api/v1/websocket/subscriptions"
VSTIND = "NSE_EQ|INE710A01016"
KEY = {"X-API-Key": API_KEY}
LIMIT_DETAIL = re.compile(
    r"^cannot subscribe \d+ keys in mode 'full': 1 connection\(s\) have room for \d+ more "
    r"\(per connection 3 keys when 'full' is the only mode, 2 when modes are combined\); "
    r"nothing was subscribed$"
)


def _ask(path: Path, line: bytes) -> dict[str, object]:
    """One raw line to the control socket, its answer as JSON."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        # A line over the limit: the ingest answers and closes before reading it all.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(line)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return json.loads(answer)


def _subscribed_symbols(http: httpx.Client) -> list[str]:
    response = http.get(STATUS)
    return response.json()["subscribed_symbols"] if response.status_code == 200 else []


def _listed(http: httpx.Client) -> dict[str, dict[str, object]]:
    return {row["symbol"]: row for row in http.get(SUBSCRIPTIONS).json()}


def test_subscription_changes_reach_the_ingest_process(
    apache_server: DbServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    path = control_path(data_dir)
    settings = Settings(data_dir=data_dir, api_key=Secret(API_KEY))
    limits = {"TICKVAULT_FEED_MODE": "ltpc", "TICKVAULT_MODE_LIMITS": "full:3/2"}
    with (
        sample_database(apache_server) as url,
        serve(create_app(settings, url)) as base,
        client(base) as http,
    ):
        # No ingest yet: no socket, 503 with the reason.
        response = http.post(SUBSCRIPTIONS, json={"symbols": ["VSTIND"]}, headers=KEY)
        assert response.status_code == 503
        assert "start tickvault ingest" in response.json()["detail"]

        with ingest_process(url, data_dir, **limits) as ingest:
            wait_for(lambda: "INFY" in _subscribed_symbols(http))
            assert path.is_socket()
            assert stat.S_IMODE(path.stat().st_mode) == 0o600

            body = {"symbols": ["VSTIND"], "mode": "ltpc"}
            response = http.post(SUBSCRIPTIONS, json=body, headers=KEY)
            assert response.status_code == 200, response.text
            assert response.json() == {
                "mode": "ltpc",
                "subscribed": [{"symbol": "VSTIND", "instrument_key": VSTIND}],
            }
            assert _listed(http)["VSTIND"]["status"] == "subscribed"
            wait_for(lambda: "VSTIND" in _subscribed_symbols(http), timeout=10)

            response = http.delete(f"{SUBSCRIPTIONS}/VSTIND", headers=KEY)
            assert response.status_code == 200, response.text
            assert response.json() == {
                "symbol": "VSTIND",
                "instrument_key": VSTIND,
                "status": "unsubscribed",
            }
            assert "VSTIND" not in _listed(http)
            wait_for(lambda: "VSTIND" not in _subscribed_symbols(http), timeout=10)

            # Over the feed's limits (2 keys in 'full' beside 'ltpc'): 409, nothing changed.
            three = [s for s in _listed(http) if s != "VSTIND"][:3]
            response = http.post(
                SUBSCRIPTIONS, json={"symbols": three, "mode": "full"}, headers=KEY
            )
            assert response.status_code == 409, response.text
            assert LIMIT_DETAIL.match(response.json()["detail"]), response.text
            assert {_listed(http)[s]["mode"] for s in three} == {"ltpc"}

            # The API still resolves symbols itself, and checks the key.
            response = http.post(SUBSCRIPTIONS, json={"symbols": ["NOSUCH"]}, headers=KEY)
            assert response.status_code == 404
            assert "'NOSUCH'" in response.json()["detail"]
            response = http.delete(f"{SUBSCRIPTIONS}/INFY", headers={"X-API-Key": "wrong"})
            assert response.status_code == 401

            # Lines that are not requests are answered "invalid"; the ingest runs on.
            for line in (
                b"{not json\n",
                b"\n",
                b"[1, 2]\n",
                b'{"op": "subscribe", "keys": "INFY", "mode": "full"}\n',
                b'{"op": "unsubscribe", "keys": ["INFY"], "extra": 1}\n',
                b'{"op": "drop_table"}\n',
                b"[" * 100_000 + b"\n",
                b"x" * (MAX_LINE_BYTES + 10) + b"\n",
            ):
                answer = _ask(path, line)
                assert answer["ok"] is False, line[:80]
                assert answer["error"] == "invalid", line[:80]
                assert "Traceback" not in answer["detail"]
            request = {"op": "subscribe", "keys": [VSTIND], "mode": "fast"}
            answer = _ask(path, json.dumps(request).encode() + b"\n")
            assert answer["error"] == "invalid"
            assert "unknown mode 'fast'" in answer["detail"]
            request = {"op": "unsubscribe", "keys": [VSTIND]}
            assert _ask(path, json.dumps(request).encode() + b"\n") == {"ok": True}
            assert ingest.poll() is None
            response = http.post(SUBSCRIPTIONS, json={"symbols": ["VSTIND"]}, headers=KEY)
            assert response.status_code == 200, response.text
            assert _listed(http)["VSTIND"]["mode"] == "full"

            stop(ingest)
        # Stopped: the socket is gone, and changes answer 503.
        assert not path.exists()
        for response in (
            http.post(SUBSCRIPTIONS, json={"symbols": ["VSTIND"]}, headers=KEY),
            http.delete(f"{SUBSCRIPTIONS}/VSTIND", headers=KEY),
        ):
            assert response.status_code == 503
            assert "is absent" in response.json()["detail"]


def test_a_socket_left_by_a_killed_ingest_answers_503(
    apache_server: DbServer, tmp_path: Path
) -> None:
    path = control_path(tmp_path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # bound, never listening: what a killed process leaves
    settings = Settings(data_dir=tmp_path, api_key=Secret(API_KEY))
    try:
        with (
            sample_database(apache_server) as url,
            serve(create_app(settings, url)) as base,
            client(base) as http,
        ):
            for response in (
                http.post(SUBSCRIPTIONS, json={"symbols": ["INFY"]}, headers=KEY),
                http.delete(f"{SUBSCRIPTIONS}/INFY", headers=KEY),
            ):
                assert response.status_code == 503
                assert "has stopped" in response.json()["detail"]
    finally:
        stale.close()


def test_messages_round_trip_and_are_checked() -> None:
    for request in (Subscribe(["A|1", "B|2"], "full"), Unsubscribe(["A|1"])):
        assert decode_request(encode_request(request)) == request
    for answer in (Answer(ok=True), Answer(ok=False, error="limit", detail="too many")):
        assert decode_answer(encode_answer(answer)) == answer
    for line in (b'{"ok": "yes"}', b'{"ok": false, "error": "boom"}', b'{"ok": true, "x": 1}'):
        with pytest.raises(InvalidMessage):
            decode_answer(line)
    for line in (b'{"op": "subscribe", "keys": [""], "mode": "full"}', b'{"op": "subscribe"}'):
        with pytest.raises(InvalidMessage):
            decode_request(line)
