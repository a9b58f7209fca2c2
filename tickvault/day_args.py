"""The arguments of the commands that work on one trading day's instruments (`tickvault
audit`, `tickvault backfill`): `--date`, `--symbols` and `--json`, read the same way."""

from __future__ import annotations

import argparse
from datetime import date

from core.ist import ist_today


def add_day_arguments(parser: argparse.ArgumentParser, every: str) -> None:
    """`every`: what no `--symbols` means, e.g. "every subscription"."""
    parser.add_argument(
        "--date",
        type=date.fromisoformat,
        default=None,
        help="IST trading date YYYY-MM-DD (default: today in IST)",
    )
    parser.add_argument(
        "--symbols",
        nargs="+",
        default=[],
        metavar="SYMBOL",
        help=f"trading symbols, index names or instrument keys (default: {every});"
        " commas separate too",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def day_of(args: argparse.Namespace) -> date:
    return args.date or ist_today()


def symbols_of(args: argparse.Namespace) -> list[str]:
    return [name.strip() for item in args.symbols for name in item.split(",") if name.strip()]
