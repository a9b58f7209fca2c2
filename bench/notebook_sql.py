"""The notebook's history (tickvault/history_sql.py): `python -m bench.notebook_sql`.

Days of synthetic ticks, half archived and dropped by retention, half still in the database;
then, in this order (peak memory only grows, so the first figure is sql()'s alone):

- `sql()` over the whole range: wall time (median of 3) and the process's peak RSS growth,
  beside the size of the ticks it read;
- the database's part pulled alone, two ways side by side: ADBC's binary COPY into a DuckDB
  table (what tickvault/history_sql.py does) and psycopg's binary COPY decoded in Python into Arrow;
- the archive check alone: each archived day's manifest and Parquet footers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import duckdb
import psycopg
import pyarrow as pa
from adbc_driver_postgresql import dbapi as adbc

from bench.common import RESULTS_DIR, db_server, machine
from core.ist import day_bounds, ist_today
from store.archive import SCHEMA, archive_day, ticks_dropped_before
from store.archive_location import archive_location
from store.bars import refresh_bars
from store.editions import Edition
from store.retention import apply_retention
from store.tick_row import TICK_COLUMNS, TICK_PG_TYPES
from tickvault import history_sql

_COLUMNS = ", ".join(TICK_COLUMNS)


def _fill(url: str, days: list, per_day: int, instruments: int) -> None:
    """`per_day` ticks a day over the session, spread over `instruments` keys."""
    with psycopg.connect(url, autocommit=True) as conn:
        for day in days:
            session = day_bounds(day)[0] + timedelta(hours=9, minutes=15)
            conn.execute(
                "INSERT INTO ticks (instrument_key, ts, ltp, ltq, vtt, volume_delta, bid_price,"
                " bid_qty, ask_price, ask_qty, feed_ts, received_at)"
                " SELECT 'NSE_EQ|BENCH' || (n %% %(k)s), ts, 1000 + sin(n) * 5, n %% 50, n,"
                "  n %% 50, 999.5, 10, 1000.5, 12, ts, ts + interval '20 milliseconds'"
                " FROM generate_series(0, %(n)s - 1) AS n,"
                "  LATERAL (SELECT %(s)s + n * (interval '22500 seconds' / %(n)s) AS ts) t",
                {"k": instruments, "n": per_day, "s": session},
            )


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(call, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def _psycopg_pull(url: str, start, end) -> int:
    """The same rows through psycopg's binary COPY, decoded in Python into Arrow batches."""
    rows = 0
    with (
        psycopg.connect(url) as conn,
        conn.cursor() as cur,
        cur.copy(
            f"COPY (SELECT {_COLUMNS} FROM ticks WHERE ts >= %s AND ts < %s)"
            " TO STDOUT (FORMAT BINARY)",
            [start, end],
        ) as copy,
    ):
        copy.set_types(list(TICK_PG_TYPES))
        batch: list[tuple] = []
        for row in copy.rows():
            batch.append(row)
            if len(batch) == 100_000:
                rows += _to_arrow(batch)
                batch = []
        rows += _to_arrow(batch)
    return rows


def _to_arrow(batch: list[tuple]) -> int:
    if not batch:
        return 0
    columns = zip(*batch, strict=True)
    arrays = [pa.array(values, type=f.type) for values, f in zip(columns, SCHEMA, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA).num_rows


def _adbc_pull(url: str, start, end) -> int:
    duck = duckdb.connect()
    with adbc.connect(url) as pg, pg.cursor() as cursor:
        cursor.execute(
            f"SELECT {_COLUMNS} FROM ticks"
            f" WHERE ts >= '{start.isoformat()}' AND ts < '{end.isoformat()}'"
        )
        batches = cursor.fetch_record_batch()  # noqa: F841 (DuckDB reads it by name)
        duck.execute("CREATE TEMP TABLE t AS SELECT * FROM batches")
    rows = duck.execute("SELECT count(*) FROM t").fetchone()
    duck.close()
    return rows[0] if rows else 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.notebook_sql", description=__doc__)
    parser.add_argument("--days", type=int, default=6, help="days of ticks, half archived")
    parser.add_argument("--per-day", type=int, default=300_000, help="ticks a day")
    parser.add_argument("--instruments", type=int, default=50)
    args = parser.parse_args()
    today = ist_today()
    days = [today - timedelta(days=n) for n in range(14 + args.days // 2, 14, -1)]
    days += [today - timedelta(days=n) for n in range(args.days - args.days // 2, 0, -1)]
    with db_server() as server, tempfile.TemporaryDirectory() as data_dir:
        url = server.create_database("history")
        os.environ["TICKVAULT_DATABASE_URL"] = url
        os.environ["TICKVAULT_DATA_DIR"] = data_dir
        archive = Path(data_dir) / "archive"
        began = time.perf_counter()
        _fill(url, days, args.per_day, args.instruments)
        with psycopg.connect(url, autocommit=True) as conn:
            refresh_bars(conn)
            for day in days[: args.days // 2]:
                archive_day(conn, archive, day)
            apply_retention(conn, Edition.APACHE, 10, 0, archive)
            cutoff = ticks_dropped_before(conn)
        prepared = time.perf_counter() - began
        start, end = day_bounds(days[0])[0], day_bounds(days[-1])[1]
        query = "SELECT count(*) AS n, sum(ltp) AS s FROM ticks"

        rss_before = _rss_mib()
        answer = history_sql.sql(query, start, end)
        rss_growth = _rss_mib() - rss_before
        total = int(answer["n"].iloc[0])
        sql_s = _timed(lambda: history_sql.sql(query, start, end))
        assert cutoff is not None
        live = _adbc_pull(url, cutoff, end)
        adbc_s = _timed(lambda: _adbc_pull(url, cutoff, end))
        psycopg_s = _timed(lambda: _psycopg_pull(url, cutoff, end), repeat=1)
        with psycopg.connect(url) as conn:
            location = archive_location(archive)
            check_s = _timed(lambda: history_sql._archived_files(conn, location, start, cutoff))
        parquet_mib = sum(p.stat().st_size for p in archive.rglob("*.parquet")) / 2**20

    result = {
        "machine": machine(),
        "ticks": total,
        "ticks_in_database": live,
        "ticks_archived": total - live,
        "archive_parquet_mib": round(parquet_mib, 1),
        "prepare_s": round(prepared, 1),
        "sql_count_s": round(sql_s, 3),
        "sql_ticks_per_s": round(total / sql_s),
        "sql_peak_rss_growth_mib": round(rss_growth, 1),
        "pull_adbc_rows_per_s": round(live / adbc_s),
        "pull_psycopg_rows_per_s": round(live / psycopg_s),
        "archive_check_ms_per_day": round(1000 * check_s / (args.days // 2), 2),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "notebook_sql.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
