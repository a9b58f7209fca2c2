"""The push stream's messages (docs/api.md, "The stream"): the snapshot, tick, bar, changes
and heartbeat JSON a client is sent.

Apart from the fan-out (api/stream_hub.py) so that what a client reads is in one place, and
the hub is left with who is sent what and when. Every function here is pure but the
heartbeat's, which reads the ingest's published status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from api.ingest_state import PublishedIngest, StatusNotPublished
from ingest.channels.latest_table import IngestNotRunning, SlotBusy
from ingest.minute_bars import BAR_FIELDS
from store.tick_row import TICK_COLUMNS, TIME_COLUMNS, Tick, to_datetime

Message = tuple[str, str]  # (type, the JSON text): a WebSocket frame, or an SSE event


def dumps(body: dict[str, Any]) -> str:
    """Compact JSON, datetimes as ISO text (what `isoformat` gives). orjson, because the
    fan-out serializes every changed tick of every round (json took a third of a worker's
    stream CPU); a float that is not finite becomes null, as JSON has no such number."""
    return orjson.dumps(body).decode()


def tick_body(tick: Tick, symbols: Mapping[str, str]) -> dict[str, Any]:
    """A tick as a client reads it: its trading symbol (`symbols`: key -> symbol; the key
    where none is known) and every column, times as datetimes (ISO text in `dumps`)."""
    body: dict[str, Any] = {"type": "tick", "symbol": symbols.get(tick[0], tick[0])}
    body.update(zip(TICK_COLUMNS, tick, strict=True))
    for index in TIME_COLUMNS:
        if (value := tick[index]) is not None:
            body[TICK_COLUMNS[index]] = to_datetime(value)
    return body


def bar_body(key: str, values: tuple, symbols: Mapping[str, str], *, final: bool) -> dict[str, Any]:
    """A 1-minute bar (`values` in BAR_FIELDS order) of instrument `key`; `final`: its
    minute is over, so these are the stored row's values."""
    bar = dict(zip(BAR_FIELDS, values, strict=True))
    bar["bucket"] = to_datetime(bar["bucket"])
    return {
        "type": "bar",
        "symbol": symbols.get(key, key),
        "instrument_key": key,
        "interval": "1m",
        **bar,
        "final": final,
    }


def bar_values(row: Tick) -> tuple[tuple, tuple | None]:
    """A published bar row as (forming bar, previous bar or None), each in BAR_FIELDS order."""
    width = len(BAR_FIELDS)
    forming = tuple(row[1 : 1 + width])
    previous = tuple(row[1 + width : 1 + 2 * width])
    return forming, (previous if previous[0] else None)


def snapshot_message(
    ticks: dict[str, Tick], rows: dict[str, Tick], symbols: Mapping[str, str], minute: int
) -> Message:
    """The first message after a subscribe: the newest ticks and bars of what was
    subscribed; a bar of a minute before `minute` (the feed's newest) is final."""
    bars = []
    for row in rows.values():
        forming, previous = bar_values(row)
        if previous is not None:
            bars.append(bar_body(row[0], previous, symbols, final=True))
        bars.append(bar_body(row[0], forming, symbols, final=forming[0] < minute))
    body = {
        "type": "snapshot",
        "ticks": [tick_body(tick, symbols) for tick in ticks.values()],
        "bars": bars,
    }
    return "snapshot", dumps(body)


def changes_message(ticks: Sequence[str], bars: Sequence[str], ts: str) -> Message:
    """One frame for a batching client's changes (each already JSON text): the frames, not
    the fan-out, cost most. `ts` (ISO, UTC) is when the server made it: the client's next
    `ticks_ms` window opens then, so a client can tell what the stream itself added to a
    tick's age from what its own conflation held back."""
    joined_ticks, joined_bars = ",".join(ticks), ",".join(bars)
    return "changes", (
        f'{{"type":"changes","ts":"{ts}","ticks":[{joined_ticks}],"bars":[{joined_bars}]}}'
    )


def heartbeat_message(published: PublishedIngest) -> Message:
    """Whether some segment's market is open and the feed connected, from the ingest's
    published status (closed and disconnected when it has none)."""
    market, feed = "closed", "disconnected"
    try:
        status = published.status()
        feed = "connected" if status.websocket_connected else "disconnected"
        segments = status.pipeline.market_status if status.pipeline else {}
        if any(value == "NORMAL_OPEN" for value in segments.values()):
            market = "open"
    except (IngestNotRunning, StatusNotPublished, SlotBusy):
        pass
    body = {
        "type": "heartbeat",
        "ts": datetime.now(UTC).isoformat(),
        "market": market,
        "feed": feed,
    }
    return "heartbeat", dumps(body)
