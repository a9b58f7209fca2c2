"""`tickvault token set` and `tickvault token status`: the Upstox access token on this machine.

The token is read from standard input, never from an argument (which would stay in the shell's
history and show in `ps`), without echo when a person types it; it goes to the data
directory's token file (ingest/tokens.py), which a running ingest follows.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from core.config import Settings
from ingest.channels.latest_reader import LatestTickReader
from ingest.channels.latest_table import IngestNotRunning, SlotBusy, published_path
from ingest.tokens import (
    ENV_WINS,
    StoredToken,
    choose_token,
    save_token,
    token_path,
    what_the_ingest_does,
)


def read_secret(prompt: str, stream: TextIO | None = None) -> str:
    """One line from `stream` (standard input): a prompt without echo when it is a terminal."""
    stream = stream or sys.stdin
    if stream.isatty():
        return getpass.getpass(prompt)
    return stream.readline()


def store(settings: Settings, token: str, kind: str) -> StoredToken:
    """Save the token and say where, what it is, and whether it will be used."""
    stored = save_token(settings.data_dir, token, kind)
    print(f"stored the {kind} token in {token_path(settings.data_dir)} (mode 0600){_ends(stored)}")
    if settings.upstox_access_token:
        print(f"warning: {ENV_WINS}", file=sys.stderr)
    else:
        ingest = _running_ingest_token(settings)
        print(what_the_ingest_does(ingest["source"] if ingest else None))
    return stored


def token_set(settings: Settings, args: argparse.Namespace) -> int:
    token = read_secret("Upstox access token (not shown): ")
    store(settings, token, "daily" if args.daily else "analytics")
    return 0


def token_status(settings: Settings, args: argparse.Namespace) -> int:
    """Where the token comes from and what the running ingest made of it; exit status 3
    when there is none, it has expired, or the ingest says it is rejected."""
    choice = choose_token(settings)
    usable = choice.source != "missing"
    if choice.source == "env":
        print("source: env (UPSTOX_ACCESS_TOKEN)")
    elif choice.stored is not None:
        stored = choice.stored
        print(f"source: file ({token_path(settings.data_dir)})")
        print(f"kind: {stored.kind}, saved {stored.saved_at.isoformat()}{_ends(stored)}")
        if stored.expires_at is not None and stored.expires_at <= datetime.now(UTC):
            print("state: expired: run tickvault login for a new daily token")
            usable = False
    else:
        print("source: missing (no UPSTOX_ACCESS_TOKEN, none stored): the simulator is the feed")
    ingest = _running_ingest_token(settings)
    if ingest is None:
        print("ingest: none runs on this data directory")
    else:
        print(f"ingest: token from {ingest['source']}, {ingest['state']}")
        usable = usable and ingest["state"] != "rejected"
    return 0 if usable else 3


def _ends(stored: StoredToken) -> str:
    return f", expires {stored.expires_at.isoformat()}" if stored.expires_at else ""


def _running_ingest_token(settings: Settings) -> dict[str, Any] | None:
    """The token section of the status the ingest on this data directory publishes."""
    path = published_path(settings.data_dir)
    if not path.exists():
        return None
    reader = LatestTickReader(path)
    try:
        status = reader.status()
    except (IngestNotRunning, SlotBusy):
        return None
    finally:
        reader.close()
    return (status or {}).get("token")


def register(commands: Any) -> None:
    """`tickvault token set | status`."""
    token = commands.add_parser("token", help="the Upstox access token").add_subparsers(
        dest="token_command", required=True
    )
    set_ = token.add_parser(
        "set",
        help="store a token read from standard input (0600 file in the data directory)",
        description="Reads the token from standard input: `tickvault token set` and paste it, "
        "or `tickvault token set < file`. Never give it as an argument.",
    )
    set_.add_argument(
        "--daily", action="store_true", help="a daily OAuth token (ends 03:30 IST), not Analytics"
    )
    set_.set_defaults(handler=token_set)
    token.add_parser("status", help="the token's source and state (never the token)").set_defaults(
        handler=token_status
    )
