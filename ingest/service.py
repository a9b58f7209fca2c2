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
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from core.config import Settings
from ingest.cache import AggregatedTickHandler
from ingest.chains.follower import ChainFollower
from ingest.channels.control import ControlServer, control_path
from ingest.channels.latest_publisher import publish_forever, publish_stopped
from ingest.channels.latest_table import BARS, bars_path, published_path
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
from ingest.recovery import JournalMismatch, RecoveryState, check_journal, load_recovery_state
from ingest.signals import SignalWriter, emit_signal
from ingest.simulator import FeedSimulator
from ingest.spike import SpikeDetector
from ingest.status import BarsStatus, FeedStatus, IngestStatus
from ingest.subscriptions import SubscriptionManager, summarize
from ingest.symbols import SymbolDirectory
from ingest.tokens import TokenKeeper
from ingest.writer import TickDataHandler
from store.editions import Edition, server_edition
from store.instruments import instrument_records
from store.signals import signal_progress
from store.tick_row import Tick

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
        self._pool = _ingest_pool(self.database_url, settings.db_retry_max_s)
        await asyncio.to_thread(self._pool.open, wait=True, timeout=30)
        try:
            self._journal = Journal(
                settings.journal_dir,
                segment_bytes=settings.journal_segment_bytes,
                max_bytes=settings.journal_max_bytes,
            )
            journal_id = self._journal.journal_id
            state, self.edition, signals_seq = await asyncio.to_thread(
                _read_state, self._pool, journal_id
            )
            check_journal(self._journal, state)
        except (JournalInUse, JournalMismatch) as error:  # nothing a restart can fix
            if isinstance(error, JournalMismatch):  # the reason, for /health and status
                publish_stopped(published_path(settings.data_dir), str(error))
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
            catch_up_source=self._catch_up_source,
            next_batch_id=state.next_batch_id,
            committed_seq=state.committed_seq,
            retry_max_s=settings.db_retry_max_s,
        )
        self._signals = SignalWriter(
            self._pool,
            self._journal,
            self._pipeline.signals_complete_seq,
            self.symbols.followed_key,
            self.symbols.symbol_of,
            retry_max_s=settings.db_retry_max_s,
        )
        self._pipeline.signals = self._signals
        signals_seq = self._signals_start(state.committed_seq, signals_seq)
        self._journal.hold(signals_seq)
        self._journal.mark_committed(state.committed_seq)
        self._pipeline.add_handler(self._writer)
        self._pipeline.add_handler(self.cache)
        self.bars.seed(state.forming_bars)
        self._pipeline.add_handler(self.bars)
        self._pipeline.seq = min(signals_seq, state.committed_seq)
        for callback in self._custom_handlers:
            await self._pipeline.register_handler(callback)
        # Journaled frames are filtered by what was subscribed when they arrived (the table);
        # live frames, below, by what the client follows now.
        self._pipeline.wanted = state.subscribed_keys
        if self._custom_handlers and signals_seq < state.committed_seq:
            again = self._pipeline.replay_to_custom_handlers(signals_seq, state.committed_seq)
            log.info(
                "gave the custom handlers %d frames again: their ticks are stored, not all "
                "their signals",
                again,
            )
        replayed = self._pipeline.replay(state.committed_seq)
        if replayed:
            log.info("replayed %d journaled frames after seq %d", replayed, state.committed_seq)
        self._tasks["writer"] = asyncio.create_task(self._writer.run(), name="writer")
        self._signals_task = asyncio.create_task(self._signals.run(), name="signals")

        self.tokens = TokenKeeper(settings)  # the environment's, else the file's
        client_settings, self.simulator = await _feed_settings(
            settings,
            self.tokens,
            functools.partial(_instrument_records, self._pool),
            self._record_simulator,
        )
        self._client = FeedClient(client_settings, self._pipeline, source=self.feed_source)
        self.tokens.attach(self._client.update_token)
        if self.tokens.source == "file":  # a new token there is taken without a restart
            self._tasks["token-watch"] = asyncio.create_task(self.tokens.watch(), name="token")
        self._pipeline.wanted = self._client.subscribed_keys
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
            await self._follow_chains()
        self._tasks["journal-sync"] = asyncio.create_task(sync_forever(self._journal), name="sync")
        disk_sizes = self.disk.measure_forever(self._pool, self._journal)
        self._tasks["disk"] = asyncio.create_task(disk_sizes, name="disk")
        self._tasks.update(_publishing(settings.data_dir, self.cache, self.bars, self.status))
        self._control = await _start_control(
            control_path(settings.data_dir), self._subscriptions, self.refresh_instruments
        )
        self.jobs.start(parts, self._tasks)
        self.is_running = True
        _running.append(self)
        log.info("ingest started: feed %s, %s edition bars", self.feed_source, self.edition.value)

    async def _follow_chains(self) -> None:
        """Start following TICKVAULT_OPTION_CHAINS (ingest/chains/). On the built-in simulator
        the master is refreshed from it first: its option chains are listed on its clock, not
        in the sample master the store starts with."""
        assert self._client is not None
        assert self._subscriptions is not None
        if self.simulator is not None:
            try:
                await self.refresh_instruments()
            except (ValueError, psycopg.Error) as error:  # the chains wait for a later refresh
                log.warning("could not load the simulator's option chains: %s", error)
        self._chains = ChainFollower(
            self.settings, self._subscriptions, self._client, self.cache, self._read
        )
        self._tasks["option-chains"] = asyncio.create_task(
            self._chains.run_forever(), name="option-chains"
        )

    async def _read(self, query: Callable[[psycopg.Connection], Any]) -> Any:
        def run() -> Any:
            with self._connection() as conn:
                return query(conn)

        return await asyncio.to_thread(run)

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
        for name in reversed([name for name in self._tasks if name != "writer"]):
            await _cancel(name, self._tasks.pop(name))
        await self.jobs.stop_backfill()
        # Through a database outage, each after one attempt.
        await asyncio.gather(self._stop_writer(), self.jobs.flush_coverage())
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

    def _signals_start(self, committed_seq: int, signals_seq: int | None) -> int:
        """The seq after which the custom handlers see frames again: where their signals
        were last complete, if the journal still holds the frames after it."""
        assert self._journal is not None
        if signals_seq is None:
            return committed_seq  # the first start of this journal, or of signals
        if signals_seq < committed_seq and self._journal.first_seq > signals_seq + 1:
            log.warning(
                "the signals of frames %d..%d may be incomplete: the journal no longer holds them",
                signals_seq + 1,
                self._journal.first_seq - 1,
            )
            return committed_seq
        return signals_seq

    async def _stop_writer(self) -> None:
        """Every tick written, or left in the journal while the database is unavailable."""
        if self._writer is not None:
            await self._writer.stop()
            writer = self._tasks.pop("writer", None)
            if writer is not None:
                await writer

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
        tasks = dict(self._tasks)
        if self._signals_task is not None:
            tasks["signals"] = self._signals_task
        for name, task in tasks.items():
            if task.done():
                return f"the ingest's {name} task has stopped: {_outcome(task)}"
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

    def _catch_up_source(self) -> Callable[[int], Iterator[tuple[int, list[Tick]]]]:
        """The journal's ticks as the database left off, for the writer's catch-up."""
        assert self._pool is not None
        assert self._journal is not None
        assert self._pipeline is not None
        with self._pool.connection() as conn:
            state = load_recovery_state(conn, self._journal.journal_id)
        return functools.partial(self._pipeline.journal_ticks, decoder=state.decoder())


async def serve_until_signalled(service: WebSocketService) -> None:
    """Start `service`, run it until SIGINT or SIGTERM, then stop it cleanly (its open batch
    written): what `tickvault ingest` runs."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()


def _publishing(
    data_dir: Path,
    cache: AggregatedTickHandler,
    bars: MinuteBarHandler,
    status: Callable[[], IngestStatus],
) -> dict[str, asyncio.Task[None]]:
    """The tasks that publish the latest ticks with the status, and the forming 1-minute
    bars, for the API's processes (ingest/channels/)."""
    ticks = publish_forever(published_path(data_dir), cache.take_changed, status)
    minutes = publish_forever(bars_path(data_dir), bars.take_changed, None, shape=BARS)
    return {
        "publish": asyncio.create_task(ticks, name="publish"),
        "publish-bars": asyncio.create_task(minutes, name="publish-bars"),
    }


def _read_state(pool: ConnectionPool, journal_id: str) -> tuple[RecoveryState, Edition, int | None]:
    """The recovery state, the edition and how far the signals were complete."""
    with pool.connection() as conn:
        state = load_recovery_state(conn, journal_id)
        return state, server_edition(conn), signal_progress(conn, journal_id)


def _instrument_records(pool: ConnectionPool) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        return instrument_records(conn)


async def _start_control(
    path: Path,
    subscriptions: SubscriptionManager,
    refresh_instruments: Callable[..., Awaitable[RefreshReport]],
) -> ControlServer | None:
    """The control socket the API's processes send subscription changes to
    (ingest/channels/control.py). Without it the ingest runs on, and those changes answer
    503."""

    async def refresh(url: str | None, max_bytes: int | None, force: bool) -> dict[str, Any]:
        report = await refresh_instruments(url=url, max_bytes=max_bytes, force=force)
        return report.as_dict()

    control = ControlServer(path, subscriptions, refresh)
    try:
        await control.start()
    except OSError as error:
        log.error("no control socket, subscription changes from the API fail: %s", error)
        return None
    return control


def _ingest_pool(database_url: str, retry_max_s: float) -> ConnectionPool:
    """The ingest's connections. A request for one in an outage fails fast (the writer
    retries); each round of the pool's uncapped reconnects ends after `retry_max_s` and the
    next request starts another, so an outage of any length is retried seconds apart."""
    return ConnectionPool(
        database_url,
        min_size=1,
        max_size=4,
        open=False,
        timeout=5,
        reconnect_timeout=retry_max_s,
        check=ConnectionPool.check_connection,
        name="tickvault-ingest",
    )


async def _cancel(name: str, task: asyncio.Task[Any]) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        log.exception("the %s task had failed before the stop", name)


async def _feed_settings(
    settings: Settings,
    tokens: TokenKeeper,
    instrument_records: Callable[[], list[dict[str, Any]]],
    record: bool = False,
) -> tuple[Settings, FeedSimulator | None]:
    """The feed client's settings, with the token found; with no token anywhere, the feed is
    the simulator (started here, on the instrument master; `record`: see WebSocketService)."""
    if tokens.source != "missing":
        return replace(settings, upstox_access_token=tokens.token), None
    records = await asyncio.to_thread(instrument_records)
    simulator = FeedSimulator(
        instruments=records,
        rate=settings.simulator_rate,
        seed=settings.simulator_seed,
        record=record,
    )
    await simulator.start()
    access = tokens.use_simulator(simulator.url)
    feed_settings = replace(
        settings, upstox_api_base=access.api_base, upstox_access_token=access.token
    )
    return feed_settings, simulator


def _outcome(task: asyncio.Task[Any]) -> str:
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    return f"{type(error).__name__}: {error}" if error is not None else "returned"


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
