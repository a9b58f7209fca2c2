"""The ingest's status, one frozen dataclass per section, each field written here only.

Every component reports its own section through `status()` (`FeedClient`, `Pipeline`,
`TickDataHandler`, `AggregatedTickHandler`, `Journal`, `CustomHandler`; `summarize()` for the
subscriptions), and `WebSocketService.status()` puts them together in an `IngestStatus`.
The API serves that object as the response model of GET /api/v1/websocket/status, so the
field names are the JSON keys, and the Prometheus collector reads its attributes; the Phase 2
guide's `get_status()` and `get_stats()` are the same objects as dicts. Built from memory
only, so status answers during an outage.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime


@dataclass(frozen=True, slots=True)
class FeedStatus:
    """The feed client: where it reads from and, once the client exists, how it fares."""

    source: str  # "simulator" or the Upstox API base
    # Where the feed's REST side answers: Upstox's base, or the built-in simulator's loopback
    # URL, whose candles the API's audit then compares with.
    api_base: str | None = None
    state: str | None = None  # the connection most in need of attention
    connections: int | None = None  # connected now
    connection_states: list[str] | None = None
    attempts: int | None = None  # authorize (or redirect) calls: a hot loop shows here
    connects: int | None = None
    reconnects: int | None = None
    frames: int | None = None
    malformed_frames: int | None = None
    last_error: str | None = None  # masked: never holds the token
    requests: dict[str, int] | None = None  # sub / unsub / change_mode sent
    subscribed: dict[str, int] | None = None  # keys per mode
    failed: int | None = None  # keys the server refused
    # Per connection, by index: stalls the watchdog reconnected (ingest/client/watchdog.py),
    # and seconds since its socket's last data frame (None before the first).
    stalls: list[int] | None = None
    last_data_age_s: list[float | None] | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionSummary:
    total_symbols: int
    subscribed_count: int
    failed_count: int
    pending_count: int
    subscription_rate: str  # "100.00%"


@dataclass(frozen=True, slots=True)
class ChainWindowStatus:
    """One option chain the ingest follows: an underlying's expiry, and the strikes taken."""

    underlying: str  # NIFTY
    expiry: date
    atm_strike: float
    low_strike: float
    high_strike: float
    key_count: int  # contracts subscribed: calls and puts


@dataclass(frozen=True, slots=True)
class OptionChainsStatus:
    """The option chains followed (ingest/chains/): TICKVAULT_OPTION_* and each window."""

    mode: str
    underlyings: list[str]  # as configured
    strikes: int  # each side of the money: the setting, or fewer to fit the feed's limits
    windows: list[ChainWindowStatus]
    waiting: list[str]  # underlyings with no price yet, or no contracts in the master
    last_error: str | None


@dataclass(frozen=True, slots=True)
class HandlerStatus:
    """One custom tick handler, behind its bounded buffer."""

    handler: str
    delivered: int
    handled: int  # the handler returned True
    declined: int  # ... False
    errors: int  # ... raised
    pending: int
    dropped: int  # past the buffer's bound


@dataclass(frozen=True, slots=True)
class SignalsStatus:
    """The custom handlers' signals (ingest/signals.py) on their way to the `signals` table."""

    emitted: int
    stored: int  # new rows in `signals`
    repeated: int  # emitted again by a replay after a crash, already stored: not doubled
    rejected: int  # bad (a NaN value, oversized fields, an unknown symbol): logged, not stored
    dropped: int  # past the queue's bound
    pending: int
    complete_seq: int  # every signal of the journal frames up to this seq is stored
    errors: int  # failed writes (retried)
    last_error: str | None


@dataclass(frozen=True, slots=True)
class PipelineStatus:
    frames: int
    malformed_frames: int
    frames_refused: int  # dropped because the journal could not take them
    journal_error: str | None  # why frames are refused now
    duplicate_ticks_dropped: int
    unrequested_ticks_skipped: int
    market_status: dict[str, str]  # segment -> its last reported status
    custom_handlers: list[HandlerStatus]


@dataclass(frozen=True, slots=True)
class WriterStatus:
    ticks_processed: int
    symbols_tracked: int  # instruments with committed rows since the start
    batches: int
    rows_written: int
    rows_per_second: float
    queue_depth: int  # rows not yet committed, in memory
    oldest_unwritten_tick_age_s: float  # 0 when none waits
    committed_seq: int
    database_available: bool
    journal_only: bool  # past the memory bound: catching up from the journal
    spills: int
    errors: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class CacheStatus:
    ticks_processed: int
    symbols_tracked: int  # instruments with a latest tick
    ticks_per_second: float
    ignored_instruments: int  # new instruments past the cache's bound


@dataclass(frozen=True, slots=True)
class JournalStatus:
    journal_id: str
    last_seq: int
    committed_seq: int
    backlog_frames: int  # journaled frames whose ticks are not committed yet
    bytes_on_disk: int
    bytes_appended: int
    segments: int
    max_bytes: int
    torn_tail_bytes: int


@dataclass(frozen=True, slots=True)
class BarsStatus:
    edition: str | None  # "apache" or "timescale" (the Community edition)
    last_rollup_error: str | None  # the Apache edition's own rollup


@dataclass(frozen=True, slots=True)
class StepStatus:
    """One step of the daily schedule: its last attempt as recorded, and when it runs next."""

    step: str
    phase: str  # "preopen" or "postclose"
    last_day: date | None  # the trading day of the last attempt
    last_outcome: str | None  # "ok", "retrying" (another attempt follows) or "failed"
    last_result: str | None  # the step's short report, or its error
    last_attempt: int | None
    last_finished_at: datetime | None
    next_run_at: datetime | None  # due now if in the past: it runs as soon as it can


@dataclass(frozen=True, slots=True)
class ScheduleStatus:
    """The daily schedule (ingest/jobs/schedule/runner.py)."""

    preopen_at: str  # "08:30 IST"
    postclose_at: str
    running: str | None  # "postclose seal 2026-01-05" while a step runs
    steps: list[StepStatus]  # in the order they run
    not_registered: list[str]  # slots of the schedule with no step in this build


@dataclass(frozen=True, slots=True)
class TokenStatus:
    """The Upstox access token the feed uses, never the token itself."""

    source: str  # env, file, code (update_token), simulator or missing
    state: str  # unchecked (not tried yet), valid, rejected or missing
    kind: str | None = None  # analytics or daily, as the token file says
    expires_at: str | None = None  # a daily token's 03:30 IST, ISO 8601
    in_use_since: str | None = None


@dataclass(frozen=True, slots=True)
class DiskStatus:
    """The disks tickvault fills (ingest/disk.py): free space against the floor, and sizes
    (None until first measured)."""

    min_free_bytes: int  # TICKVAULT_MIN_FREE_GB
    data_dir_free_bytes: int | None
    journal_free_bytes: int | None
    database_bytes: int | None
    journal_bytes: int | None
    archive_bytes: int | None
    refusing_frames: str | None  # why new frames are refused now (below the floor)


@dataclass(frozen=True, slots=True)
class IngestStatus:
    """The whole of `WebSocketService.status()`; a section the service has not built yet
    (before or during its start) is None."""

    is_running: bool
    websocket_connected: bool
    subscribed_symbols: list[str]  # trading symbols (the key where the master has none)
    feed: FeedStatus
    subscriptions: SubscriptionSummary | None
    pipeline: PipelineStatus | None
    writer: WriterStatus | None
    cache: CacheStatus
    journal: JournalStatus | None
    bars: BarsStatus
    schedule: ScheduleStatus | None = None  # None when TICKVAULT_SCHEDULE_ENABLED=false
    token: TokenStatus | None = None
    disk: DiskStatus | None = None
    signals: SignalsStatus | None = None
    # Why /health answers 503 (WebSocketService.health_problem), None while healthy.
    health_problem: str | None = None
    option_chains: OptionChainsStatus | None = None  # None when no chain is followed
