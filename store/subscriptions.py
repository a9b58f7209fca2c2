"""The `subscriptions` table: what the feed should carry, so a restart resumes it.

The subscription manager writes it (a key is `pending` before its request, `subscribed` or
`failed` after, `unsubscribed` when dropped); the ingest's recovery and the API read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import psycopg

Status = Literal["pending", "subscribed", "failed", "unsubscribed"]

# Keys a restart subscribes again: those subscribed, and those whose request a crash cut off.
RESUMABLE = "status IN ('subscribed', 'pending')"
# Keys the API shows: everything not given up on purpose.
LISTED = "status <> 'unsubscribed'"

_UPSERT = """
INSERT INTO subscriptions AS s (instrument_key, mode, status, error, updated_at, subscribed_at)
SELECT key, %(mode)s::text, %(status)s::text, %(error)s::text, now(),
       CASE WHEN %(status)s::text = 'subscribed' THEN now() END
FROM unnest(%(keys)s::text[]) AS key
ON CONFLICT (instrument_key) DO UPDATE SET
    mode = EXCLUDED.mode,
    status = EXCLUDED.status,
    error = EXCLUDED.error,
    updated_at = now(),
    -- Since when the key has been wanted without a break: a restart's resubscription keeps
    -- it (coverage counts the minutes the ingest was away as gaps of the key), a key
    -- subscribed again after an unsubscribe starts anew.
    subscribed_at = CASE WHEN s.status = 'unsubscribed' OR s.subscribed_at IS NULL
                         THEN EXCLUDED.subscribed_at ELSE s.subscribed_at END
"""

_SET_STATUS = """
UPDATE subscriptions SET status = %(status)s::text, error = %(error)s::text, updated_at = now()
WHERE instrument_key = ANY(%(keys)s)
"""


def upsert(
    conn: psycopg.Connection,
    keys: Sequence[str],
    mode: str,
    status: Status,
    error: str | None = None,
) -> None:
    """Record `keys` in `mode` with `status`, adding the ones not there yet.

    `subscribed_at` is set when a key becomes subscribed and kept through later changes,
    resubscriptions included, until it is unsubscribed.
    """
    conn.execute(_UPSERT, {"keys": list(keys), "mode": mode, "status": status, "error": error})


def set_status(
    conn: psycopg.Connection, keys: Sequence[str], status: Status, error: str | None = None
) -> None:
    """Change the status of the keys already recorded; keys not in the table are left out."""
    conn.execute(_SET_STATUS, {"keys": list(keys), "status": status, "error": error})


def resumable(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(mode, key) of every key a restart subscribes again, by mode then key."""
    return conn.execute(
        f"SELECT mode, instrument_key FROM subscriptions WHERE {RESUMABLE}"
        " ORDER BY mode, instrument_key"
    ).fetchall()


def resumable_keys(conn: psycopg.Connection) -> frozenset[str]:
    """The keys of `resumable`, for the ingest to know which instruments it follows."""
    return frozenset(key for _, key in resumable(conn))


def listing(conn: psycopg.Connection) -> list[tuple[str, str, str, str, str | None]]:
    """(symbol, key, mode, status, error) of every listed subscription, by key.

    The symbol is the trading symbol, or the key when the instrument master lacks it.
    """
    return conn.execute(
        "SELECT coalesce(i.trading_symbol, s.instrument_key), s.instrument_key,"
        " s.mode, s.status, s.error"
        " FROM subscriptions s LEFT JOIN instruments i USING (instrument_key)"
        f" WHERE s.{LISTED}"
        " ORDER BY s.instrument_key"
    ).fetchall()
