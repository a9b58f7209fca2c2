"""`tickvault backfill`: fill a day's gaps with Upstox's 1-minute candles, then say what was filled.

Exit status 0 when it ran (every instrument's line says what it filled or why not), 1 when it
could not (no token, a refused token, an unknown symbol, no database).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import pandas as pd

from core.config import Settings
from ingest.jobs.backfill import BackfillReport, UnknownSymbols, backfill_day
from ingest.tokens import choose_token
from ingest.upstox.candles import CandleError
from store.local.url import database_url
from tickvault.day_args import add_day_arguments, day_of, symbols_of


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "backfill", help="fill a day's gaps in the bars with Upstox's 1-minute candles"
    )
    add_day_arguments(parser, every="every subscription")
    parser.set_defaults(handler=backfill_command)


def backfill_command(settings: Settings, args: argparse.Namespace) -> int:
    day, symbols = day_of(args), symbols_of(args)
    token = choose_token(settings).token  # the environment's, else `tickvault token set`'s
    if not token:
        print(
            f"tickvault: backfill of {day}: Upstox's candles need a token: UPSTOX_ACCESS_TOKEN"
            " or `tickvault token set` (an Analytics Token will do)",
            file=sys.stderr,
        )
        return 1
    try:
        report = asyncio.run(
            backfill_day(database_url(settings), settings.upstox_api_base, token, day, symbols)
        )
    except (CandleError, UnknownSymbols) as error:
        print(f"tickvault: backfill of {day}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report.as_json(), indent=2) if args.json else render(report))
    return 0


def render(report: BackfillReport) -> str:
    """One line per instrument with gaps, then the total."""
    if not report.instruments:
        return f"{report.day}: no gaps left to fill"
    table = pd.DataFrame(
        {
            "instrument": item.instrument_key,
            "symbol": item.symbol,
            "gap minutes": item.gap_minutes,
            "candles": item.candles,
            "filled": item.filled,
            "error": item.error or "-",
        }
        for item in report.instruments
    ).to_string(index=False)
    return f"backfill of {report.day}: {report.filled} minutes filled\n{table}"
