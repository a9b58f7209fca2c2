"""`tickvault instruments refresh`: Upstox's instrument master, downloaded and loaded, with
the F&O universe's subscriptions following it.

When an ingest runs on this data directory, the refresh is its work (over its control socket,
ingest/channels/control.py): it owns the feed, so it subscribes the stocks that joined and
unsubscribes those that left at once, and it knows its simulator's URL. Otherwise the refresh
runs here and leaves the change in the subscriptions table for the next ingest. Either way a
file that would remove more than TICKVAULT_INSTRUMENTS_MAX_REMOVED_SHARE of the master or of
the F&O universe is refused (exit 1, nothing changed) unless `--force` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from core.config import Settings
from ingest.channels.control import RefreshInstruments, ask, control_path, listening
from ingest.jobs.instrument_refresh import refresh_instruments, report_lines
from store.instruments import InstrumentFileError
from store.local.url import database_url

# The download (about 10 MB gzipped) and the load of some 150k records take tens of seconds.
INGEST_TIMEOUT_S = 600.0


def run(settings: Settings, args: argparse.Namespace) -> int:
    path = control_path(settings.data_dir)
    if listening(path):
        try:
            request = RefreshInstruments(args.url, args.max_bytes, args.force)
            answer = ask(path, request, INGEST_TIMEOUT_S)
        except OSError as error:  # TimeoutError included: the refresh may still complete
            raise InstrumentFileError(
                f"the running ingest did not answer on {path}: {type(error).__name__}: {error}"
            ) from None
        if not answer.ok:
            raise InstrumentFileError(f"the running ingest could not refresh: {answer.detail}")
        report: dict[str, Any] = answer.report or {}
        lines = report_lines(report)
    else:
        result = asyncio.run(
            refresh_instruments(
                database_url(settings),
                settings,
                url=args.url,
                max_bytes=args.max_bytes,
                force=args.force,
            )
        )
        report, lines = result.as_dict(), result.lines()
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print("\n".join(lines))
    return 0
