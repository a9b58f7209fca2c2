"""One Apache-edition rollup pass over a closed minute, alone:
`python -m bench.rollup_close --ticks 5000000 --options 0.3 --rounds 4`.

The pass at a minute's close is the rollup's biggest: it aggregates the closed minute's
ticks for the 1-minute bars and for the option chains. `bench.rollup_cpu` shows it beside a
writer, where the machine's noise moves it by 2x; here the same minute is rolled up again
and again on a quiet server. `--ticks` ticks of `--instruments` instruments fill one minute
that has closed, and the instruments in the `--options` share carry greeks, as option
contracts' ticks do. Each round puts the watermarks back to the minute's start, empties the
stores and runs one pass, reading its backend's CPU from /proc.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

import psycopg

from bench.common import cpu_seconds, db_server
from store.bars import refresh_bars


def measure(ticks: int, instruments: int, options: float, rounds: int) -> dict[str, Any]:
    with db_server() as server:
        url = server.create_database("bench_rollup_close")
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                (minute,) = conn.execute(
                    "SELECT time_bucket(INTERVAL '1 minute', now()) - INTERVAL '2 minutes'"
                ).fetchone()
                conn.execute(
                    "INSERT INTO ticks (instrument_key, ts, ltp, volume_delta, delta)"
                    " SELECT 'NSE_EQ|K' || g %% %(n)s,"
                    " %(minute)s + g::float8 / %(ticks)s * INTERVAL '59 seconds',"
                    " 100 + g %% 7, 1, CASE WHEN g %% %(n)s < %(options)s THEN 0.5 END"
                    " FROM generate_series(1, %(ticks)s) g",
                    {
                        "n": instruments,
                        "minute": minute,
                        "ticks": ticks,
                        "options": round(options * instruments),
                    },
                )
                conn.execute("VACUUM ANALYZE ticks")
                passes = [_one_pass(conn, minute) for _ in range(rounds)]
        finally:
            server.drop_database(url)
    return {
        "ticks": ticks,
        "options": options,
        "pass_server_cpu_s": [round(cpu, 2) for cpu, _ in passes],
        "median_s": round(statistics.median(cpu for cpu, _ in passes), 2),
        "buckets": passes[-1][1],
    }


def _one_pass(conn: psycopg.Connection, minute: Any) -> tuple[float, dict[str, int]]:
    """The minute rolled up from scratch: server CPU seconds, and the buckets written."""
    conn.execute(
        "UPDATE bar_rollup_state SET watermark = %s, changed_since = now(), snapshot = NULL",
        [minute],
    )
    for store in ("ohlc_1m_store", "ohlc_5m_store", "option_chain_1m_store"):
        conn.execute(f"DELETE FROM {store}")
    before = cpu_seconds(conn.info.backend_pid)
    written = refresh_bars(conn).buckets_written
    return cpu_seconds(conn.info.backend_pid) - before, written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rollup_close", description=__doc__)
    parser.add_argument("--ticks", type=int, default=5_000_000, help="ticks in the minute")
    parser.add_argument("--instruments", type=int, default=1800)
    parser.add_argument("--options", type=float, default=0.0, help="share with greeks")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.ticks, args.instruments, args.options, args.rounds)))


if __name__ == "__main__":
    main()
