"""`tickvault audit`: a day's 1-minute bars against Upstox's candles, as a table or JSON
(`--chain NIFTY`: an option chain instead, tickvault/chain_audit.py).

Exit status 0 when every instrument is clean (or none had bars), 2 when the audit found
differences, 1 when it could not run (no token, a refused token, no database, or no
instrument's candles could be fetched). Whenever it is not 0, a line on stderr says why, so
that `--json` output, which has no verdict line, is not left unexplained. The results are
kept in audit_results either way (GET /api/v1/audit reads them back). An audit of today
compares the minutes before the one in progress.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import pandas as pd

from core.config import Settings
from ingest.jobs.audit import run_audit
from ingest.tokens import UpstoxAccess
from ingest.upstox.candles import CandleError
from store.local.url import database_url
from tickvault.chain_audit import add_chain_arguments, chain_audit_command
from tickvault.day_args import add_day_arguments, day_of, symbols_of

DIFFERENCES_FOUND = 2
COULD_NOT_RUN = 1
_AGREE = ("clean", "conserved")  # an instrument's bars and volume verdicts when it agrees


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "audit", help="compare a day's 1-minute bars with Upstox's candles (parity audit)"
    )
    add_day_arguments(parser, every="every instrument with bars that day")
    add_chain_arguments(parser)
    parser.set_defaults(handler=audit_command)


def audit_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.chain:
        return chain_audit_command(settings, args)
    day, symbols = day_of(args), symbols_of(args)
    try:
        # The environment's token, else the one `tickvault token set` stored.
        access = UpstoxAccess.chosen(settings)  # the environment's token, else the stored one
        report = asyncio.run(run_audit(database_url(settings), access, day, symbols))
    except CandleError as error:
        print(f"tickvault: audit of {day}: {error}", file=sys.stderr)
        return COULD_NOT_RUN
    result = report.as_json()
    print(json.dumps(result, indent=2) if args.json else render(result))
    status, why = exit_status(result)
    if status:
        print(f"tickvault: audit of {day}: {why}", file=sys.stderr)
    return status


def exit_status(result: dict[str, Any]) -> tuple[int, str]:
    """The exit status of an audit that ran, and why it is not 0."""
    items = result["instruments"]
    if result["verdict"] == "could not run":
        return COULD_NOT_RUN, (
            f"could not run: no candles could be fetched for any of {len(items)} instruments"
            f" ({items[0]['details']['error']})"
        )
    if result["verdict"] == "differences found":
        apart = [i for i in items if (i["bars_verdict"], i["volume_verdict"]) != _AGREE]
        return DIFFERENCES_FOUND, (
            f"differences found: {len(apart)} of {len(items)} instruments do not agree with"
            " Upstox's candles"
        )
    return 0, ""


def render(result: dict[str, Any]) -> str:
    """One line per instrument, then the verdict of the day."""
    rows = [_row(item) for item in result["instruments"]]
    if not rows:
        return f"{result['trading_date']}: no bars stored that day, nothing to audit"
    table = pd.DataFrame(rows).to_string(index=False)
    verdict = result["verdict"]
    if verdict == "differences found":
        verdict = verdict.upper()
    until = result.get("compared_until")
    scope = f" (the minutes before {until[11:16]} IST)" if until else ""
    return f"parity audit of {result['trading_date']}: {verdict}{scope}\n{table}"


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
        "bars' volume": volume.get("bars_volume", "-"),
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
