"""`python -m ingest.simulator` (and `tickvault simulator`): the feed simulator on its own.

It answers test hooks on its port: GET /_sim/stats, /_sim/sent_ticks (with --record),
/_sim/drop, /_sim/garbage, /_sim/stall?seconds=N, /_sim/reject_token?on=1|0,
/_sim/accept_token?token=T, /_sim/throttle?n=N (the next N candle calls answer 429) and
/_sim/move?instrument_key=K&price=P (an underlying jumps there, its options follow);
Upstox's OAuth login on a port of its own (printed at start); and it publishes the instrument
master, as Upstox does (--instruments-file serves another one).

Standing in for Upstox, its whole market trades whether or not anyone is subscribed (each
instrument nobody follows once a second), so its 1-minute candles cover an outage of the
whole store; --followed-only trades only what a client follows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.heap import settle_startup_heap
from core.upstox_wire import INSTRUMENTS_PATH
from ingest.simulator.market import DEFAULT_UNIVERSE
from ingest.simulator.minutes import DEFAULT_DAYS
from ingest.simulator.server import FeedSimulator
from ingest.simulator.tape import DEFAULT_RECORD_LIMIT

InstrumentReader = Callable[[Path], list[dict[str, Any]]]


async def _run(args: argparse.Namespace, instruments: list[dict[str, Any]]) -> None:
    simulator = FeedSimulator(
        instruments,
        token=args.token,
        rate=args.rate,
        frame_interval=args.interval_ms / 1000,
        seed=args.seed,
        record=args.record,
        record_limit=args.record_limit,
        candle_days=args.candle_days,
        whole_market=not args.followed_only,
        client_secret=args.client_secret,
        instruments_file=args.instruments_file,
    )
    await simulator.start(args.host, args.port)
    settle_startup_heap()
    print(f"feed simulator listening on {simulator.url}", flush=True)
    print(f"OAuth login (UPSTOX_LOGIN_BASE) on {simulator.login_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if args.reject_token:
        simulator.reject_token()
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), args.drop_every or None)
            except TimeoutError:
                await simulator.drop_connections()
    finally:
        await simulator.stop()


def main(
    argv: Sequence[str] | None = None, read_instruments: InstrumentReader | None = None
) -> int:
    """Run until SIGTERM or Ctrl-C.

    `read_instruments` is how `tickvault simulator` offers --instruments: reading and checking
    an instrument master is the store's work, which the simulator may not import.
    """
    parser = argparse.ArgumentParser(
        prog="python -m ingest.simulator" if read_instruments is None else "tickvault simulator",
        description="Upstox Market Data Feed V3 simulator on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--rate", type=float, default=2000.0, help="ticks per second")
    parser.add_argument("--interval-ms", type=float, default=100.0, help="time between frames")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--token", default=None, help="the one token accepted (default: any)")
    parser.add_argument(
        "--client-secret", default=None, help="the one OAuth client secret accepted (default: any)"
    )
    if read_instruments is not None:
        parser.add_argument("--instruments", type=Path, help="instrument master, .json[.gz]")
    parser.add_argument(
        "--instruments-file",
        type=Path,
        help="serve this file (read at each request) as the instrument master, instead of the"
        " universe, at " + INSTRUMENTS_PATH,
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="keep every sent tick (up to --record-limit) for GET /_sim/sent_ticks",
    )
    parser.add_argument(
        "--record-limit",
        type=int,
        default=DEFAULT_RECORD_LIMIT,
        help="ticks --record keeps (36 bytes each); past it /_sim/sent_ticks answers 409",
    )
    parser.add_argument(
        "--candle-days",
        type=int,
        default=DEFAULT_DAYS,
        help="IST dates of 1-minute candles kept (today and the days before it)",
    )
    parser.add_argument(
        "--followed-only",
        action="store_true",
        help="trade only the instruments a client follows (no candles for other minutes)",
    )
    parser.add_argument("--drop-every", type=float, default=0.0, help="drop connections every N s")
    parser.add_argument("--reject-token", action="store_true", help="start rejecting tokens")
    args = parser.parse_args(argv)
    instruments = DEFAULT_UNIVERSE
    if read_instruments is not None and args.instruments is not None:
        instruments = read_instruments(args.instruments)
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args, instruments))
    return 0
