"""The Apache edition's rollup: what a continuous aggregate's refresh does, done by hand.

Each layer (store/bars.py names them) is a `_store` table of buckets below a watermark, read
through a view that aggregates its source live above the watermark (sql/006, sql/022). A pass
moves every watermark up to the open bucket, rebuilding the buckets it passes, and
re-aggregates the buckets below it that late rows landed in. Layers that aggregate the same
source at the same width are rebuilt by one read of it while their watermarks agree, as they
do once they have run together: the closed minute's ticks, millions at a busy close, are the
pass's biggest read, and the bars and the option chains both need them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby

import psycopg

# Only one rollup at a time, whoever runs it (the ingest scheduler or `tickvault db refresh-bars`).
_ROLLUP_LOCK = 0x7469636B


@dataclass(frozen=True)
class Layer:
    """One relation kept current, and the source it is aggregated from."""

    view: str
    width: str
    source: str  # a relation, aliased `src` below
    time: str  # the source's time column
    aggregates: tuple[str, ...]  # one for each of `columns` after the bucket
    columns: tuple[str, ...]  # of its `_store` table, the bucket first
    rows: str | None = None  # the source rows it aggregates (a condition on `src`); None: all
    # The width of the layer aggregated from this one: the buckets a pass rewrites here mark
    # that layer's buckets they fall in for rebuilding.
    feeds: str | None = None

    @property
    def reads_ticks(self) -> bool:
        """Whether it is aggregated from the ticks themselves (late ticks dirty it)."""
        return self.time == "src.ts"


Range = tuple[datetime | None, datetime]  # [low, high); a low of None: from the beginning


@dataclass(frozen=True)
class _Pass:
    """One layer's state as this pass found it, and what the pass will leave."""

    watermark: datetime | None
    changed_since: datetime | None
    seen: str | None  # the snapshot the last pass saw the source in
    ranges: tuple[Range, ...]  # rebuilt whole: up to the new watermark, and the asked window
    next_state: tuple[datetime, datetime, str]  # watermark, changed_since, snapshot


def roll_up(
    conn: psycopg.Connection,
    layers: Sequence[Layer],
    start: datetime | None,
    end: datetime | None,
) -> dict[str, int]:
    """One pass over `layers` in one transaction, with [start, end) rebuilt as well (a None
    bound: that end of the data); returns how many buckets each layer (re)wrote.

    A layer aggregated from another comes after it in `layers`.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_ROLLUP_LOCK])
        # No JIT: the planner costs the late-tick joins for thousands of dirty buckets, so
        # each pass compiled (and inlined) their expressions for about 0.25 s of server CPU
        # apiece, usually to aggregate nothing.
        conn.execute("SET LOCAL jit = off")
        # Hash aggregates: a pass's groups are its instruments' buckets, a few thousand, while
        # the planner, whose statistics of a chunk being written end at its last ANALYZE,
        # expects a closed minute to hold a few thousand rows instead of millions and sorted
        # them (spilling to disk) in twice the time of a hash table (BENCHMARKS.md). Nor an
        # incremental sort of the (instrument_key, ts) index's order, which it took instead
        # once the option chains' aggregates sat beside the bars': 3.5 times as long.
        conn.execute("SET LOCAL enable_sort = off")
        conn.execute("SET LOCAL enable_incremental_sort = off")
        # Room for that table as the planner sizes it. With no statistics of a tick's minute
        # it expects a group per tick and spilled at its guess of the groups' size: 464
        # batches to disk for 1,800 groups in 10 MB. The table itself stays that small.
        conn.execute("SET LOCAL work_mem = '256MB'")
        conn.execute(
            "CREATE TEMP TABLE _bars_dirty (instrument_key text, bucket timestamptz)"
            " ON COMMIT DROP;"
            "CREATE TEMP TABLE _bars_touched (instrument_key text, bucket timestamptz)"
            " ON COMMIT DROP"
        )
        _summarize_new_tick_ranges(conn)
        written: dict[str, int] = {}
        for _, group in groupby(layers, key=lambda layer: (layer.source, layer.time, layer.width)):
            written |= _roll_up_together(conn, tuple(group), start, end)
    return written


def _summarize_new_tick_ranges(conn: psycopg.Connection) -> None:
    """Summarize the block ranges added since the last pass to the BRIN index of the ticks
    chunks that hold the last day (over `ts` and `inserted_at`), so that the rollup's scans
    read only the ranges that can hold what they look for.

    A range no vacuum has summarized yet matches every BRIN scan, so without this the scans
    of a chunk being written read all of it, every pass. Older chunks are left to vacuum:
    their unsummarized ranges are only what was appended to them lately, which a scan must
    read anyway. Only the indexes this role may summarize (its own, or its role's): an app
    role that does not own the tables (docs/deployment.md) rolls up as before, by reading the
    unsummarized ranges, rather than failing every pass.
    """
    conn.execute(
        "SELECT brin_summarize_new_values(i.indexrelid)"
        " FROM timescaledb_information.chunks c"
        " JOIN pg_class r ON r.relname = c.chunk_name"
        " JOIN pg_namespace n ON n.oid = r.relnamespace AND n.nspname = c.chunk_schema"
        " JOIN pg_index i ON i.indrelid = r.oid"
        " JOIN pg_class ir ON ir.oid = i.indexrelid"
        " WHERE c.hypertable_name = 'ticks' AND c.range_end > now() - INTERVAL '1 day'"
        " AND ir.relam = (SELECT oid FROM pg_am WHERE amname = 'brin')"
        " AND pg_has_role(ir.relowner, 'USAGE')"
    )


def _roll_up_together(
    conn: psycopg.Connection,
    layers: tuple[Layer, ...],
    start: datetime | None,
    end: datetime | None,
) -> dict[str, int]:
    """Advance layers that aggregate one source at one width.

    While their ranges agree, one read of the source rebuilds them all; a layer whose
    watermark stands elsewhere (one added by a later migration, say) is rebuilt by its own.
    """
    passes = [_begin(conn, layer, start, end) for layer in layers]
    if len({one.ranges for one in passes}) == 1:
        written = _rebuild_ranges(conn, layers, passes[0].ranges)
    else:
        written = {}
        for layer, one in zip(layers, passes, strict=True):
            written |= _rebuild_ranges(conn, (layer,), one.ranges)
    for layer, one in zip(layers, passes, strict=True):
        if one.watermark is not None:
            written[layer.view] += _rebuild_late(conn, layer, one)
        conn.execute(
            "UPDATE bar_rollup_state SET watermark = %s, changed_since = %s, snapshot = %s,"
            " refreshed_at = now() WHERE relation = %s",
            [*one.next_state, layer.view],
        )
    return written


def _begin(
    conn: psycopg.Connection, layer: Layer, start: datetime | None, end: datetime | None
) -> _Pass:
    """Lock a layer's state for this pass and work out what the pass rebuilds."""
    state = conn.execute(
        f"""
        SELECT watermark,
               changed_since,
               snapshot,
               -- least() and greatest() pass over NULLs: no end means up to the open bucket.
               -- A bucket that `end` cuts stays live (as Community's refresh window does):
               -- rounding up would let the 5-minute layer pass 1-minute buckets not yet stored.
               greatest(watermark, least(
                   time_bucket(INTERVAL '{layer.width}', now()),
                   time_bucket(INTERVAL '{layer.width}', %(end)s::timestamptz))),
               time_bucket(INTERVAL '{layer.width}', %(start)s::timestamptz),
               -- The end of the asked window, rounded up to a whole bucket.
               time_bucket(INTERVAL '{layer.width}', %(end)s::timestamptz
                           - INTERVAL '1 microsecond') + INTERVAL '{layer.width}',
               -- A transaction still running may yet commit late ticks: the next pass looks
               -- at everything inserted since the oldest writing one started. One that has
               -- not written yet stamps its rows later (inserted_at is clock_timestamp());
               -- the margin covers the instant between that stamp and its first write.
               least(now(), (SELECT min(xact_start) FROM pg_stat_activity
                             WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()))
                   - INTERVAL '10 seconds',
               -- What this pass can see: the next pass takes for late only what it could not.
               pg_current_snapshot()
        FROM bar_rollup_state WHERE relation = %(view)s FOR UPDATE""",
        {"view": layer.view, "start": start, "end": end},
    ).fetchone()
    if state is None:
        raise RuntimeError(
            f"bar_rollup_state has no row for {layer.view}: run tickvault db migrate"
        )
    watermark, changed_since, seen, new_watermark, window_start, window_end = state[:6]
    ranges: tuple[Range, ...] = ((watermark, new_watermark),)
    if start is not None or end is not None:
        window_end = new_watermark if end is None else min(new_watermark, window_end)
        ranges += ((window_start, window_end),)
    return _Pass(watermark, changed_since, seen, ranges, (new_watermark, *state[6:]))


def _rebuild_ranges(
    conn: psycopg.Connection, layers: tuple[Layer, ...], ranges: tuple[Range, ...]
) -> dict[str, int]:
    """Replace every bucket of `layers` in each range, including ones whose source rows are
    gone, by one read of their source per range."""
    written = dict.fromkeys((layer.view for layer in layers), 0)
    above_low = "(%(low)s::timestamptz IS NULL OR {time} >= %(low)s)"
    for low, high in ranges:
        if low is not None and low >= high:
            continue
        bounds = {"low": low, "high": high}
        for layer in layers:
            _record_touched(
                conn,
                layer,
                f"DELETE FROM {layer.view}_store WHERE"
                f" {above_low.format(time='bucket')} AND bucket < %(high)s",
                bounds,
            )
        time = layers[0].time
        with _index_scans(conn, layers[0]):
            counts = _insert_aggregates(
                conn,
                layers,
                f"{layers[0].source} WHERE {above_low.format(time=time)} AND {time} < %(high)s",
                bounds,
            )
        for view, count in counts.items():
            written[view] += count
    return written


@contextmanager
def _index_scans(conn: psycopg.Connection, layer: Layer) -> Iterator[None]:
    """Within it, a layer that reads the ticks reads them through their indexes.

    The planner's row estimates for a chunk being written are those of its last ANALYZE, so
    it took a sequential scan of the whole chunk for a minute's ticks, and for the few late
    ones (1.7 µs of server CPU per tick written at 90k ticks/s, BENCHMARKS.md); the BRIN
    ranges (summarized by `_summarize_new_tick_ranges`) and the (instrument_key, ts) b-tree
    find them without it.
    """
    if not layer.reads_ticks:
        yield
        return
    (before,) = conn.execute(
        "SELECT current_setting('enable_seqscan'), set_config('enable_seqscan', 'off', true)"
    ).fetchone()[:1]
    try:
        yield
    finally:
        conn.execute("SELECT set_config('enable_seqscan', %s, true)", [before])


def _rebuild_late(conn: psycopg.Connection, layer: Layer, last: _Pass) -> int:
    """Re-aggregate buckets below the old watermark whose source changed since the last pass.

    A tick is late unless the last pass surely saw it: its xid (as an xid8, the current one
    less its age) is below the xmin of that pass's snapshot `seen`, where every transaction
    had ended. Not `pg_visible_in_snapshot`: a snapshot lists only top-level xids as running,
    so it takes the row of a savepoint (a subtransaction's xid, above its parent's) in a
    transaction still open then for seen, and that tick was never rolled up
    (tests/test_bars.py). The `inserted_at` bound, with its margin, is what lets the BRIN
    index skip the older ranges; alone it also took the ticks the last pass did see for
    late, and re-aggregated the minute just rolled up, every instrument of it, in each pass
    within the margin.

    Most passes find nothing late and stop there; otherwise the planner is told how many
    buckets are dirty (ANALYZE). Guessing a temporary table's 1,200 rows, it read the whole
    chunk to join them: by a sequential scan for the option chains where the statistics said
    no tick carries greeks, in every pass, even for an empty dirty set.
    """
    conn.execute("TRUNCATE _bars_dirty")
    if layer.reads_ticks:
        with _index_scans(conn, layer):
            dirty = conn.execute(
                "INSERT INTO _bars_dirty SELECT DISTINCT instrument_key,"
                " time_bucket(INTERVAL '1 minute', ts) FROM ticks"
                " WHERE inserted_at >= %(since)s AND ts < %(watermark)s"
                " AND (%(seen)s::pg_snapshot IS NULL"
                " OR pg_current_xact_id()::text::bigint - age(xmin)"
                " >= pg_snapshot_xmin(%(seen)s::pg_snapshot)::text::bigint)",
                {
                    "since": last.changed_since or last.watermark,
                    "watermark": last.watermark,
                    "seen": last.seen,
                },
            ).rowcount
    else:
        dirty = conn.execute(
            "INSERT INTO _bars_dirty SELECT DISTINCT instrument_key, bucket FROM _bars_touched"
            " WHERE bucket < %s",
            [last.watermark],
        ).rowcount
    if not dirty:
        return 0
    store = f"{layer.view}_store"
    _record_touched(
        conn,
        layer,
        f"DELETE FROM {store} USING _bars_dirty d"
        f" WHERE {store}.instrument_key = d.instrument_key"
        f" AND {store}.bucket = d.bucket",
        {},
    )
    conn.execute("ANALYZE _bars_dirty")
    return _insert_aggregates(
        conn,
        (layer,),
        f"_bars_dirty d JOIN {layer.source} ON src.instrument_key = d.instrument_key"
        f" AND {layer.time} >= d.bucket AND {layer.time} < d.bucket + INTERVAL '{layer.width}'",
        {},
    )[layer.view]


def _insert_aggregates(
    conn: psycopg.Connection,
    layers: tuple[Layer, ...],
    source_rows: str,
    params: dict[str, object],
) -> dict[str, int]:
    """Aggregate the source rows of `source_rows` (a FROM clause ending in a condition) once
    into every store of `layers`; returns how many buckets each got.

    Each layer's aggregates take only its own rows (FILTER), and a bucket holding none of them
    is not its bucket; when every layer names its rows, the read skips the rows none wants.
    """
    wanted = [layer.rows for layer in layers]
    if all(wanted):
        source_rows += " AND (" + " OR ".join(f"({rows})" for rows in wanted) + ")"
    outputs, writes = [], []
    for n, layer in enumerate(layers):
        only = f" FILTER (WHERE {layer.rows})" if layer.rows else ""
        named = {f"l{n}_{i}": value for i, value in enumerate(layer.aggregates)}
        outputs += [f"{value}{only} AS {name}" for name, value in named.items()]
        holding = ""
        if layer.rows:
            outputs.append(f"count(*){only} AS l{n}_rows")
            holding = f" WHERE l{n}_rows > 0"
        writes.append(
            f"l{n} AS (INSERT INTO {layer.view}_store (instrument_key, {', '.join(layer.columns)})"
            f" SELECT instrument_key, bucket, {', '.join(named)} FROM agg{holding}"
            f" RETURNING instrument_key, bucket)"
        )
        if layer.feeds:
            writes.append(_marking(f"l{n}", layer.feeds))
    width, time = layers[0].width, layers[0].time
    counts = conn.execute(
        f"WITH agg AS (SELECT src.instrument_key, time_bucket(INTERVAL '{width}', {time})"
        f" AS bucket, {', '.join(outputs)} FROM {source_rows} GROUP BY 1, 2), "
        + ", ".join(writes)
        + " SELECT "
        + ", ".join(f"(SELECT count(*) FROM l{n})" for n in range(len(layers))),
        params,
    ).fetchone()
    assert counts is not None  # a SELECT without FROM gives its one row
    return {layer.view: count for layer, count in zip(layers, counts, strict=True)}


def _record_touched(
    conn: psycopg.Connection, layer: Layer, statement: str, params: dict[str, object]
) -> None:
    """Run a DELETE on a store, marking the buckets it touches in the layer it feeds."""
    if not layer.feeds:
        conn.execute(statement, params)
        return
    conn.execute(
        f"WITH changed AS ({statement} RETURNING {layer.view}_store.instrument_key,"
        f" {layer.view}_store.bucket), {_marking('changed', layer.feeds)} SELECT 1",
        params,
    )


def _marking(changed: str, width: str) -> str:
    """A CTE marking the buckets of `width` that the rows of CTE `changed` fall in."""
    return (
        f"marked_{changed} AS (INSERT INTO _bars_touched SELECT instrument_key,"
        f" time_bucket(INTERVAL '{width}', bucket) FROM {changed})"
    )
