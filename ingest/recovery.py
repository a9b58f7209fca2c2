"""What the ingest must know from the database before it accepts a single frame.

After a crash or restart: the last journal sequence number whose batch committed (replay
starts after it), the next batch id, and the last stored tick of every subscribed instrument,
which seeds the decoder so volume is not counted twice and a re-sent snapshot is not stored
twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from store.tick import PG_EPOCH_UNIX_US, TICK_COLUMNS, TIME_COLUMNS, Tick

_AS_TICK_TIMES = ", ".join(
    f"(extract(epoch FROM t.{name}) * 1000000)::bigint - {PG_EPOCH_UNIX_US}"
    if index in TIME_COLUMNS
    else f"t.{name}"
    for index, name in enumerate(TICK_COLUMNS)
)


@dataclass(frozen=True)
class RecoveryState:
    committed_seq: int
    next_batch_id: int
    last_ticks: list[Tick]
    subscribed_keys: frozenset[str]


def load_recovery_state(conn: psycopg.Connection, journal_id: str) -> RecoveryState:
    committed_seq, last_batch = conn.execute(
        "SELECT coalesce(max(last_seq), 0), coalesce(max(batch_id), 0)"
        " FROM ingest_batches WHERE journal_id = %s",
        [journal_id],
    ).fetchone() or (0, 0)
    keys = frozenset(
        row[0]
        for row in conn.execute(
            "SELECT instrument_key FROM subscriptions WHERE status IN ('subscribed', 'pending')"
        )
    )
    # One index probe per instrument on (instrument_key, ts DESC), newest chunk first.
    last_ticks = conn.execute(
        f"""
        SELECT {_AS_TICK_TIMES}
        FROM subscriptions s
        CROSS JOIN LATERAL (
            SELECT * FROM ticks
            WHERE ticks.instrument_key = s.instrument_key
            ORDER BY ts DESC, received_at DESC
            LIMIT 1
        ) t"""
    ).fetchall()
    return RecoveryState(committed_seq, last_batch + 1, [tuple(row) for row in last_ticks], keys)
