"""What the ingest must know from the database before it accepts a single frame.

After a crash or restart: the last journal sequence number whose batch committed (replay
starts after it), the next batch id, the last stored tick of every instrument ever subscribed,
which seeds the decoder so volume is not counted twice and a re-sent snapshot is not stored
twice, and the keys a restart subscribes again. The SQL is the store's (store.ticks,
store.subscriptions).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from store.subscriptions import resumable_keys
from store.tick import Tick
from store.ticks import committed_position, newest_tick_rows


@dataclass(frozen=True)
class RecoveryState:
    committed_seq: int
    next_batch_id: int
    last_ticks: list[Tick]
    subscribed_keys: frozenset[str]


def load_recovery_state(conn: psycopg.Connection, journal_id: str) -> RecoveryState:
    committed_seq, last_batch = committed_position(conn, journal_id)
    return RecoveryState(
        committed_seq, last_batch + 1, newest_tick_rows(conn), resumable_keys(conn)
    )
