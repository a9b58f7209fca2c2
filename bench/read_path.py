"""The notebooks' read path: `python -m bench.read_path` (and `make bench`, via bench.run_all).

In one run on the same rows: (a) the server's own binary COPY of one instrument's day of
ticks, read by a client that only counts the bytes (the most any client can get); (b) the old
read_ticks (its query, then fetchall + DataFrame.from_records, what notebook.query still
does); (c) the new path (notebook.read_ticks: ADBC into Arrow, then pandas, polars or Arrow);
(d) the F&O universe's month of 5-minute bars through read_bars(UNIVERSE, "5m") into a wide
frame of closes. And the peak memory of a read_ticks of the day, in a fresh process, against
the frame's own size.

The ticks are written by SQL (generate_series) with every column a full-mode equity tick
has; the month's bars by one tick a minute per instrument, rolled up by refresh_bars as the
ingest's scheduler rolls them up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench.common import DbServer, db_server, load_universe, write_universe
from core.ist import IST
from store.bars import refresh_bars
from store.tick_row import TICK_COLUMNS
from store.ticks import recent_ticks_sql

DAY = date(2026, 1, 5)
MONTH = (date(2026, 1, 1), date(2026, 2, 1))
SESSION_S = 22_500  # 09:15-15:30
NSE_FO_STOCKS = 180  # about NSE's F&O list; the universe adds the two indices

_DAY_TICKS = """
INSERT INTO ticks (instrument_key, ts, ltp, ltq, vtt, volume_delta, cp, atp, tbq, tsq,
                   bid_price, bid_qty, ask_price, ask_qty, feed_ts, received_at)
SELECT %(key)s, t, 1500 + (i %% 997) * 0.05, 1 + i %% 50, i * 25, 1 + i %% 50, 1490.0,
       1500.0 + (i %% 13) * 0.01, 100000 + i %% 777, 90000 + i %% 555,
       1499.95, 10 + i %% 90, 1500.05, 12 + i %% 80, t, t + INTERVAL '3 milliseconds'
FROM generate_series(0, %(rows)s - 1) AS i,
     LATERAL (SELECT %(open)s::timestamptz
              + make_interval(secs => i::float8 * %(session_s)s / %(rows)s)) AS s(t)
"""

_MONTH_TICKS = """
INSERT INTO ticks (instrument_key, ts, ltp, ltq, vtt, volume_delta, received_at)
SELECT k.key, m, 100 + k.n + (extract(minute FROM m)::int %% 17) * 0.5, 10, 10, 10, m
FROM unnest(%(keys)s::text[]) WITH ORDINALITY AS k(key, n),
     generate_series(%(first)s::timestamp, %(last)s::timestamp, INTERVAL '1 day') AS d,
     generate_series((d::date + TIME '09:15') AT TIME ZONE 'Asia/Kolkata',
                     (d::date + TIME '15:29') AT TIME ZONE 'Asia/Kolkata',
                     INTERVAL '1 minute') AS m
WHERE extract(isodow FROM d) < 6
"""


# read_ticks before issue 17 (0e62a4c), server side: the newest N newest first, then re-sorted
# oldest first in the server; its client side was notebook._fetch (fetchall, from_records).
_ROW_WISE_SQL = (
    f"SELECT {', '.join(TICK_COLUMNS[1:])} FROM ("
    " SELECT * FROM ticks WHERE instrument_key = %(key)s AND ts >= %(start)s AND ts < %(end)s"
    " ORDER BY ts DESC LIMIT %(limit)s) AS latest ORDER BY ts"
)


def _session_open(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 9, 15, tzinfo=IST)


def _median_rate(rows: int, seconds: list[float]) -> dict[str, float]:
    median = statistics.median(seconds)
    return {"seconds": round(median, 3), "rows_per_s": round(rows / median)}


def _timed(work: Callable[[], int], repeats: int) -> tuple[int, list[float]]:
    """(rows, seconds of each run) of `work`, which returns the rows it read."""
    times, rows = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        rows = work()
        times.append(time.perf_counter() - started)
    return rows, times


@contextmanager
def _store_at(url: str) -> Iterator[None]:
    """The notebook module pointed at `url`, as a kernel with TICKVAULT_DATABASE_URL is."""
    before = os.environ.get("TICKVAULT_DATABASE_URL")
    os.environ["TICKVAULT_DATABASE_URL"] = url
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TICKVAULT_DATABASE_URL", None)
        else:
            os.environ["TICKVAULT_DATABASE_URL"] = before


def fill(url: str, instruments: Path, day_ticks: int, days: int) -> str:
    """The universe, `day_ticks` ticks of one stock on DAY, and a tick a minute of every
    instrument over the first `days` days of MONTH, rolled up; returns the stock's key."""
    load_universe(url, instruments)
    with psycopg.connect(url, autocommit=True) as conn:
        keys = [key for (key,) in conn.execute("SELECT instrument_key FROM instruments"
                                               " WHERE segment IN ('NSE_EQ', 'NSE_INDEX')"
                                               " ORDER BY instrument_key")]  # fmt: skip
        stock = next(key for key in keys if key.startswith("NSE_EQ"))
        conn.execute(
            _DAY_TICKS,
            {"key": stock, "rows": day_ticks, "open": _session_open(DAY), "session_s": SESSION_S},
        )
        last = MONTH[0] + timedelta(days=days - 1)
        conn.execute(_MONTH_TICKS, {"keys": keys, "first": MONTH[0], "last": last})
        refresh_bars(conn)
        conn.execute("VACUUM ANALYZE ticks")
    return stock


def read_ticks_paths(url: str, key: str, repeats: int) -> dict[str, Any]:
    """(a) binary COPY to a byte counter, (b) row-wise frames, (c) read_ticks to pandas and
    polars: the same day of `key`, each timed `repeats` times."""
    from tickvault import notebook  # after the URL is set: it reads settings per call

    start = _session_open(DAY)
    end = start + timedelta(days=1)
    params = {"key": key, "start": start, "end": end, "limit": 10_000_000}
    sql = recent_ticks_sql(start=True, end=True)

    def copy_binary() -> int:
        with psycopg.connect(url) as conn, conn.cursor() as cur:
            query = psycopg.ClientCursor(conn).mogrify(sql, params)
            received = 0
            with cur.copy(f"COPY ({query}) TO STDOUT (FORMAT BINARY)") as copy:
                for block in copy:
                    received += len(block)
            return cur.rowcount

    def row_wise() -> int:
        with notebook.connect() as conn:
            return len(notebook._fetch(conn, _ROW_WISE_SQL, params))

    def new_path(frame: str) -> Callable[[], int]:
        def read() -> int:
            return len(notebook.read_ticks(key, start, end, limit=10_000_000, frame=frame))

        return read

    result: dict[str, Any] = {}
    for name, work in (
        ("copy_binary", copy_binary),
        ("row_wise", row_wise),
        ("read_ticks_pandas", new_path("pandas")),
        ("read_ticks_polars", new_path("polars")),
        ("read_ticks_arrow", new_path("arrow")),
    ):
        rows, times = _timed(work, repeats)
        result[name] = {"rows": rows, **_median_rate(rows, times)}
    copy_rate = result["copy_binary"]["rows_per_s"]
    for name in ("row_wise", "read_ticks_pandas", "read_ticks_polars", "read_ticks_arrow"):
        result[name]["over_copy_binary"] = round(result[name]["rows_per_s"] / copy_rate, 3)
    return result


def universe_month(repeats: int) -> dict[str, Any]:
    """(d) read_bars(UNIVERSE, "5m") over MONTH into a wide frame of closes."""
    from tickvault import notebook

    start, end = (datetime(day.year, day.month, day.day, tzinfo=IST) for day in MONTH)
    shape: tuple[int, int] = (0, 0)
    bars = 0

    def read() -> int:
        nonlocal shape, bars
        frame = notebook.read_bars(notebook.UNIVERSE, "5m", start, end)
        closes = notebook.wide(frame, "close")
        shape, bars = closes.shape, len(frame)
        return bars

    _, times = _timed(read, repeats)
    return {
        "symbols": shape[1],
        "buckets": shape[0],
        "bars": bars,
        "seconds": round(statistics.median(times), 3),
    }


_MEMORY_PROBE = """
import json, sys
from datetime import datetime, timedelta
from core.ist import IST
from tickvault import notebook

def status(name):
    for line in open("/proc/self/status"):
        if line.startswith(name):
            return int(line.split()[1]) * 1024

key, day = sys.argv[1], datetime.fromisoformat(sys.argv[2]).replace(tzinfo=IST)
notebook.read_ticks(key, day, day + timedelta(minutes=1))  # drivers loaded, caches warm
before = status("VmRSS:")
frame = notebook.read_ticks(key, day, day + timedelta(days=1), limit=10_000_000)
print(json.dumps({"rows": len(frame), "rss_before": before, "hwm": status("VmHWM:"),
                  "frame_bytes": int(frame.memory_usage(deep=True).sum())}))
"""


def peak_memory(url: str, key: str) -> dict[str, Any]:
    """Peak RSS a read_ticks of the day adds to a fresh process, against the frame's size."""
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, key, _session_open(DAY).isoformat()],
        env={**os.environ, "TICKVAULT_DATABASE_URL": url},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    probe = json.loads(out.strip().splitlines()[-1])
    added = probe["hwm"] - probe["rss_before"]
    return {
        "rows": probe["rows"],
        "frame_mib": round(probe["frame_bytes"] / 2**20, 1),
        "peak_added_mib": round(added / 2**20, 1),
        "peak_over_frame": round(added / probe["frame_bytes"], 2),
    }


def run_read_path(server: DbServer, stocks: int = NSE_FO_STOCKS, quick: bool = False) -> dict:
    """Everything above on one fresh database of `stocks` F&O stocks and the two indices;
    quick: 200k ticks and a week of bars, once each."""
    day_ticks, days, repeats = (200_000, 7, 1) if quick else (1_000_000, 31, 3)
    url = server.create_database("bench_reads")
    try:
        with tempfile.TemporaryDirectory(prefix="tickvault-bench-") as scratch:
            instruments = Path(scratch) / "instruments.json"
            write_universe(instruments, stocks)
            started = time.perf_counter()
            key = fill(url, instruments, day_ticks, days)
            filled_s = time.perf_counter() - started
        with _store_at(url):
            ticks = read_ticks_paths(url, key, repeats)
            month = universe_month(repeats)
        memory = peak_memory(url, key)
    finally:
        server.drop_database(url)
    return {
        "repeats": repeats,
        "day_ticks": day_ticks,
        "month_days": days,
        "stocks": stocks,
        "fill_s": round(filled_s, 1),
        "ticks": ticks,
        "universe_month_5m": month,
        "memory": memory,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.read_path", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200k ticks, a week of bars")
    parser.add_argument("--stocks", type=int, default=NSE_FO_STOCKS, help="F&O stocks")
    args = parser.parse_args(argv)
    with db_server() as server:
        print(json.dumps(run_read_path(server, args.stocks, args.quick), indent=2))


if __name__ == "__main__":
    main()
