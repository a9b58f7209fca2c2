"""Refresh the instrument master from a new Upstox file: what changed, and what the F&O
universe's subscriptions must follow.

Upstox publishes the whole master every day. A refresh upserts it and marks inactive every
instrument that left the file or whose expiry has passed; nothing is deleted, since old ticks
reference those keys and history must still resolve them. The F&O universe (stocks with a
live future) is read before and after, and its change is written to the `subscriptions`
table in the same transaction: a stock that left is `unsubscribed` with the reason, a stock
that joined is `pending` (when the feed follows anything at all: with an empty table the
ingest subscribes the whole universe when it starts). So a crash between the commit and the
feed's change loses nothing: a restart resumes exactly the new universe.

A file can be valid and still wrong: a truncated or empty master (`[]`) would mark every
instrument inactive and drop the whole universe from the feed. So a refresh that would take
more than `max_removed_share` of the live instruments out (those that left the file; expiry
is the calendar, not a bad file), or of the F&O universe, or all of the universe, is refused
(RefreshRefused) and rolled back; the caller decides whether to force it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from store.instruments import (
    EXPIRED_SQL,
    InstrumentFileError,
    fno_universe,
    staged_records,
    upsert_sql,
)
from store.subscriptions import RESUMABLE, upsert

# One refresh at a time per database, whichever process runs it (the ingest's daily
# schedule, `tickvault instruments refresh` with no ingest running).
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('tickvault.instrument_refresh'))"

# A staged record's key, and the instrument row that has it (none for a new key).
_STAGED = (
    "FROM _instruments_load AS l"
    " LEFT JOIN instruments AS i ON i.instrument_key = l.r->>'instrument_key'"
)
_COUNTS = f"""
SELECT count(*) FILTER (WHERE i.instrument_key IS NULL),
       count(*) FILTER (WHERE i.raw <> l.r),
       count(*) FILTER (WHERE NOT i.active AND NOT coalesce({EXPIRED_SQL}, false)),
       count(*) FILTER (WHERE i.active AND coalesce({EXPIRED_SQL}, false))
{_STAGED}
"""
_INACTIVATE_ABSENT = """
UPDATE instruments AS i SET active = false, inactive_since = now(), updated_at = now()
WHERE i.active
  AND NOT EXISTS (SELECT FROM _instruments_load l WHERE l.r->>'instrument_key' = i.instrument_key)
RETURNING i.instrument_key, coalesce(i.expiry <= now(), false)
"""
_LIVE = "SELECT count(*) FROM instruments WHERE active"
_FOLLOWING = f"SELECT EXISTS (SELECT FROM subscriptions WHERE {RESUMABLE})"
_RESUMABLE_OF = (
    f"SELECT instrument_key FROM subscriptions WHERE {RESUMABLE} AND instrument_key = ANY(%s)"
)
_DROP = """
UPDATE subscriptions SET status = 'unsubscribed', error = %s, updated_at = now()
WHERE instrument_key = ANY(%s) AND status <> 'unsubscribed'
RETURNING instrument_key
"""

LEFT_UNIVERSE = "left the F&O universe: no live future in the instrument master"


class RefreshRefused(InstrumentFileError):
    """The new master would take out more of what is live than a bad file may: nothing was
    changed. The message says how much, and of what."""


@dataclass(frozen=True)
class MasterChange:
    """What one refresh changed. Counts are of instruments; the lists are NSE_EQ keys.

    `expired` and `removed` are the instruments that were live and are inactive now: the first
    because their expiry has passed (in the file or not), the second because they left the
    file. `reactivated` came back live. `to_subscribe` and `to_unsubscribe` are the universe's
    stocks whose subscription the feed must now add or drop.
    """

    instruments: int
    added: int
    changed: int
    reactivated: int
    expired: int
    removed: int
    universe_size: int
    universe_added: list[str]
    universe_removed: list[str]
    to_subscribe: list[str]
    to_unsubscribe: list[str]


def refresh_master(
    conn: psycopg.Connection,
    records: list[dict[str, Any]],
    source: object,
    feed_mode: str,
    max_removed_share: float | None,
) -> MasterChange:
    """Make the master what `records` (checked by store.instruments.read_instruments) say, in
    one transaction; `feed_mode` is the mode a stock that joins the universe is subscribed in.

    RefreshRefused, nothing changed, when the records would take out more than
    `max_removed_share` (0 to 1) of the live instruments or of the F&O universe, or all of
    the universe; None takes the records whatever they remove (a forced refresh).
    Idempotent: the same records a second time change nothing and report nothing.
    """
    with conn.transaction():
        conn.execute(_LOCK)
        before = set(fno_universe(conn))
        (live,) = conn.execute(_LIVE).fetchone() or (0,)
        with staged_records(conn, records, source):
            row = conn.execute(_COUNTS).fetchone()
            added, changed, reactivated, expired_in_file = row or (0, 0, 0, 0)
            conn.execute(upsert_sql(f"NOT coalesce({EXPIRED_SQL}, false)"))
            gone = conn.execute(_INACTIVATE_ABSENT).fetchall()
        after = fno_universe(conn)
        joined = sorted(set(after) - before)
        left = sorted(before - set(after))
        expired_gone = sum(expired for _, expired in gone)
        if max_removed_share is not None:
            removed = len(gone) - expired_gone
            _check_removal(removed, live, len(left), len(before), max_removed_share)
        to_subscribe = _record_joined(conn, joined, feed_mode)
        to_unsubscribe = [key for (key,) in conn.execute(_DROP, [LEFT_UNIVERSE, left])]
    return MasterChange(
        instruments=len(records),
        added=added,
        changed=changed,
        reactivated=reactivated,
        expired=expired_in_file + expired_gone,
        removed=len(gone) - expired_gone,
        universe_size=len(after),
        universe_added=joined,
        universe_removed=left,
        to_subscribe=to_subscribe,
        to_unsubscribe=sorted(to_unsubscribe),
    )


def _check_removal(removed: int, live: int, left: int, universe: int, max_share: float) -> None:
    """RefreshRefused when `removed` of `live` instruments or `left` of the `universe`'s
    stocks is over `max_share`, or is the whole universe."""
    problems = []
    if live and removed / live > max_share:
        problems.append(f"{removed} of the {live} live instruments ({removed / live:.0%})")
    if universe and (left / universe > max_share or left == universe):
        problems.append(
            f"{left} of the {universe} stocks of the F&O universe ({left / universe:.0%})"
        )
    if problems:
        raise RefreshRefused(
            f"the new master would take out {' and '.join(problems)}, over the"
            f" {max_share:.0%} a refresh may remove"
        )


def _record_joined(conn: psycopg.Connection, joined: list[str], mode: str) -> list[str]:
    """Record the stocks that joined as `pending`, unless the feed follows nothing yet or
    follows them already; return the ones recorded."""
    (following,) = conn.execute(_FOLLOWING).fetchone() or (False,)
    if not following or not joined:
        return []
    held = {key for (key,) in conn.execute(_RESUMABLE_OF, [joined])}
    pending = [key for key in joined if key not in held]
    upsert(conn, pending, mode, "pending")
    return pending
