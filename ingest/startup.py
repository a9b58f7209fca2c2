"""The ingest service's start-up plumbing, apart from the service that runs it
(ingest/service.py): the pool, the state read before the journal is replayed, the feed's
settings (or the simulator when there is no token), the publishing tasks, the control socket
and the option-chain follower.

Each piece is a function of what it is given, so the service reads as the order things
start and stop in, and "nothing lost" (the journal replayed into the writer before the feed
is connected) stays visible there.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from core.config import Settings
from ingest.cache import AggregatedTickHandler
from ingest.chains.follower import ChainFollower
from ingest.channels.control import ControlServer
from ingest.channels.latest_publisher import publish_forever, publish_stopped
from ingest.channels.latest_table import BARS, bars_path, published_path
from ingest.client import FeedClient
from ingest.jobs.instrument_refresh import RefreshReport
from ingest.journal import Journal
from ingest.minute_bars import MinuteBarHandler
from ingest.pipeline import Pipeline
from ingest.recovery import (
    JournalMismatch,
    RecoveryState,
    check_journal,
    decoder_at_last_commit,
    load_recovery_state,
)
from ingest.signals import SignalWriter
from ingest.simulator import FeedSimulator
from ingest.status import IngestStatus
from ingest.subscriptions import SubscriptionManager
from ingest.symbols import SymbolDirectory
from ingest.tokens import TokenKeeper
from ingest.writer import TickDataHandler
from store.editions import Edition, server_edition
from store.instruments import instrument_records
from store.pool_check import check_quietly
from store.signals import signal_progress
from store.tick_row import Tick

# Under the service's name: these lines are its start and stop, as the logs named them before
# this module was split off from it.
log = logging.getLogger("ingest.service")


def ingest_pool(database_url: str, retry_max_s: float) -> ConnectionPool:
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
        check=check_quietly,
        name="tickvault-ingest",
    )


def read_state(pool: ConnectionPool, journal_id: str) -> tuple[RecoveryState, Edition, int | None]:
    """The recovery state, the edition and how far the signals were complete."""
    with pool.connection() as conn:
        state = load_recovery_state(conn, journal_id)
        return state, server_edition(conn), signal_progress(conn, journal_id)


def open_journal(settings: Settings) -> Journal:
    """The journal of `settings`' data directory (JournalInUse: another instance holds it)."""
    return Journal(
        settings.journal_dir,
        segment_bytes=settings.journal_segment_bytes,
        max_bytes=settings.journal_max_bytes,
    )


async def recovered_state(
    pool: ConnectionPool, journal: Journal, data_dir: Path
) -> tuple[RecoveryState, Edition, int | None]:
    """`read_state` for `journal`, checked to be the database it was written to: on a
    JournalMismatch the reason is published first, for /health and status."""
    state, edition, signals_seq = await asyncio.to_thread(read_state, pool, journal.journal_id)
    try:
        check_journal(journal, state)
    except JournalMismatch as error:
        publish_stopped(published_path(data_dir), str(error))
        raise
    return state, edition, signals_seq


def replay_journal(
    pipeline: Pipeline, custom_handlers: bool, signals_seq: int, state: RecoveryState
) -> None:
    """Before the feed connects: the custom handlers are given again the frames whose signals
    were not all written, then every handler the frames the database has not committed."""
    # Journaled frames are filtered by what was subscribed when they arrived (the table);
    # live frames, once the feed connects, by what the client follows then.
    pipeline.wanted = state.subscribed_keys
    committed_seq = state.committed_seq
    if custom_handlers and signals_seq < committed_seq:
        again = pipeline.replay_to_custom_handlers(signals_seq, committed_seq)
        log.info(
            "gave the custom handlers %d frames again: their ticks are stored, not all "
            "their signals",
            again,
        )
    replayed = pipeline.replay(committed_seq)
    if replayed:
        log.info("replayed %d journaled frames after seq %d", replayed, committed_seq)


def signal_writer(
    pool: ConnectionPool,
    journal: Journal,
    pipeline: Pipeline,
    symbols: SymbolDirectory,
    retry_max_s: float,
) -> SignalWriter:
    """The writer of what the custom handlers emit (ingest/signals.py), attached to the
    pipeline that tells it up to which frame every handler has handled every tick."""
    signals = SignalWriter(
        pool,
        journal,
        pipeline.signals_complete_seq,
        symbols.followed_key,
        symbols.symbol_of,
        retry_max_s=retry_max_s,
    )
    pipeline.signals = signals
    return signals


def signals_start(journal: Journal, committed_seq: int, signals_seq: int | None) -> int:
    """The seq after which the custom handlers see frames again: where their signals
    were last complete, if the journal still holds the frames after it."""
    if signals_seq is None:
        return committed_seq  # the first start of this journal, or of signals
    if signals_seq < committed_seq and journal.first_seq > signals_seq + 1:
        log.warning(
            "the signals of frames %d..%d may be incomplete: the journal no longer holds them",
            signals_seq + 1,
            journal.first_seq - 1,
        )
        return committed_seq
    return signals_seq


def catch_up_source(
    pool: ConnectionPool, journal: Journal, pipeline: Pipeline
) -> Callable[[int], Iterator[tuple[int, list[Tick]]]]:
    """The journal's ticks as the database left off, for the writer's catch-up."""
    with pool.connection() as conn:
        decoder = decoder_at_last_commit(conn)
    return functools.partial(pipeline.journal_ticks, decoder=decoder)


def instrument_records_of(pool: ConnectionPool) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        return instrument_records(conn)


async def feed_settings(
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


def publishing(
    data_dir: Path,
    cache: AggregatedTickHandler,
    bars: MinuteBarHandler,
    status: Callable[[], IngestStatus],
) -> dict[str, asyncio.Task[None]]:
    """The tasks that publish the latest ticks with the status, and the forming 1-minute
    bars, for the API's processes (ingest/channels/)."""
    ticks = publish_forever(published_path(data_dir), cache.take_changed, status)
    minutes = publish_forever(bars_path(data_dir), bars.take_published, None, shape=BARS)
    return {
        "publish": asyncio.create_task(ticks, name="publish"),
        "publish-bars": asyncio.create_task(minutes, name="publish-bars"),
    }


async def start_control(
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


async def follow_chains(
    settings: Settings,
    subscriptions: SubscriptionManager,
    client: FeedClient,
    cache: AggregatedTickHandler,
    connection: Callable[[], AbstractContextManager[psycopg.Connection]],
    refresh_simulator: Callable[[], Awaitable[RefreshReport]] | None,
) -> tuple[ChainFollower, asyncio.Task[None]]:
    """Start following TICKVAULT_OPTION_CHAINS (ingest/chains/). On the built-in simulator
    (`refresh_simulator` given) the master is refreshed from it first: its option chains are
    listed on its clock, not in the sample master the store starts with."""
    if refresh_simulator is not None:
        try:
            await refresh_simulator()
        except (ValueError, psycopg.Error) as error:  # the chains wait for a later refresh
            log.warning("could not load the simulator's option chains: %s", error)

    async def read(query: Callable[[psycopg.Connection], Any]) -> Any:
        def run() -> Any:
            with connection() as conn:
                return query(conn)

        return await asyncio.to_thread(run)

    chains = ChainFollower(settings, subscriptions, client, cache, read)
    return chains, asyncio.create_task(chains.run_forever(), name="option-chains")


async def cancel_newest_first(tasks: dict[str, asyncio.Task[Any]], keep: str) -> None:
    """Cancel and remove every task in `tasks` but `keep`, the newest first, so a task stops
    before what it was started on; one that had already failed is logged."""
    for name in reversed([name for name in tasks if name != keep]):
        task = tasks.pop(name)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("the %s task had failed before the stop", name)


async def stop_writer(writer: TickDataHandler | None, tasks: dict[str, asyncio.Task[Any]]) -> None:
    """Every tick written, or left in the journal while the database is unavailable: the
    writer's open batch flushed, then its task ("writer" in `tasks`) awaited and removed."""
    if writer is not None:
        await writer.stop()
        task = tasks.pop("writer", None)
        if task is not None:
            await task


def stopped_task(tasks: Mapping[str, asyncio.Task[Any] | None]) -> str | None:
    """The first background task (None: not started) that has stopped on its own, as /health
    reports it."""
    for name, task in tasks.items():
        if task is not None and task.done():
            return f"the ingest's {name} task has stopped: {_outcome(task)}"
    return None


def _outcome(task: asyncio.Task[Any]) -> str:
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    return f"{type(error).__name__}: {error}" if error is not None else "returned"
