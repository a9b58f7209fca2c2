"""`tickvault audit`: a day's 1-minute bars against Upstox's candles, as a table or JSON.

Exit status 0 when every instrument is clean (or none had bars), 2 when the audit found
differences, 1 when it could not run (no token, a refused token, no database). The results
are kept in audit_results either way (GET /api/v1/audit reads them back).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import replace
from typing import Any

import pandas as pd

from ingest.config import Settings
from ingest.jobs.audit import run_audit
from ingest.tokens import choose_token
from ingest.upstox.candles import CandleError
from store.local.url import database_url
from tickvault.day_args import add_day_arguments, day_of, symbols_of

DIFFERENCES_FOUND = 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "audit", help="compare a day's 1-minute bars with Upstox's candles (parity audit)"
    )
    add_day_arguments(parser, every="every instrument with bars that day")
    parser.set_defaults(handler=audit_command)


def audit_command(settings: Settings, args: argparse.Namespace) -> int:
    day, symbols = day_of(args), symbols_of(args)
    try:
        # The environment's token, else the one `tickvault token set` stored.
        with_token = replace(settings, upstox_access_token=choose_token(settings).token)
        report = asyncio.run(run_audit(database_url(settings), with_token, day, symbols))
    except CandleError as error:
        print(f"tickvault: audit of {day}: {error}", file=sys.stderr)
        return 1
    result = report.as_json()
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0 if result["clean"] or not result["instruments"] else DIFFERENCES_FOUND


def render(result: dict[str, Any]) -> str:
    """One line per instrument, then the verdict of the day."""
    rows = [_row(item) for item in result["instruments"]]
    if not rows:
        return f"{result['trading_date']}: no bars stored that day, nothing to audit"
    table = pd.DataFrame(rows).to_string(index=False)
    verdict = "clean" if result["clean"] else "DIFFERENCES FOUND"
    return f"parity audit of {result['trading_date']}: {verdict}\n{table}"


def _row(item: dict[str, Any]) -> dict[str, Any]:
    details, volume = item["details"], item["details"]["volume"]
    return {
        "instrument": item["instrument_key"],
        "bars": item["bars_verdict"],
        "equal": item["buckets_equal"],
        "differing": item["buckets_differing"],
        "missing ours": item["missing_ours"],
        "missing theirs": item["missing_theirs"],
        "volume": item["volume_verdict"],
        "ticks' volume": volume["volume_delta_sum"],
        "candles' volume": _blank(volume["candles_volume"]),
        "last vtt": _blank(volume["last_vtt"]),
        "largest difference": _largest(details),
    }


def _largest(details: dict[str, Any]) -> str:
    if details.get("error"):
        return str(details["error"])
    sized = [d for d in details["differences"] if d["size"] is not None]
    if not sized:
        return "-" if not details["differences"] else "volume, where theirs is 0"
    worst = max(sized, key=lambda d: abs(d["size"]))
    unit = "ticks" if worst["unit"] == "ticks" else "%"
    return f"{worst['field']} {worst['size']:+g} {unit} at {worst['bucket'][11:16]}"


def _blank(value: object) -> object:
    return "-" if value is None else value
