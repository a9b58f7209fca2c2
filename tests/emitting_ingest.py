"""An ingest process whose custom handler emits a signal for every tick: the kill test's.

`python -m tests.emitting_ingest` runs `WebSocketService` as `tickvault ingest` does (the
settings from the environment, logs in the data directory) with `EveryTick` registered
before the start, so it is given the journal's frames again after a crash.
"""

from __future__ import annotations

import asyncio

from core.config import Settings
from ingest.service import WebSocketService, emit_signal, serve_until_signalled
from ingest.tick_data import TickData
from tickvault.logs import configure_logging


class EveryTick:
    """One `tick` signal per tick, its value the price: what it emits depends on the tick
    alone, so a frame given again emits the same signals. Every `pause_every` ticks it
    sleeps `pause_s`, falling behind a fast feed as a real handler may."""

    def __init__(self, pause_every: int = 0, pause_s: float = 0.0) -> None:
        self.pause_every = pause_every
        self.pause_s = pause_s
        self.seen = 0

    async def handle_tick(self, tick: TickData) -> bool:
        emit_signal("tick", tick.last_price, volume=tick.volume)
        self.seen += 1
        if self.pause_every and self.seen % self.pause_every == 0:
            await asyncio.sleep(self.pause_s)
        return True


async def _serve(settings: Settings) -> None:
    service = WebSocketService(settings, settings.database_url or "")
    await service.register_handler(EveryTick(pause_every=100, pause_s=0.1).handle_tick)
    await serve_until_signalled(service)


if __name__ == "__main__":
    settings = Settings.from_env()
    configure_logging(settings.log_level, [], settings.data_dir / "logs")
    asyncio.run(_serve(settings))
