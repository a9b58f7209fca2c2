"""`tickvault journal set-aside`, and the one line that refuses a second instance.

A journal whose frames belong to another database (the database was dropped and created
again, or the data directory was pointed at another one) stops the ingest with
JournalMismatch (ingest/recovery.py). Setting the journal aside moves it, whole, to a dated
name beside it: nothing is deleted, and the next ingest starts a new journal of its own.
"""

from __future__ import annotations

import argparse

from core.config import Settings
from ingest.journal_dir import JournalInUse, journal_holder, set_aside


def in_use_line(settings: Settings, holder: str) -> str:
    """Why this instance stops: who runs on the data directory, and how two are kept apart."""
    return (
        f"another tickvault instance runs on the data directory "
        f"{settings.data_dir.absolute()}: {holder} holds its journal "
        f"{settings.journal_dir.absolute()}. This one stops. To run a second instance beside "
        "it, give it its own TICKVAULT_DATA_DIR, TICKVAULT_API_PORT and TICKVAULT_PG_PORT (or "
        "its own database: TICKVAULT_DATABASE_URL)."
    )


def check_single_instance(settings: Settings) -> None:
    """ValueError with that line when an ingest already runs on the data directory."""
    holder = journal_holder(settings.journal_dir)
    if holder is not None:
        raise ValueError(in_use_line(settings, holder))


def _set_aside(settings: Settings, args: argparse.Namespace) -> int:
    directory = settings.journal_dir
    if not directory.is_dir():
        raise ValueError(f"there is no journal to set aside at {directory.absolute()}")
    try:
        target = set_aside(directory)
    except JournalInUse as refused:
        raise ValueError(
            f"journal {directory.absolute()} is in use by {refused.holder}: stop that ingest "
            "first (a journal is set aside only while no ingest holds it)"
        ) from None
    print(
        f"set aside the journal {directory.absolute()} as {target.absolute()} (with any frames "
        "not yet written to its database); the next start begins a new journal"
    )
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    journal = commands.add_parser("journal", help="the frame journal").add_subparsers(
        dest="journal_command", required=True
    )
    journal.add_parser(
        "set-aside",
        help="move the journal to a dated name beside it (refused while an ingest holds it);"
        " the next start begins a new journal",
    ).set_defaults(handler=_set_aside)
