"""`tickvault`: set up the store, load instruments, run the feed and the API.

Each subcommand is a thin call into `ingest` or `api`; errors the user can act on
(StoreError, ValueError from configuration) are printed as one clear line, not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from core.config import Settings, check_dotenv
from core.heap import settle_startup_heap
from ingest.tokens import choose_token
from store.bars import refresh_bars
from store.errors import StoreError
from store.instruments import (
    DEFAULT_MAX_BYTES,
    MAX_BYTES_VARIABLE,
    InstrumentFileError,
    default_sample_path,
    load_instruments,
    read_instruments,
)
from store.local.cluster import LocalCluster
from store.local.install import install_timescaledb
from store.local.postgres import PgInstall, find_bindir
from store.local.url import database_url, local_cluster, masked_password
from store.migrations import migrate
from tickvault import instrument_refresh, journal_cmd, login, token
from tickvault.archive import add_archive_parser
from tickvault.audit import register as register_audit
from tickvault.backfill import register as register_backfill
from tickvault.logs import configure_logging

if TYPE_CHECKING:
    from fastapi import FastAPI


def _db_install(settings: Settings, args: argparse.Namespace) -> int:
    install_timescaledb(PgInstall(find_bindir(settings.pg_bindir)))
    return 0


def _db_start(settings: Settings, args: argparse.Namespace) -> int:
    if settings.database_url:
        print("TICKVAULT_DATABASE_URL is set: using that server, nothing local to start")
        return 0
    status = local_cluster(settings).start()
    print(f"TimescaleDB {status.detail}: {status.data_dir} on port {status.port}")
    print(status.url)
    return 0


def _db_stop(settings: Settings, args: argparse.Namespace) -> int:
    if settings.database_url:
        print("TICKVAULT_DATABASE_URL is set: nothing local to stop")
        return 0
    status = local_cluster(settings).stop()
    print(f"TimescaleDB {status.detail}: {status.data_dir}")
    return 0


def _db_status(settings: Settings, args: argparse.Namespace) -> int:
    if settings.database_url:
        with psycopg.connect(settings.database_url, connect_timeout=5) as conn:
            (version,) = conn.execute("SELECT version()").fetchone() or ("?",)
        print(f"external server (TICKVAULT_DATABASE_URL) answers: {version}")
        return 0
    status = local_cluster(settings).status()
    print(f"TimescaleDB {status.detail}: {status.data_dir} on port {status.port}")
    return 0 if status.running else 3


def _db_url(settings: Settings, args: argparse.Namespace) -> int:
    if settings.database_url or not args.tcp:
        url = database_url(settings)
    else:
        cluster = local_cluster(settings)
        database_url(settings)  # says clearly when the cluster is down
        url = cluster.tcp_url()
    print(url if args.show_password else masked_password(url))
    return 0


def _db_migrate(settings: Settings, args: argparse.Namespace) -> int:
    applied = migrate(database_url(settings))
    print(f"applied migrations: {', '.join(applied)}" if applied else "schema is up to date")
    return 0


def _parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} needs a UTC offset, e.g. 2026-11-20T09:15+05:30"
        )
    return moment


def _db_refresh_bars(settings: Settings, args: argparse.Namespace) -> int:
    with psycopg.connect(database_url(settings), autocommit=True) as conn:
        result = refresh_bars(conn, args.start, args.end)
    written = ", ".join(
        f"{view}: {count} buckets" for view, count in result.buckets_written.items()
    )
    print(f"bars refreshed ({result.edition.value} edition){': ' + written if written else ''}")
    return 0


def _instruments_load(settings: Settings, args: argparse.Namespace) -> int:
    with psycopg.connect(database_url(settings)) as conn:
        count = load_instruments(conn, args.path, args.max_bytes)
    print(f"loaded {count} instruments from {args.path}")
    return 0


def _prepare_store(settings: Settings) -> str:
    """Store up, schema current, instruments present: what both run and ingest need."""
    url = database_url(settings, start=True)
    migrate(url)
    with psycopg.connect(url) as conn:
        (count,) = conn.execute("SELECT count(*) FROM instruments").fetchone() or (0,)
        if count == 0:
            loaded = load_instruments(conn, default_sample_path())
            print(
                f"loaded the {loaded} sample instruments (tickvault instruments load PATH "
                "loads Upstox's full master)"
            )
    return url


def _feed_description(settings: Settings) -> str:
    source = choose_token(settings).source
    if source != "missing":
        return f"Upstox at {settings.upstox_api_base} (token from {source})"
    return (
        f"the built-in simulator ({settings.simulator_rate} ticks/s; "
        "tickvault token set or UPSTOX_ACCESS_TOKEN for Upstox)"
    )


def _start_logging(settings: Settings) -> None:
    """Logging for the long-running commands: stdout, and trading.log and errors.log in
    TICKVAULT_LOG_DIR, else the data directory's logs/; then the check of .env's mode.

    The default is the command's, not Settings': only `run` and `ingest` own their process's
    logging; a Settings built for a service embedded in other code writes no files.
    """
    log_dir = settings.log_dir or settings.data_dir / "logs"
    configure_logging(settings.log_level, [settings.upstox_access_token, settings.api_key], log_dir)
    check_dotenv()
    from ingest.channels.latest_publisher import SLOTS_IMPLEMENTATION
    from ingest.minute_bars import BARS_IMPLEMENTATION
    from ingest.upstox.decoder import DECODER_IMPLEMENTATION
    from store.ticks import COPY_IMPLEMENTATION

    log = logging.getLogger(__name__)
    log.info("frame decoder in use: %s", DECODER_IMPLEMENTATION)
    log.info("COPY encoder in use: %s (on UTF-8 connections)", COPY_IMPLEMENTATION)
    log.info("published slot writer in use: %s", SLOTS_IMPLEMENTATION)
    log.info("forming bars' fold in use: %s", BARS_IMPLEMENTATION)


def _favour_the_writer() -> None:
    """Hand the GIL over every 0.5 ms instead of 5 ms.

    The COPY runs in a worker thread that drops the GIL at each libpq flush; at the default
    interval it then waits up to 5 ms to get it back from the decoding loop, and the writer
    falls behind the feed (bench: 56k committed ticks/s at the default, 98k at 0.5 ms).
    Set here, by the process owner, never by a library import.
    """
    sys.setswitchinterval(0.0005)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    """The store, then `tickvault ingest` and `tickvault api` as supervised children
    (tickvault/supervisor.py), on this environment, data directory and database."""
    from api.page import PAGE_PATH
    from tickvault.supervisor import Supervisor

    journal_cmd.check_single_instance(settings)
    # stdout only: trading.log and errors.log are the ingest child's (one writer per file).
    configure_logging(settings.log_level, [settings.upstox_access_token, settings.api_key])
    cluster = None if settings.database_url else local_cluster(settings)
    already_running = cluster is not None and cluster.is_running()
    url = _prepare_store(settings)
    print(
        f"tickvault: the market live at http://{settings.api_host}:{settings.api_port}"
        f"{PAGE_PATH}/ (API docs at /docs), database {masked_password(url)}, feed from "
        f"{_feed_description(settings)}. Ctrl-C stops it cleanly.",
        flush=True,
    )
    try:
        return Supervisor(settings.data_dir, settings.journal_dir).run()
    finally:
        if cluster is not None:
            _leave_the_store(cluster, already_running)


def _leave_the_store(cluster: LocalCluster, already_running: bool) -> None:
    """Stop the embedded PostgreSQL this run started; one that was running before is left
    as it was, and the line says so."""
    if already_running:
        print(
            f"tickvault: the local TimescaleDB in {cluster.data_dir} was running before this "
            "run and is left running (`tickvault db stop` stops it)",
            flush=True,
        )
        return
    cluster.stop()
    print(f"tickvault: stopped the local TimescaleDB in {cluster.data_dir}", flush=True)


def _api(settings: Settings, args: argparse.Namespace) -> int:
    """The API alone, in TICKVAULT_API_WORKERS processes, beside a `tickvault ingest` on the
    same machine, database and data directory (it reads what that ingest publishes)."""
    import uvicorn

    from api.app import server_options
    from ingest.channels.latest_table import published_path
    from tickvault.supervisor import die_with_supervisor

    die_with_supervisor()
    if settings.api_workers < 1:
        raise ValueError(f"TICKVAULT_API_WORKERS must be at least 1, got {settings.api_workers}")
    _api_logging(settings)
    check_dotenv()
    # The ingest's store: started and migrated by `tickvault ingest` (or `tickvault db`), not
    # here. The workers are new processes that build their app from the environment
    # (api_app); they get the database resolved here.
    url = database_url(settings)
    os.environ["TICKVAULT_DATABASE_URL"] = url
    print(
        f"tickvault api: API on http://{settings.api_host}:{settings.api_port} "
        f"(docs at /docs), {settings.api_workers} worker(s), database "
        f"{masked_password(url)}, latest ticks and status from the ingest publishing at "
        f"{published_path(settings.data_dir.absolute())}. Ctrl-C stops it.",
        flush=True,
    )
    uvicorn.run(
        "tickvault.cli:api_app",
        factory=True,
        workers=settings.api_workers,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        log_level=settings.log_level.lower(),
        **server_options(settings),
    )
    return 0


def api_app() -> FastAPI:
    """The app of one `tickvault api` worker (uvicorn calls it in each worker process):
    settings from the environment and `.env`, as the command read them, and no ingest."""
    from api.app import create_app

    settings = Settings.from_env()
    _api_logging(settings)
    app = create_app(settings, database_url(settings))
    settle_startup_heap()  # the imports and the app are for the worker's life
    return app


def _api_logging(settings: Settings) -> None:
    """JSON lines on stdout only: trading.log and errors.log are the ingest's, and several
    processes rotating one file would lose lines."""
    configure_logging(settings.log_level, [settings.upstox_access_token, settings.api_key])


def _ingest(settings: Settings, args: argparse.Namespace) -> int:
    from ingest.journal_dir import JournalInUse, journal_holder
    from ingest.recovery import JournalMismatch
    from ingest.service import WebSocketService, serve_until_signalled
    from tickvault.supervisor import EXIT_CANNOT_RUN, die_with_supervisor

    die_with_supervisor()
    holder = journal_holder(settings.journal_dir)
    if holder is not None:  # before logging: its files are the running instance's
        print(f"tickvault: {journal_cmd.in_use_line(settings, holder)}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    _start_logging(settings)
    _favour_the_writer()
    url = _prepare_store(settings)
    print(
        f"tickvault ingest: feed from {_feed_description(settings)}, database "
        f"{masked_password(url)}. SIGTERM or Ctrl-C stops it cleanly.",
        flush=True,
    )

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_until_signalled(WebSocketService(settings, url)))
    except (JournalInUse, JournalMismatch) as error:  # no restart fixes either
        why = (
            journal_cmd.in_use_line(settings, error.holder)
            if isinstance(error, JournalInUse)
            else str(error)
        )
        print(f"tickvault: {why}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    return 0


def _health(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 while the ingest on this data directory publishes and is healthy, else say why
    and exit 1: what /health answers, without an API (docker compose's ingest healthcheck)."""
    from api.ingest_state import PublishedIngest
    from ingest.channels.latest_table import SlotBusy

    published = PublishedIngest(settings.data_dir)
    problem: str | None = "the ingest kept its status busy through three reads"
    try:
        for _ in range(3):  # a slot the ingest is writing is read again
            with contextlib.suppress(SlotBusy):
                problem = published.problem_now()
                break
    finally:
        published.close()
    if problem is not None:
        print(f"tickvault: {problem}", file=sys.stderr)
        return 1
    print("tickvault: the ingest is healthy")
    return 0


def _simulator(settings: Settings, args: argparse.Namespace) -> int:
    from ingest.simulator.command import main as simulator_main

    return simulator_main(args.simulator_args, read_instruments)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tickvault", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    db = commands.add_parser("db", help="the TimescaleDB store").add_subparsers(
        dest="db_command", required=True
    )
    db.add_parser(
        "install", help="build and install the TimescaleDB extension where missing"
    ).set_defaults(handler=_db_install)
    db.add_parser("start", help="start the local cluster").set_defaults(handler=_db_start)
    db.add_parser("stop", help="stop the local cluster").set_defaults(handler=_db_stop)
    db.add_parser("status", help="is the store up?").set_defaults(handler=_db_status)
    url = db.add_parser("url", help="print the libpq URL of the store (last line)")
    url.add_argument("--tcp", action="store_true", help="the loopback TCP URL (it has a password)")
    url.add_argument(
        "--show-password",
        action="store_true",
        help="print the password in the URL as it is, not as ********",
    )
    url.set_defaults(handler=_db_url)
    db.add_parser("migrate", help="apply sql/ migrations").set_defaults(handler=_db_migrate)
    refresh = db.add_parser("refresh-bars", help="bring the materialized OHLC bars up to date")
    refresh.add_argument("--start", type=_parse_time, help="rebuild bars from this time")
    refresh.add_argument("--end", type=_parse_time, help="rebuild bars up to this time")
    refresh.set_defaults(handler=_db_refresh_bars)

    instruments = commands.add_parser("instruments", help="the instrument master").add_subparsers(
        dest="instruments_command", required=True
    )
    load = instruments.add_parser("load", help="upsert an Upstox instrument JSON file (.json[.gz])")
    load.add_argument("path", type=Path)
    load.add_argument(
        "--max-bytes",
        type=int,
        metavar="N",
        help=f"refuse a file of more than N bytes of JSON, unpacked if gzipped (default:"
        f" ${MAX_BYTES_VARIABLE}, else {DEFAULT_MAX_BYTES}, {DEFAULT_MAX_BYTES // 2**20} MiB)",
    )
    load.set_defaults(handler=_instruments_load)
    refresh_master = instruments.add_parser(
        "refresh",
        help="download Upstox's instrument master, load it, mark what left or expired inactive;"
        " a running ingest follows the new F&O universe",
    )
    refresh_master.add_argument(
        "--url", help="download from here (default: $TICKVAULT_INSTRUMENTS_URL, else Upstox's)"
    )
    refresh_master.add_argument(
        "--max-bytes", type=int, metavar="N", help="refuse a file of more than N bytes of JSON"
    )
    refresh_master.add_argument(
        "--force",
        action="store_true",
        help="take the file even when it removes more than $TICKVAULT_INSTRUMENTS_MAX_REMOVED_SHARE"
        " of the live instruments or of the F&O universe (default 0.2)",
    )
    refresh_master.add_argument("--json", action="store_true", help="the report as JSON")
    refresh_master.set_defaults(handler=instrument_refresh.run)

    commands.add_parser(
        "run",
        help="the main job: store, ingest (simulator unless a token is set or stored) and API",
    ).set_defaults(handler=_run)
    commands.add_parser("ingest", help="the ingest service alone").set_defaults(handler=_ingest)
    commands.add_parser(
        "api", help="the API alone, beside a `tickvault ingest` on the same data directory"
    ).set_defaults(handler=_api)
    commands.add_parser(
        "health", help="exit 0 when the ingest on this data directory is healthy, else say why"
    ).set_defaults(handler=_health)
    register_audit(commands)
    register_backfill(commands)
    simulator = commands.add_parser(
        "simulator",
        help="the Upstox-compatible feed simulator (tickvault simulator --help: its options)",
        add_help=False,
    )
    simulator.set_defaults(handler=_simulator)
    token.register(commands)
    login.register(commands)
    journal_cmd.register(commands)
    add_archive_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # The simulator parses its own options; every other command takes only ours.
    args, extra = parser.parse_known_args(argv)
    if args.handler is _simulator:
        args.simulator_args = [arg for arg in extra if arg != "--"]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handler: Callable[[Settings, argparse.Namespace], int] = args.handler
    try:
        return handler(Settings.from_env(), args)
    except (StoreError, InstrumentFileError, ValueError, psycopg.OperationalError) as error:
        print(f"tickvault: {error}", file=sys.stderr)
        return 1
