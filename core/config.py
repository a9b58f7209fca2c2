"""Configuration: one `Settings` object, read once from the environment and passed down.

Every knob is an environment variable, so the same code runs from a shell, from docker
compose and from the tests. `Settings.from_env()` reads them, and a `.env` file in the
working directory too; a variable set in the environment wins over the file. The table in
docs/configuration.md lists them all; keep the two in step.

Each default is written once, as a field default of `Settings`, and each field is a variable
by its name: `TICKVAULT_<FIELD>`, or `UPSTOX_<...>` for the fields named upstox_* (see
`variable`). pydantic-settings reads the variables' text (a model with a field for each of
Settings', `_environment_model`), and pydantic parses it by the fields' types. A
`Settings(...)` built in code reads nothing.
"""

from __future__ import annotations

import functools
import logging
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AliasGenerator,
    BeforeValidator,
    Field,
    GetCoreSchemaHandler,
    TypeAdapter,
    ValidationError,
    create_model,
)
from pydantic_core import core_schema
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.upstox_wire import DEFAULT_MODE_LIMITS, Mode

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")

log = logging.getLogger(__name__)

# No real secret is shorter: an Upstox access token is a JWT of hundreds of characters. The
# settings refuse a shorter token or API key (and ingest/tokens.py one to store), so that
# masking every occurrence of a secret in a log (ingest/upstox/redact.py) never takes ordinary
# text with it.
MIN_SECRET_CHARS = 8
# The bars' refresh (continuous aggregate policies on Community) reaches 3 days back: ticks
# must outlive it, or minutes would be refreshed from ticks that are gone.
MIN_RETENTION_DAYS = 4


def check_retention_days(days: int, what: str) -> None:
    if days and days < MIN_RETENTION_DAYS:
        raise ValueError(
            f"{what} must be 0 (forever) or at least {MIN_RETENTION_DAYS} days: the "
            "bars are refreshed from the last 3 days of ticks"
        )


class Secret(str):
    """A string that never shows itself in a repr, a log line or an f-string debug dump."""

    def __repr__(self) -> str:
        return "Secret('********')" if self else "Secret('')"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(cls, core_schema.str_schema())


def _names(value: object) -> object:
    """`a, b` -> ("a", "b"); a value that is not a string is left to the field's type."""
    if isinstance(value, str):
        return tuple(name.strip() for name in value.split(",") if name.strip())
    return value


def _mode_limits(value: object) -> object:
    """`full:2000/1500,ltpc:5000/2000` overrides the documented limits of the modes it names."""
    if not isinstance(value, str):
        return value
    limits = dict(DEFAULT_MODE_LIMITS)
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            mode, numbers = item.split(":")
            single, combined = numbers.split("/")
            limits[mode.strip()] = (int(single), int(combined))
        except ValueError:
            raise ValueError(f"item {item!r} is not of the form mode:single/combined") from None
    return limits


def _names_or_none(value: object) -> object:
    """As `_names`, and `none` (or `off`) for no names: an empty variable means the default."""
    if isinstance(value, str) and value.strip().lower() in ("none", "off"):
        return ()
    return _names(value)


# How a variable's text becomes a field's value, beyond what the type says.
Names = Annotated[tuple[str, ...], BeforeValidator(_names)]
NamesOrNone = Annotated[tuple[str, ...], BeforeValidator(_names_or_none)]
ModeLimits = Annotated[dict[str, tuple[int, int]], BeforeValidator(_mode_limits)]
LogLevel = Annotated[str, AfterValidator(str.upper)]


def _naive(moment: time) -> time:
    if moment.tzinfo is not None:
        raise ValueError("give the time of day in IST without an offset, e.g. 08:30")
    return moment


# A time of day in IST ("08:30"), the zone the schedule keeps (ingest/jobs/schedule/plan.py).
IstTime = Annotated[time, AfterValidator(_naive)]


def _retention_days(days: int) -> int:
    check_retention_days(days, "retention")
    return days


RetentionDays = Annotated[int, AfterValidator(_retention_days)]


def _long_enough(secret: Secret) -> Secret:
    """A secret that short is a mistake, not a token or a key, and masking it in the logs
    would mask ordinary text (ingest/upstox/redact.py). Never quotes it."""
    if secret and len(secret) < MIN_SECRET_CHARS:
        raise ValueError(
            f"too short to be a real one ({len(secret)} characters, at least"
            f" {MIN_SECRET_CHARS}); check the value"
        )
    return secret


# The access token and the API key: masked in every log line (tickvault/logs.py).
LoggedSecret = Annotated[Secret, AfterValidator(_long_enough)]


def archive_url_problem(url: str) -> str | None:
    """Why `url` cannot be the archive's root (None: it can), never quoting it, for it may
    hold a secret: credentials, region and endpoint come from the AWS variables every AWS
    tool reads, which stay out of the logs (store/archive_location.py opens it)."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        return "must be an s3://bucket/prefix URL (a local archive is the data directory's)"
    if parts.username is not None or parts.password is not None:
        return (
            "must not carry credentials: give them as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if not parts.hostname:
        return "must name a bucket: s3://bucket/prefix"
    if parts.query or parts.fragment:
        return "takes no query: give the endpoint as AWS_ENDPOINT_URL, the region as AWS_REGION"
    return None


def _archive_url(url: str) -> str:
    problem = archive_url_problem(url) if url else None
    if problem is not None:
        raise ValueError(problem)
    return url


# Object storage for the Parquet archive (empty: the data directory's archive/).
ArchiveUrl = Annotated[str, AfterValidator(_archive_url)]


def _as_host(address: str) -> str:
    """A Host header carries an IPv6 address in brackets."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


@dataclass(frozen=True)
class Settings:
    """What tickvault runs with: `Settings.from_env()` reads it from the environment and
    `.env`; `Settings(...)` is exactly what it is given, defaults for the rest."""

    data_dir: Path = Path(".tickvault")
    database_url: str | None = None
    pg_bindir: Path | None = None
    pg_port: int = 55432
    upstox_access_token: LoggedSecret = field(default=Secret(""), repr=False)
    upstox_api_base: str = "https://api.upstox.com"
    # `tickvault login`: the Upstox app's OAuth client, and where its dialog and token
    # exchange are (empty: upstox_api_base).
    upstox_client_id: str = ""
    upstox_client_secret: Secret = field(default=Secret(""), repr=False)
    upstox_redirect_uri: str = ""
    upstox_login_base: str = ""
    feed_mode: str = "full"
    # Where `tickvault instruments refresh` downloads the master; None: Upstox's
    # (INSTRUMENTS_HOST + INSTRUMENTS_PATH), or the simulator's while the ingest runs on it.
    instruments_url: str | None = None
    # A refresh that would take more than this share of the live instruments (those that
    # left the file) or of the F&O universe out is refused as a bad file, nothing changed;
    # `tickvault instruments refresh --force` takes it anyway.
    instruments_max_removed_share: Annotated[float, Field(gt=0, le=1)] = 0.2
    max_connections: int = 1
    mode_limits: ModeLimits = field(default_factory=lambda: dict(DEFAULT_MODE_LIMITS))
    index_keys: Names = ("NSE_INDEX|Nifty 50", "NSE_INDEX|Nifty Bank")
    # Option chains the ingest follows (ingest/chains/): underlyings by symbol (an index or
    # any F&O stock; `none`: no chain), the nearest expiries not yet closed, strikes each
    # side of the money, and the mode their contracts are subscribed in.
    option_chains: NamesOrNone = ("NIFTY", "BANKNIFTY")
    option_expiries: Annotated[int, Field(ge=1)] = 2
    option_strikes: Annotated[int, Field(ge=1)] = 15
    option_mode: Mode = "option_greeks"
    batch_rows: int = 20_000
    batch_ms: int = 100
    queue_max_rows: int = 500_000
    # The longest wait between two attempts to reach the database through an outage (the
    # writer's retries and the connection pool's reconnects), however long the outage.
    db_retry_max_s: Annotated[float, Field(gt=0)] = 5.0
    journal_max_bytes: int = 2 * 1024**3
    journal_segment_bytes: int = 64 * 1024**2
    rollup_interval_s: float = 5.0
    # Seconds without a data frame, while a carried segment is NORMAL_OPEN, that make a feed
    # connection stalled: it reconnects (ingest/client/watchdog.py).
    stall_s: float = 30.0
    # After a read of a feed socket that completed a frame, reading pauses this long, so that
    # frames which come closer together are read (and the event loop woken) once, not once
    # each: a small frame costs the ingest about as much as a large one. Off by default: it
    # cut a sixth of the CPU with frames 1 ms apart, but the push stream's p99 rose with it
    # in three pairs of three at the default cadence (BENCHMARKS.md). 0 reads at once.
    feed_read_pause_ms: Annotated[float, Field(ge=0, le=100)] = 0.0
    simulator_rate: int = 2000
    simulator_seed: int = 1
    # The example signal handler (ingest/spike.py), off by default: a tick whose volume or
    # return is more than spike_z standard deviations from the symbol's recent ticks (an
    # exponential average over about spike_window of them) emits a signal.
    spike_detector: bool = False
    spike_window: Annotated[int, Field(ge=10)] = 200
    spike_z: Annotated[float, Field(gt=0)] = 10.0
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Processes `tickvault api` serves with (uvicorn workers, each with its own app).
    api_workers: int = 2
    api_key: LoggedSecret = field(default=Secret(""), repr=False)
    # Host headers the API answers (`*` any, `*.example.com` any name under it); left empty,
    # loopback and api_host.
    api_allowed_hosts: Names = ()
    # The push stream (/api/v1/stream, api/stream_hub.py), per API worker: symbols one client
    # may follow, clients at once (more are closed with 1013), and messages and bytes queued
    # for one client before it is closed as fallen behind (4000): its memory is bounded by
    # these.
    stream_max_symbols: Annotated[int, Field(ge=1)] = 500
    stream_max_clients: Annotated[int, Field(ge=1)] = 200
    stream_queue_max: Annotated[int, Field(ge=1)] = 2000
    stream_queue_max_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024
    # permessage-deflate on the stream's WebSocket: off, as compressing each frame took about
    # half of a worker's stream CPU (BENCHMARKS.md); on for clients behind a slow link.
    stream_deflate: bool = False
    log_level: LogLevel = "INFO"
    # Audit the day's bars against Upstox's candles after the close (ingest/jobs/audit.py).
    audit_after_close: bool = True
    # Where trading.log and errors.log go; None writes none, and `tickvault run` and
    # `tickvault ingest` then use data_dir / "logs" (tickvault/cli.py).
    log_dir: Path | None = None
    # The daily schedule inside the ingest (ingest/jobs/schedule/): its phases' IST times, and
    # how a failing step is retried (doubling delays from initial to max, then given up for
    # the day, recorded and reported).
    schedule_enabled: bool = True
    preopen_at: IstTime = time(8, 30)
    postclose_at: IstTime = time(15, 45)
    schedule_step_attempts: Annotated[int, Field(ge=1)] = 5
    schedule_retry_initial_s: float = 30.0
    schedule_retry_max_s: float = 600.0
    # How many days back a post-close missed while the ingest was down is still run.
    schedule_catch_up_days: Annotated[int, Field(ge=0)] = 3

    # The data lifecycle (docs/store.md, "Retention, archive and the disk floor"): tick chunks older
    # than this many days are dropped once their days are archived (0: kept forever); bars
    # have their own period, forever by default.
    ticks_retention_days: RetentionDays = 30
    bars_retention_days: RetentionDays = 0
    archive_ticks: bool = True  # finished days go to Parquet, and retention waits for it
    # `s3://bucket/prefix`: the archive on S3-compatible object storage (credentials and
    # endpoint from the AWS_* variables); empty: archive_dir.
    archive_url: ArchiveUrl = ""
    # Below this much free space on the data directory's or the journal's disk, the ingest
    # refuses new frames (ingest/disk.py) rather than fail mid-write.
    min_free_gb: float = 1.0

    def __post_init__(self) -> None:
        # A plain str given in code is made a Secret too.
        for name in ("upstox_access_token", "upstox_client_secret", "api_key"):
            object.__setattr__(self, name, Secret(getattr(self, name)))
        if not self.api_allowed_hosts:
            hosts = dict.fromkeys([*LOOPBACK_HOSTS, _as_host(self.api_host)])
            object.__setattr__(self, "api_allowed_hosts", tuple(hosts))

    @property
    def pg_data_dir(self) -> Path:
        return self.data_dir / "pg"

    @property
    def journal_dir(self) -> Path:
        return self.data_dir / "journal"

    @property
    def archive_dir(self) -> Path:
        return self.data_dir / "archive"

    @property
    def archive_root(self) -> Path | str:
        """Where the Parquet archive is: TICKVAULT_ARCHIVE_URL, else `archive_dir`."""
        return self.archive_url or self.archive_dir

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        env_file: Path = Path(".env"),
        **overrides: Any,
    ) -> Settings:
        """The settings the environment and `env_file` give (the environment wins over the
        file), or `environ`'s alone when it is given. `overrides` are fields set in code; they
        win over both. An empty variable means the default (`UPSTOX_ACCESS_TOKEN=` is the
        simulator, whatever `.env` says). A bad value raises ValueError with one line naming
        the variable."""
        if environ is None:
            read = _environment_model()(_env_file=env_file)
            texts = {name: getattr(read, name) for name in read.model_fields_set}
            texts = {name: text for name, text in texts.items() if text}
        else:
            texts = {
                f.name: environ[variable(f.name)]
                for f in fields(cls)
                if environ.get(variable(f.name))
            }
        try:
            return _parser().validate_python({**texts, **overrides})
        except ValidationError as error:
            raise ValueError(_one_line(error)) from None


def check_dotenv(path: Path = Path(".env")) -> str | None:
    """One warning when the `.env` that from_env reads (the working directory's) is open to
    other users: it holds the access token and the passwords (see `private_warning`)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    return private_warning(path, mode, "secrets such as UPSTOX_ACCESS_TOKEN")


def private_warning(path: Path, mode: int, holds: str) -> str | None:
    """Log and return one warning when `path` (of `mode`, from its stat), which holds
    `holds`, is open to other users; None for a file only its owner may read and write
    (0600). Any group or other bit counts, write included (the security checklist asks for
    0600)."""
    mode = stat.S_IMODE(mode)
    if not mode & 0o077:
        return None
    who = " and ".join(
        name for name, bits in (("its group", 0o070), ("other users", 0o007)) if mode & bits
    )
    warning = f"{path} is open to {who} (mode {mode:04o}) but holds {holds}: run chmod 600 {path}"
    log.warning("%s", warning)
    return warning


def variable(name: str) -> str:
    """The environment variable of the field `name`."""
    return name.upper() if name.startswith("upstox_") else f"TICKVAULT_{name.upper()}"


class _Environment(BaseSettings):
    """The text of each variable the environment or `.env` sets; `_environment_model` adds a
    field for each of Settings' fields."""

    model_config = SettingsConfigDict(
        alias_generator=AliasGenerator(validation_alias=variable),
        env_file=".env",
        extra="ignore",  # the environment and .env hold much else (docker compose's passwords)
    )


@functools.cache
def _environment_model() -> type[_Environment]:
    texts: dict[str, Any] = {item.name: (str | None, None) for item in fields(Settings)}
    return create_model("Environment", __base__=_Environment, **texts)


@functools.cache
def _parser() -> TypeAdapter[Settings]:
    """Settings from text: each field parsed by its type (and the validators Annotated on it)."""
    return TypeAdapter(Settings)


_EXPECTED = {
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
}


def _one_line(error: ValidationError) -> str:
    """`TICKVAULT_BATCH_ROWS must be a whole number, got 'lots'`, for each bad variable."""
    problems = []
    for problem in error.errors():
        name = variable(str(problem["loc"][0])) if problem["loc"] else "configuration"
        expected = _EXPECTED.get(problem["type"])
        if expected is not None:
            problems.append(f"{name} must be {expected}, got {problem['input']!r}")
        elif problem["type"] == "value_error":
            problems.append(f"{name}: {problem['ctx']['error']}")
        else:
            problems.append(f"{name}: {problem['msg']}")
    return "; ".join(problems)
