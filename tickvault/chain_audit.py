"""`tickvault audit --chain NIFTY`: our stored option chain against Upstox's option-chain answer
at one moment, contract by contract (ingest/jobs/chain_audit.py says how and within what).

Exit status as the bar audit's: 0 when every compared contract agrees, 2 when some differ,
1 when it could not run (no token, a refused token, no such chain, nothing compared).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import date
from typing import Any

import pandas as pd

from core.config import Settings
from ingest.jobs.chain_audit import run_chain_audit
from ingest.tokens import UpstoxAccess
from ingest.upstox.candles import CandleError
from store.instruments import UnknownSymbol
from store.local.url import database_url
from store.option_chain import ChainError

DIFFERENCES_FOUND = 2
COULD_NOT_RUN = 1


def add_chain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chain",
        metavar="UNDERLYING",
        help="audit this underlying's option chain (NIFTY, BANKNIFTY, an F&O stock) now,"
        " instead of a day's bars",
    )
    parser.add_argument(
        "--expiry",
        type=date.fromisoformat,
        default=None,
        help="with --chain: the expiry YYYY-MM-DD (default: the nearest not closed)",
    )


def chain_audit_command(settings: Settings, args: argparse.Namespace) -> int:
    underlying = args.chain
    try:
        access = UpstoxAccess.chosen(settings)
        report = asyncio.run(
            run_chain_audit(database_url(settings), access, underlying, args.expiry)
        )
    except (CandleError, ChainError, UnknownSymbol) as error:
        print(f"tickvault: chain audit of {underlying}: {error}", file=sys.stderr)
        return COULD_NOT_RUN
    result = report.as_json()
    print(json.dumps(result, indent=2) if args.json else render(result))
    if result["verdict"] == "nothing compared":
        print(
            f"tickvault: chain audit of {underlying}: no contract of ours had a tick to compare"
            " (is the ingest following this chain?)",
            file=sys.stderr,
        )
        return COULD_NOT_RUN
    if result["verdict"] == "differs":
        print(
            f"tickvault: chain audit of {underlying}: {result['differ']} of"
            f" {result['compared']} contracts differ, {result['missing_theirs']} not in"
            " Upstox's answer",
            file=sys.stderr,
        )
        return DIFFERENCES_FOUND
    return 0


def render(result: dict[str, Any]) -> str:
    head = (
        f"chain audit of {result['underlying']} {result['expiry']} at"
        f" {result['answered_at'][11:19]} UTC: {result['verdict'].upper()}:"
        f" {result['agree']} of {result['compared']} contracts agree on LTP, OI and IV"
        f" ({result['no_tick']} without a tick stored: outside the window followed;"
        f" {result['unknown']} unknown to our instrument master)"
    )
    rows = [
        {
            "contract": item["instrument_key"],
            "strike": item["strike"],
            "type": item["option_type"],
            **{f"{name} ours": item["ours"][name] for name in ("ltp", "oi", "iv")},
            **{f"{name} theirs": item["theirs"][name] for name in ("ltp", "oi", "iv")},
        }
        for item in result["differences"]
    ]
    return head if not rows else f"{head}\n{pd.DataFrame(rows).to_string(index=False)}"
