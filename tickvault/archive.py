"""`tickvault archive`: write finished days of ticks to Parquet by hand, then optionally
apply retention, with the settings the ingest uses (store/archive.py, store/retention.py)."""

from __future__ import annotations

import argparse
import sys
from datetime import date

import psycopg

from core.config import Settings
from store.archive import ArchivedDay, ArchiveError, archive_day, archive_finished_days
from store.editions import server_edition
from store.local.url import database_url
from store.retention import RetentionResult, apply_retention


def add_archive_parser(commands: argparse._SubParsersAction) -> None:
    archive = commands.add_parser(
        "archive",
        help="write finished days of ticks to Parquet: the data directory's archive/, or"
        " TICKVAULT_ARCHIVE_URL's object storage",
    )
    archive.add_argument(
        "--date",
        type=date.fromisoformat,
        metavar="YYYY-MM-DD",
        help="this IST trading day only (default: every finished day not archived yet)",
    )
    archive.add_argument(
        "--retention",
        action="store_true",
        help="then drop tick chunks past TICKVAULT_TICKS_RETENTION_DAYS whose days read back"
        " from the archive match the database",
    )
    archive.set_defaults(handler=run_archive)


def run_archive(settings: Settings, args: argparse.Namespace) -> int:
    with psycopg.connect(database_url(settings), autocommit=True) as conn:
        try:
            if args.date is not None:
                days = [archive_day(conn, settings.archive_root, args.date)]
            else:
                days = archive_finished_days(conn, settings.archive_root)
        except (ArchiveError, OSError) as error:  # OSError: object storage refused or unreachable
            print(f"tickvault: {error}", file=sys.stderr)
            return 1
        for day in days:
            print(describe_day(day))
        if not days:
            print("every finished day is archived already")
        if args.retention:
            result = apply_retention(
                conn,
                server_edition(conn),
                settings.ticks_retention_days,
                settings.bars_retention_days,
                settings.archive_root if settings.archive_ticks else None,
            )
            print(describe_retention(result))
    return 0


def describe_day(day: ArchivedDay) -> str:
    if day.action == "empty":
        return f"{day.day}: no ticks in the database, nothing written"
    if day.action == "damaged":
        return (
            f"{day.day}: damaged: its files in {day.directory} no longer match their manifest,"
            " and retention has dropped part of the day from the database; left as it is"
        )
    return f"{day.day}: {day.action}, {day.row_count} ticks in {day.directory}"


def describe_retention(result: RetentionResult) -> str:
    if not result.ticks_retention_days:
        ticks = "ticks are kept forever"
    else:
        ticks = f"{result.tick_chunks_dropped} tick chunks dropped"
        if result.ticks_dropped_before is not None:
            ticks += f" (nothing before {result.ticks_dropped_before.isoformat()} is left)"
        if result.held_back_by is not None:
            ticks += f"; held back by {result.held_back_by}"
        for day, why in sorted(result.kept.items()):
            ticks += f"; kept {day}: {why}"
    bars = (
        f"{result.bar_chunks_dropped} bar chunks dropped,"
        f" {result.backfilled_minutes_deleted} backfilled minutes deleted"
        if result.bars_retention_days
        else "bars are kept forever"
    )
    if result.bars_skipped is not None:
        bars = result.bars_skipped
    return (
        f"retention ({result.edition} edition, then run by {result.scheduled_by}): {ticks}; {bars}"
    )
