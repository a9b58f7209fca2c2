"""The push stream's fan-out, one per API worker (docs/api.md, "The stream").

One task reads what the ingest publishes (ingest/channels/: the latest ticks and the forming
1-minute bars), only the slots whose sequence number moved, and offers each change to the
clients that follow its instrument. It reads as soon as a publish stored something (it looks
at the tables' publish counters every PROBE_S, one memory read each), and at least every
POLL_S, so a tick waits for the ingest's publish interval (25 ms) and a probe, not a poll;
and a tick held back by a client's `ticks_ms` goes out within a probe of its window opening.
Each client has a bounded queue that its connection drains; a client whose queue is full is
marked behind and closed by its route (4000): it never makes the worker hold more, and never
slows the ingest (which readers cost nothing) or the other clients (offering is a
put_nowait). No client reads the database: a subscribe resolves its symbols once, and the
stream is the published tables alone.

Conflation: each change is noted with the round that saw it, and a client is sent, at most
once per its `ticks_ms`, the newest tick and forming bar of each symbol it follows that
changed since it was last sent anything (those in between are dropped), each serialized once
for every client. So no two ticks of a symbol reach a client closer than `ticks_ms`, and the
per-client cost is a dict lookup per symbol per `ticks_ms`, not per change. A final bar (its
minute is over) is sent at once, never held or dropped. A minute is over once the feed
has moved past it: some instrument's forming bar is in a later minute. Every later change
of that bar (a late tick) is pushed again as final, so the last bar pushed for a minute is
the stored row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg_pool import ConnectionPool

from api.ingest_state import PublishedIngest
from api.stream_messages import (
    Message,
    bar_body,
    bar_values,
    changes_message,
    dumps,
    heartbeat_message,
    snapshot_message,
    tick_body,
)
from core.config import Settings
from ingest.channels.latest_reader import LatestTickReader
from ingest.channels.latest_table import (
    BARS,
    IngestNotRunning,
    SlotBusy,
    bars_path,
    published_path,
)
from ingest.minute_bars import MINUTE_US
from store.instruments import trading_symbols
from store.tick_row import Tick

log = logging.getLogger(__name__)

POLL_S = 0.05
PROBE_S = 0.005
HEARTBEAT_S = 5.0
MIN_TICKS_MS, MAX_TICKS_MS = 50, 5000


class StreamClient:
    """One connection: what it follows, when it was last sent the changes, and its bounded
    queue of messages (at most `queue_max` of them and `queue_max_bytes` of text, so a batch
    client's large messages are bounded as well as a tick client's many small ones). The
    route drains it with `next_message` and closes the connection once `behind` is set."""

    def __init__(self, queue_max: int, queue_max_bytes: int) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue(queue_max)
        self.queue_max_bytes = queue_max_bytes
        self.queued_bytes = 0
        self.behind = asyncio.Event()
        self.keys: set[str] = set()
        self.universe = False
        self.ticks_s = 0.25
        self.bars = True
        self.batch = False  # one "changes" message per ticks_ms instead of one per change
        self.sent_round = 0  # the fan-out round whose changes it has been sent
        self.sent_at = -math.inf  # when (monotonic)

    def offer(self, message: Message) -> None:
        """Queue `message`, or mark the client behind (nothing more is queued for it)."""
        if self.behind.is_set():
            return
        size = len(message[1])
        # An empty queue takes any message: a universe snapshot may exceed the byte bound.
        if self.queued_bytes + size > self.queue_max_bytes and not self.queue.empty():
            self.behind.set()
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.behind.set()
            return
        self.queued_bytes += size

    async def next_message(self) -> Message:
        message = await self.queue.get()
        self.queued_bytes -= len(message[1])
        return message


class TradingSymbols(dict[str, str]):
    """Instrument key -> trading symbol, each learned once from the instrument master (the key
    stands in where the master does not know it, or the database cannot say now); the
    messages read it as their `symbols` mapping."""

    def __init__(self, pool: ConnectionPool) -> None:
        super().__init__()
        self._pool = pool

    def unnamed(self, keys: list[str]) -> list[str]:
        return [key for key in dict.fromkeys(keys) if key not in self]

    def learn(self, keys: list[str]) -> None:
        """Name the keys not named yet: one query for all of them."""
        missing = self.unnamed(keys)
        if not missing:
            return
        try:
            with self._pool.connection(timeout=2) as conn:
                found = trading_symbols(conn, missing)
        except Exception as error:
            log.warning("stream: trading symbols not read, keys stand in: %s", error)
            found = {}
        for key in missing:
            self[key] = found.get(key) or key


class StreamHub:
    """The fan-out of one API worker: `register` a client (None past `max_clients`),
    `subscribe` it, `unregister` it at the end; `start`/`stop` the reading task."""

    def __init__(
        self, settings: Settings, published: PublishedIngest, pool: ConnectionPool
    ) -> None:
        data_dir = Path(settings.data_dir).absolute()
        self._ticks = LatestTickReader(published_path(data_dir))
        self._bars = LatestTickReader(bars_path(data_dir), shape=BARS)
        self._read_lock = threading.Lock()  # a reader is not thread-safe
        self._published = published
        self.max_clients = settings.stream_max_clients
        self.queue_max = settings.stream_queue_max
        self.queue_max_bytes = settings.stream_queue_max_bytes
        self.behind_reason = (
            f"fell behind: {self.queue_max} messages or {self.queue_max_bytes} bytes queued"
        )
        self.clients: set[StreamClient] = set()
        # Set while a client is registered: without one the reading task sleeps on it rather
        # than waking every PROBE_S in a worker that serves only plain requests.
        self._followed = asyncio.Event()
        self._followers: dict[str, set[StreamClient]] = {}  # key -> clients that follow it
        self._universe: set[StreamClient] = set()
        self._symbols = TradingSymbols(pool)
        self._seqs: dict[str, list[int]] = {"tick": [], "bar": []}
        self._tokens: dict[str, str | None] = {"tick": None, "bar": None}
        self._round = 0  # fan-out rounds so far: when each change was seen
        self._latest: dict[str, tuple[int, Tick]] = {}  # key -> (round, its newest tick)
        self._forming: dict[str, tuple[int, tuple]] = {}  # key -> (round, its forming bar)
        self._texts: dict[tuple[str, str], tuple[int, str]] = {}  # (type, key) -> JSON
        self._rows: dict[str, Tick] = {}  # key -> the last published bar row seen
        self._finals: dict[str, dict[int, tuple]] = {}  # key -> bucket -> final bar pushed
        self._minute = 0  # the newest forming bucket of the feed: older minutes are over
        self._next_due = math.inf  # when a client's ticks_ms window opens next (monotonic)
        self._task: asyncio.Task[None] | None = None

    # --- clients ---------------------------------------------------------------------------

    def register(self) -> StreamClient | None:
        if len(self.clients) >= self.max_clients:
            return None
        client = StreamClient(self.queue_max, self.queue_max_bytes)
        client.sent_round = self._round  # what came before is in its snapshot
        self.clients.add(client)
        self._followed.set()
        return client

    def unregister(self, client: StreamClient) -> None:
        self.clients.discard(client)
        if not self.clients:
            self._followed.clear()
        self._universe.discard(client)
        for key in client.keys:
            followers = self._followers.get(key)
            if followers is not None:
                followers.discard(client)
                if not followers:
                    del self._followers[key]
        client.keys.clear()

    async def subscribe(
        self,
        client: StreamClient,
        keys: list[str] | None,
        ticks_ms: int,
        bars: bool,
        batch: bool = False,
    ) -> None:
        """Follow `keys` (None: every instrument the ingest publishes) from now on, with a
        snapshot of their latest ticks and bars first."""
        ticks, rows = await asyncio.to_thread(self._snapshot, keys)
        # From here to the offer, no await: no change is queued before the snapshot.
        client.ticks_s = ticks_ms / 1000
        client.bars = bars
        client.batch = batch
        if keys is None:
            client.universe = True
            self._universe.add(client)
        else:
            for key in keys:
                client.keys.add(key)
                self._followers.setdefault(key, set()).add(client)
        client.offer(snapshot_message(ticks, rows if bars else {}, self._symbols, self._minute))

    def unsubscribe(self, client: StreamClient, keys: list[str]) -> None:
        for key in keys:
            followers = self._followers.get(key)
            if followers is not None:
                followers.discard(client)
                if not followers:
                    del self._followers[key]
            client.keys.discard(key)

    def _snapshot(self, keys: list[str] | None) -> tuple[dict[str, Tick], dict[str, Tick]]:
        with self._read_lock:
            try:
                wanted = self._ticks.keys() if keys is None else keys
                ticks = self._ticks.latest(wanted)
            except SlotBusy as busy:
                ticks = busy.partial
            except IngestNotRunning:
                return {}, {}
            try:
                rows = self._bars.latest(wanted)
            except SlotBusy as busy:
                rows = busy.partial
            except IngestNotRunning:
                rows = {}
        self._symbols.learn(list(ticks) + list(rows))
        return ticks, rows

    # --- the reading task ------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with self._read_lock:
            self._ticks.close()
            self._bars.close()

    async def _run(self) -> None:
        next_heartbeat = 0.0
        failing = False
        seen: tuple[int, int] | None = None
        last_round = -math.inf
        while True:
            await asyncio.sleep(PROBE_S)
            if not self.clients:
                await self._followed.wait()
                continue
            try:
                now = time.monotonic()
                counts = self._published_counts()
                if (counts is None or counts == seen) and now - last_round < POLL_S:
                    if now >= self._next_due:  # a window opened on changes already noted
                        self._send_due()
                    continue
                seen, last_round = counts, now
                ticks, rows = self._read_changes()
                if unnamed := self._symbols.unnamed(list(ticks) + list(rows)):
                    await asyncio.to_thread(self._symbols.learn, unnamed)  # the database
                self._fan_out(ticks, rows)
                if time.monotonic() >= next_heartbeat:
                    next_heartbeat = time.monotonic() + HEARTBEAT_S
                    heartbeat = await asyncio.to_thread(heartbeat_message, self._published)
                    for client in list(self.clients):
                        client.offer(heartbeat)
                failing = False
            except Exception:
                if not failing:  # once per spell, not every round
                    log.exception("the stream could not read the ingest's published tables")
                failing = True

    def _published_counts(self) -> tuple[int, int] | None:
        """The two tables' publish counters (-1 for one no ingest publishes); None while a
        snapshot holds the readers (the next probe looks again)."""
        if not self._read_lock.acquire(blocking=False):
            return None
        try:
            return (_count(self._ticks), _count(self._bars))
        finally:
            self._read_lock.release()

    def _read_changes(self) -> tuple[dict[str, Tick], dict[str, Tick]]:
        """The changed slots, read on the event loop: about a millisecond for a round of 20k
        ticks/s, less than a hop to a thread and back costs a loaded worker. Nothing while a
        snapshot's thread holds the readers (the slots' numbers keep the changes for later)."""
        if not self._read_lock.acquire(blocking=False):
            return {}, {}
        try:
            return self._changes(self._ticks, "tick"), self._changes(self._bars, "bar")
        finally:
            self._read_lock.release()

    def _changes(self, reader: LatestTickReader, kind: str) -> dict[str, Tick]:
        try:
            token = reader.start_token
        except IngestNotRunning:
            return {}
        if token != self._tokens[kind]:  # a new ingest: its slots are new
            self._seqs[kind] = []
            self._tokens[kind] = token
        self._seqs[kind], rows = reader.changes(self._seqs[kind])
        return rows

    def _fan_out(self, ticks: dict[str, Tick], rows: dict[str, Tick]) -> None:
        """Note this round's changes, push the bars of minutes that closed, and send each
        client whose ticks_ms has passed since its last message what changed since: one
        message per symbol and kind at most, the newest, serialized once for all clients."""
        self._round += 1
        round_ = self._round
        latest = self._latest
        for key, tick in ticks.items():
            latest[key] = (round_, tick)
        self._note_bars(rows)
        self._send_due()

    def _send_due(self) -> None:
        """Send each client whose ticks_ms has passed what changed since its last message,
        and note when the next window opens: the probe sends then, not at the next publish
        (up to 25 ms later). A client with nothing new is left to the next publish."""
        # The same moment twice: `now` spaces a client's messages, `ts` tells it when they
        # were made (and so when its window opens again).
        now, ts = time.monotonic(), datetime.now(UTC).isoformat()
        next_due = math.inf
        for client in list(self.clients):
            if now - client.sent_at >= client.ticks_s and not self._send_changes(client, now, ts):
                continue
            next_due = min(next_due, client.sent_at + client.ticks_s)
        self._next_due = next_due

    def _send_changes(self, client: StreamClient, now: float, ts: str) -> bool:
        """Whether `client` was sent anything."""
        since = client.sent_round
        keys = self._latest.keys() if client.universe else client.keys
        ticks = [
            self._text("tick", key, entry)
            for key in keys
            if (entry := self._latest.get(key)) is not None and entry[0] > since
        ]
        bars = [
            self._text("bar", key, entry)
            for key in (keys if client.bars else ())
            if (entry := self._forming.get(key)) is not None
            and entry[0] > since
            and entry[1][0] >= self._minute
        ]
        client.sent_round = self._round
        if not ticks and not bars:
            return False
        client.sent_at = now
        if client.batch:  # one frame for all of them: the frames, not the fan-out, cost most
            client.offer(changes_message(ticks, bars, ts))
            return True
        for text in ticks:
            client.offer(("tick", text))
        for text in bars:
            client.offer(("bar", text))
        return True

    def _text(self, kind: str, key: str, entry: tuple[int, Any]) -> str:
        """The JSON of `entry` (a key's newest tick or forming bar), made once per change."""
        cached = self._texts.get((kind, key))
        if cached is not None and cached[0] == entry[0]:
            return cached[1]
        if kind == "tick":
            text = dumps(tick_body(entry[1], self._symbols))
        else:
            text = dumps(bar_body(key, entry[1], self._symbols, final=False))
        self._texts[(kind, key)] = (entry[0], text)
        return text

    def _note_bars(self, rows: dict[str, Tick]) -> None:
        newest = max((row[1] for row in rows.values()), default=0)
        closed = newest > self._minute > 0
        self._minute = max(self._minute, newest)
        self._rows.update(rows)
        # When a minute closes, every instrument's bar of it is final, quiet ones' too.
        for key in list(self._rows) if closed else rows:
            current, previous = bar_values(self._rows[key])
            for values in (previous, current):
                if values is not None and values[0] < self._minute:
                    self._push_final(key, values)
            if key in rows:
                self._forming[key] = (self._round, current)

    def _push_final(self, key: str, values: tuple) -> None:
        """Push a bar of a minute that is over at once (never held back: a client sees every
        minute's last bar), unless it was pushed with these values."""
        bucket = values[0]
        pushed = self._finals.setdefault(key, {})
        if pushed.get(bucket) == values:
            return
        pushed[bucket] = values
        for old in [b for b in pushed if b < bucket - MINUTE_US]:  # two minutes are enough
            del pushed[old]
        clients = self._bar_clients(key)
        if clients:
            message = ("bar", dumps(bar_body(key, values, self._symbols, final=True)))
            for client in clients:
                client.offer(message)

    def _bar_clients(self, key: str) -> list[StreamClient]:
        return [c for c in (*self._followers.get(key, ()), *self._universe) if c.bars]


def _count(reader: LatestTickReader) -> int:
    try:
        return reader.ticks_published()
    except IngestNotRunning:
        return -1
