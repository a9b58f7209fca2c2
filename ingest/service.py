"""WebSocketService: the ingest as one object the CLI and the API's lifespan start and stop.

Start order matters for "nothing lost": the database state is read and the journal replayed
into the writer before the feed is connected, so every journaled frame is written exactly
once whether it arrived before a crash or after the restart.

`get_websocket_service()` and its siblings at the bottom hand Python code in the same process
(a custom handler, a debugging session) the service it runs and its parts, under the names
of the Phase 2 guide.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from core.config import Settings
from core.heap import INGEST_YOUNG_THRESHOLD, settle_startup_heap
from ingest.cache import AggregatedTickHandler
from ingest.chains.follower import ChainFollower
from ingest.channels.control import ControlServer, control_path
from ingest.client import FeedClient
from ingest.disk import DiskGuard
from ingest.handlers import TickCallback
from ingest.jobs.instrument_refresh import RefreshReport, refresh_instruments
from ingest.jobs.lifecycle import FeedParts, IngestJobs
from ingest.jobs.schedule.runner import DailySchedule
from ingest.journal import Journal, sync_forever
from ingest.journal_dir import JournalInUse
from ingest.metrics import IngestMetrics
from ingest.minute_bars import MinuteBarHandler
from ingest.pipeline import Pipeline
from ingest.recovery import JournalMismatch
from ingest.signals import SignalWriter, emit_signal
from ingest.simulator import FeedSimulator
from ingest.spike import SpikeDetector
from ingest.startup import (
    cancel_newest_first,
    catch_up_source,
    feed_settings,
    follow_chains,
    ingest_pool,
    instrument_records_of,
    open_journal,
    publishing,
    recovered_state,
    replay_journal,
    signal_writer,
    signals_start,
    start_control,
    stop_writer,
    stopped_task,
)
from ingest.status import BarsStatus, FeedStatus, IngestStatus
from ingest.subscriptions import SubscriptionManager, summarize
from ingest.symbols import SymbolDirectory
from ingest.tokens import TokenKeeper
from ingest.writer import TickDataHandler
from store.editions import Edition

log = logging.getLogger(__name__)

# Importable beside the guide's names: `from ingest.service import emit_signal`.
__all__ = [
    "WebSocketService",
    "emit_signal",
    "get_aggregated_handler",
    "get_tick_handlers",
    "get_websocket_client",
    "get_websocket_service",
]


class WebSocketService:
    """Feed client, pipeline, writer, cache, subscriptions, (Apache) bar rollup and the
    daily schedule."""

    def __init__(
        self, settings: Settings, database_url: str, *, record_simulator: bool = False
    ) -> None:
        """`record_simulator`: the built-in simulator (the feed when no token is set) keeps
        every tick it sends (`simulator.sent_ticks()`, at most a million), for a test that
        compares the store with exactly what was sent; off, its memory does not grow with
        the ticks, as a long run needs."""
        self.settings = settings
        self._record_simulator = record_simulator
        self.database_url = database_url
        self.metrics = IngestMetrics()
        self.symbols = SymbolDirectory(self._connection)
        self.cache = AggregatedTickHandler(self.symbols)
        self.bars = MinuteBarHandler()
        self.disk = DiskGuard.for_settings(settings)
        self.simulator: FeedSimulator | None = None
        self.tokens: TokenKeeper | None = None
        self.edition: Edition | None = None
        self._pool: ConnectionPool | None = None
        self._journal: Journal | None = None
        self._pipeline: Pipeline | None = None
        self._writer: TickDataHandler | None = None
        self._signals: SignalWriter | None = None
        self._signals_task: asyncio.Task[None] | None = None
        self._client: FeedClient | None = None
        self._subscriptions: SubscriptionManager | None = None
        self._chains: ChainFollower | None = None
        self._control: ControlServer | None = None
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._custom_handlers: list[TickCallback] = []
        if settings.spike_detector:  # the example signal handler
            spikes = SpikeDetector(settings.spike_window, settings.spike_z)
            self._custom_handlers.append(spikes.handle_tick)
        self.jobs = IngestJobs(database_url, settings)
        self.is_running = False

    @property
    def feed_source(self) -> str:
        return "simulator" if self.simulator is not None else self.settings.upstox_api_base

    async def start(self, subscribe_universe: bool = True) -> None:
        settings = self.settings
        self._pool = ingest_pool(self.database_url, settings.db_retry_max_s)
        await asyncio.to_thread(self._pool.open, wait=True, timeout=30)
        try:
            self._journal = open_journal(settings)
            state, self.edition, signals_seq = await recovered_state(
                self._pool, self._journal, settings.data_dir
            )
        except (JournalInUse, JournalMismatch):  # nothing a restart can fix
            await self.stop()
            raise
        self._pipeline = Pipeline(
            self._journal, state.decoder(), self.metrics, self.symbols.symbol_of, self.disk
        )
        self._writer = TickDataHandler(
            self._pool,
            self._journal,
            batch_rows=settings.batch_rows,
            batch_ms=settings.batch_ms,
            queue_max_rows=settings.queue_max_rows,
            metrics=self.metrics,
            catch_up_source=functools.partial(
                catch_up_source, self._pool, self._journal, self._pipeline
            ),
            next_batch_id=state.next_batch_id,
            committed_seq=state.committed_seq,
            retry_max_s=settings.db_retry_max_s,
        )
        self._signals = signal_writer(
            self._pool, self._journal, self._pipeline, self.symbols, settings.db_retry_max_s
        )
        signals_seq = signals_start(self._journal, state.committed_seq, signals_seq)
        self._journal.hold(signals_seq)
        self._journal.mark_committed(state.committed_seq)
        self._pipeline.add_handler(self._writer)
        self._pipeline.add_handler(self.cache)
        self.bars.seed(state.forming_bars)
        self._pipeline.add_handler(self.bars)
        self._pipeline.seq = min(signals_seq, state.committed_seq)
        for callback in self._custom_handlers:
            await self._pipeline.register_handler(callback)
        replay_journal(self._pipeline, bool(self._custom_handlers), signals_seq, state)
        self._tasks["writer"] = asyncio.create_task(self._writer.run(), name="writer")
        self._signals_task = asyncio.create_task(self._signals.run(), name="signals")

        self.tokens = TokenKeeper(settings)  # the environment's, else the file's
        client_settings, self.simulator = await feed_settings(
            settings,
            self.tokens,
            functools.partial(instrument_records_of, self._pool),
            self._record_simulator,
        )
        self._client = FeedClient(client_settings, self._pipeline, source=self.feed_source)
        self.tokens.attach(self._client.update_token)
        if self.tokens.source == "file":  # a new token there is taken without a restart
            self._tasks["token-watch"] = asyncio.create_task(self.tokens.watch(), name="token")
        self._pipeline.wanted = self._client.subscribed_keys  # live frames: what it follows now
        self._subscriptions = SubscriptionManager(
            self._client, self._pool, settings, symbols=self.symbols
        )
        parts = FeedParts(
            self.database_url,
            settings,
            self.edition,
            self._connection,
            self.tokens,
            self._client,
            self._pipeline.market_status,
            self._subscriptions,
            self.refresh_instruments,
        )
        self.jobs.record_coverage(parts, self._tasks)
        await self._client.connect()
        self._tasks["feed"] = asyncio.create_task(self._client.listen(), name="feed")
        resumed = await self._subscriptions.resume()
        if not resumed and subscribe_universe:
            await self._subscriptions.subscribe_to_universe(mode=settings.feed_mode)
        if settings.option_chains:
            self._chains, self._tasks["option-chains"] = await follow_chains(
                settings,
                self._subscriptions,
                self._client,
                self.cache,
                self._connection,
                self.refresh_instruments if self.simulator is not None else None,
            )
        self._tasks["journal-sync"] = asyncio.create_task(sync_forever(self._journal), name="sync")
        disk_sizes = self.disk.measure_forever(self._pool, self._journal)
        self._tasks["disk"] = asyncio.create_task(disk_sizes, name="disk")
        self._tasks.update(publishing(settings.data_dir, self.cache, self.bars, self.status))
        self._control = await start_control(
            control_path(settings.data_dir), self._subscriptions, self.refresh_instruments
        )
        self.jobs.start(parts, self._tasks)
        self.is_running = True
        _running.append(self)
        log.info("ingest started: feed %s, %s edition bars", self.feed_source, self.edition.value)

    async def stop(self) -> None:
        """Stop the feed, then flush every tick it delivered: a clean stop loses nothing."""
        self.is_running = False
        if self in _running:
            _running.remove(self)
        if self._control is not None:
            await self._control.stop()  # no changes from the API while the feed stops
            self._control = None
        if self._client is not None:
            await self._client.stop()
        # The newest first; the writer last, below, once the feed has stopped.
        await cancel_newest_first(self._tasks, keep="writer")
        await self.jobs.stop_backfill()
        # Through a database outage, each after one attempt.
        await asyncio.gather(stop_writer(self._writer, self._tasks), self.jobs.flush_coverage())
        if self._writer is not None and self.edition is not None:
            reached = self._writer.status().database_available
            await self.jobs.catch_up_bars(self.edition, reached)
        if self._pipeline is not None:
            await self._pipeline.close()
        if self._signals is not None and self._signals_task is not None:
            self._signals.stop()  # the handlers have stopped: what they emitted is written
            await self._signals_task
        if self._journal is not None:
            self._journal.close()
        if self.simulator is not None:
            await self.simulator.stop()
        if self._pool is not None:
            await asyncio.to_thread(self._pool.close)
        log.info("ingest stopped")

    async def register_handler(self, callback: TickCallback) -> None:
        """Follow every tick with an async callback, in its own task behind a bounded buffer.

        Before start() the callback is kept and attached when the pipeline exists.
        """
        if self._pipeline is None:
            self._custom_handlers.append(callback)
        else:
            await self._pipeline.register_handler(callback)

    def update_token(self, token: str) -> None:
        """The daily Upstox token: a rejected feed resumes at once with the new one."""
        if self.tokens is None:
            raise RuntimeError("the ingest service is not started")
        self.tokens.take(token, source="code")

    async def refresh_instruments(
        self, url: str | None = None, max_bytes: int | None = None, force: bool = False
    ) -> RefreshReport:
        """Refresh the instrument master; the feed follows its F&O universe
        (ingest/jobs/instrument_refresh.py)."""
        return await refresh_instruments(
            self.database_url,
            self.settings,
            subscriptions=self.subscriptions,
            simulator_url=self.simulator.url if self.simulator is not None else None,
            url=url,
            max_bytes=max_bytes,
            force=force,
        )

    @property
    def schedule(self) -> DailySchedule | None:
        return self.jobs.schedule

    @property
    def subscriptions(self) -> SubscriptionManager:
        if self._subscriptions is None:
            raise RuntimeError("the ingest service is not started")
        return self._subscriptions

    @property
    def ws_client(self) -> FeedClient:
        """The feed client (`UpstoxWebSocketClient`): `is_connected`, `get_subscribed_symbols()`."""
        if self._client is None:
            raise RuntimeError("the ingest service is not started")
        return self._client

    async def subscribe_symbol(self, symbols: str | list[str], mode: str = "full") -> list[str]:
        """Subscribe one symbol or a list (trading symbols, index names or keys); their keys."""
        return await self.subscriptions.subscribe_to_symbols(_as_list(symbols), mode=mode)

    def tick_handlers(self) -> dict[str, TickDataHandler | AggregatedTickHandler]:
        """{"db_handler": the database writer, "aggregated_handler": the latest-tick cache}."""
        if self._writer is None:
            raise RuntimeError("the ingest service is not started")
        return {"db_handler": self._writer, "aggregated_handler": self.cache}

    async def unsubscribe_symbol(self, symbols: str | list[str]) -> list[str]:
        """Unsubscribe one symbol or a list; their keys."""
        return await self.subscriptions.unsubscribe_symbols(_as_list(symbols))

    def health_problem(self) -> str | None:
        """Why the ingest is not healthy, in one line, or None: what /health answers 503 with.

        Read from memory only, so that it answers at once during a database outage.
        """
        if not self.is_running:
            return "the ingest service is not running"
        stopped = stopped_task({**self._tasks, "signals": self._signals_task})
        if stopped is not None:
            return stopped
        if self._pipeline is not None and self._pipeline.journal_error is not None:
            return f"feed frames are being dropped: {self._pipeline.journal_error}"
        return None

    def get_status(self) -> dict[str, Any]:
        """`status()` as a dict, as the Phase 2 guide reads it (`["subscribed_symbols"]`)."""
        return asdict(self.status())

    def status(self) -> IngestStatus:
        """Everything from memory, so it answers while the database is down; a section not
        built yet (the service is starting) is None.

        Call it on the event loop (an async endpoint): the writer's queue changes there.
        """
        client = self._client
        keys = client.subscribed_keys if client is not None else ()
        return IngestStatus(
            is_running=self.is_running,
            websocket_connected=bool(client and client.is_connected),
            subscribed_symbols=[self.symbols.symbol_of(key) for key in keys],
            feed=client.status() if client is not None else FeedStatus(source=self.feed_source),
            subscriptions=(
                summarize(len(client.get_subscribed_symbols()), len(client.failed_subscriptions()))
                if client is not None
                else None
            ),
            pipeline=self._pipeline.status() if self._pipeline else None,
            writer=self._writer.status() if self._writer else None,
            cache=self.cache.status(),
            journal=self._journal.status() if self._journal else None,
            bars=BarsStatus(
                edition=self.edition.value if self.edition else None,
                last_rollup_error=self.jobs.rollup.last_error,
            ),
            schedule=self.jobs.schedule.status() if self.jobs.schedule else None,
            token=self.tokens.status(client.token_state if client else None)
            if self.tokens
            else None,
            disk=self.disk.status(),
            signals=self._signals.status() if self._signals else None,
            health_problem=self.health_problem(),
            option_chains=self._chains.status() if self._chains is not None else None,
        )

    # --- background work ----------------------------------------------------------------

    def _connection(self) -> AbstractContextManager[psycopg.Connection]:
        if self._pool is None:
            raise RuntimeError("the ingest service is not started")
        return self._pool.connection()


async def serve_until_signalled(service: WebSocketService) -> None:
    """Start `service`, run it until SIGINT or SIGTERM, then stop it cleanly (its open batch
    written): what `tickvault ingest` runs."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await service.start()
    settle_startup_heap(young_threshold=INGEST_YOUNG_THRESHOLD)
    try:
        await stop.wait()
    finally:
        await service.stop()


def _as_list(symbols: str | list[str]) -> list[str]:
    return [symbols] if isinstance(symbols, str) else symbols


# The services started in this process, newest last (tests may run several; a process that
# serves runs one).
_running: list[WebSocketService] = []


def get_websocket_service() -> WebSocketService:
    """The ingest service this process runs (`tickvault run` or your own `start()`)."""
    if not _running:
        raise RuntimeError(
            "no tickvault ingest service runs in this process: these accessors work inside "
            "the process that runs it (`tickvault run`, or WebSocketService(...).start())"
        )
    return _running[-1]


def get_websocket_client() -> FeedClient:
    """The running service's feed client."""
    return get_websocket_service().ws_client


def get_aggregated_handler() -> AggregatedTickHandler:
    """The running service's latest-tick cache: `get_latest_tick("INFY")`."""
    return get_websocket_service().cache


def get_tick_handlers() -> dict[str, TickDataHandler | AggregatedTickHandler]:
    """{"db_handler": the database writer, "aggregated_handler": the latest-tick cache}."""
    return get_websocket_service().tick_handlers()
