"""Log files a person can `tail -f` and `grep`, the `websocket` logger name, no secret anywhere.

`tickvault ingest` (a real process, a real TimescaleDB, the simulator as Upstox) writes
trading.log and errors.log in TICKVAULT_LOG_DIR; the ingest's loggers answer to `websocket`;
configure_logging rotates the files at their size bound and masks secrets in every output.
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from core.config import Secret, Settings
from ingest.service import WebSocketService
from ingest.simulator import FeedSimulator
from store.instruments import instrument_records
from tickvault import cli
from tickvault.logs import ERRORS_LOG, TRADING_LOG, configure_logging

TOKEN = "sekret-token-7d41e9b0c2"  # distinctive: any trace of it in a file is a leak
# A record's first line: local time with its UTC offset, level, logger, message.
LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"[\w.]+ "
)


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging changes the process's root logger: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {
        name: logging.getLogger(name).level
        for name in ("websocket", "websockets", "psycopg.pool", "uvicorn.access")
    }
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


def _records(path: Path) -> list[str]:
    """The first line of each record in a log file (continuation lines start with spaces)."""
    return [line for line in path.read_text().splitlines() if not line.startswith(" ")]


def _level(line: str) -> str:
    match = LINE.match(line)
    assert match, f"not a record's first line: {line!r}"
    return match.group(1)


# configure_logging on its own -------------------------------------------------------------


def test_trading_log_has_everything_at_the_level_and_errors_log_only_errors(
    tmp_path: Path, restored_logging: None
) -> None:
    configure_logging("INFO", [], tmp_path / "logs")
    log = logging.getLogger("ingest.test")
    log.debug("not at the configured level")
    log.info("subscribed 1 key in full mode: INFY (NSE_EQ|INE009A01021)")
    log.warning("a warning")
    log.error("an error")
    logging.getLogger("api.test").critical("a critical one")

    trading = _records(tmp_path / "logs" / TRADING_LOG)
    assert [_level(line) for line in trading] == ["INFO", "WARNING", "ERROR", "CRITICAL"]
    assert trading[0].endswith(
        "INFO ingest.test subscribed 1 key in full mode: INFY (NSE_EQ|INE009A01021)"
    )
    errors = _records(tmp_path / "logs" / ERRORS_LOG)
    assert [_level(line) for line in errors] == ["ERROR", "CRITICAL"]
    assert errors[1].endswith("CRITICAL api.test a critical one")


def test_a_traceback_or_a_multiline_message_continues_on_indented_lines(
    tmp_path: Path, restored_logging: None
) -> None:
    configure_logging("INFO", [], tmp_path)
    log = logging.getLogger("ingest.test")
    log.warning("line one\n2026-01-01T00:00:00.000+00:00 ERROR forged record")
    try:
        raise ValueError("the cause")
    except ValueError:
        log.exception("the handler failed")
    lines = (tmp_path / TRADING_LOG).read_text().splitlines()
    records = [line for line in lines if not line.startswith(" ")]
    assert len(records) == 2, lines
    assert "    2026-01-01T00:00:00.000+00:00 ERROR forged record" in lines
    assert "    ValueError: the cause" in lines
    assert [_level(line) for line in _records(tmp_path / ERRORS_LOG)] == ["ERROR"]


def test_secrets_are_masked_in_the_files_and_on_stdout(
    tmp_path: Path, restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("DEBUG", [TOKEN, "api-key-5c3e"], tmp_path)
    log = logging.getLogger("ingest.test")
    log.info("authorize with %s", TOKEN)
    log.debug("header > Authorization: Bearer %s", TOKEN)
    log.warning("key api-key-5c3e refused")
    try:
        raise RuntimeError(f"upstream said {TOKEN}")
    except RuntimeError:
        log.exception("connect failed")
    record = log.makeRecord("ingest.test", logging.ERROR, __file__, 1, "with a stack", (), None)
    record.stack_info = f"Stack (most recent call last):\n  a frame holding {TOKEN}"
    log.handle(record)

    stdout = capsys.readouterr().out
    for text in (
        (tmp_path / TRADING_LOG).read_text(),
        (tmp_path / ERRORS_LOG).read_text(),
        stdout,
    ):
        assert TOKEN not in text
        assert "api-key-5c3e" not in text
        assert "********" in text
    errors = (tmp_path / ERRORS_LOG).read_text()
    assert "RuntimeError: upstream said ********" in errors
    assert "a frame holding ********" in errors


def test_a_short_secret_masks_itself_standing_alone_and_no_other_text(
    tmp_path: Path, restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token `t` (a Settings built in code: the environment refuses one that short) used
    to turn every t of every line into asterisks; a long one is masked wherever it sits,
    even run together with other text."""
    configure_logging("INFO", ["t", TOKEN], tmp_path)
    log = logging.getLogger("ingest.test")
    log.info("the feed started at 09:15")
    log.info("authorize with t, then retry")
    log.info("GET /v2/feed?token=%s&x=1 and Bearer%%20%sxyz", TOKEN, TOKEN)

    stdout = capsys.readouterr().out
    messages = [json.loads(line)["message"] for line in stdout.splitlines()]
    assert messages == [
        "the feed started at 09:15",
        "authorize with ********, then retry",
        "GET /v2/feed?token=********&x=1 and Bearer%20********xyz",
    ]
    written = [line.split(" ", 3)[3] for line in _records(tmp_path / TRADING_LOG)]
    assert written == messages


def test_the_files_rotate_at_their_size_bound(tmp_path: Path, restored_logging: None) -> None:
    configure_logging("INFO", [], tmp_path, max_bytes=4096, backups=2)
    log = logging.getLogger("ingest.test")
    for n in range(400):
        log.info("record %04d for INFY %s", n, "x" * 40)
        if n % 4 == 0:
            log.error("error %04d %s", n, "y" * 100)
    for name in (TRADING_LOG, ERRORS_LOG):
        files = sorted(tmp_path.glob(f"{name}*"))
        assert [f.name for f in files] == [name, f"{name}.1", f"{name}.2"], "two backups kept"
        assert all(f.stat().st_size <= 4096 for f in files)
    assert "record 0399" in (tmp_path / TRADING_LOG).read_text(), "the newest in the live file"
    assert "record 0000" not in "".join(f.read_text() for f in tmp_path.glob("trading.log*"))


def test_configuring_again_closes_the_files_it_opened(
    tmp_path: Path, restored_logging: None
) -> None:
    configure_logging("INFO", [], tmp_path / "first")
    first = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    assert len(first) == 2
    configure_logging("INFO", [], tmp_path / "second")
    assert all(handler.stream is None for handler in first), "the first files were closed"
    logging.getLogger("ingest.test").info("to the second")
    assert "to the second" in (tmp_path / "second" / TRADING_LOG).read_text()
    assert "to the second" not in (tmp_path / "first" / TRADING_LOG).read_text()


def test_a_log_dir_that_cannot_be_written_is_one_clear_error(
    tmp_path: Path, restored_logging: None
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"cannot write logs in .*a-file/logs.*TICKVAULT_LOG_DIR"):
        configure_logging("INFO", [], blocker / "logs")


def test_run_and_ingest_default_to_the_data_dirs_logs(
    tmp_path: Path, restored_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    cli._start_logging(Settings(data_dir=tmp_path / "data"))
    logging.getLogger("ingest.test").info("where do I go")
    assert "where do I go" in (tmp_path / "data" / "logs" / TRADING_LOG).read_text()
    cli._start_logging(Settings(data_dir=tmp_path / "data", log_dir=tmp_path / "elsewhere"))
    logging.getLogger("ingest.test").info("and now")
    assert "and now" in (tmp_path / "elsewhere" / TRADING_LOG).read_text()


# the `websocket` logger ----------------------------------------------------------------


def test_the_ingest_loggers_answer_to_websocket(restored_logging: None) -> None:
    import ingest.client.connection
    import ingest.service
    import ingest.subscriptions  # noqa: F401 (their loggers exist once imported)

    logging.getLogger().setLevel(logging.WARNING)
    names = [n for n in logging.root.manager.loggerDict if n.startswith("ingest.")]
    assert {"ingest.service", "ingest.subscriptions", "ingest.client.connection"} <= set(names)
    loggers = [logging.getLogger(name) for name in names]
    assert not any(log.isEnabledFor(logging.DEBUG) for log in loggers)

    logging.getLogger("websocket").setLevel(logging.DEBUG)
    assert all(log.isEnabledFor(logging.DEBUG) for log in loggers if log.level == 0)

    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger("websocket").addHandler(handler)
    try:
        logging.getLogger("ingest.service").debug("the feed's debug output")
    finally:
        logging.getLogger("websocket").removeHandler(handler)
    assert [(r.name, r.levelname, r.getMessage()) for r in seen] == [
        ("ingest.service", "DEBUG", "the feed's debug output")
    ]


def test_websocket_debug_turns_on_the_feeds_debug_output_in_a_running_service(
    instruments_db: str, tmp_path: Path, restored_logging: None
) -> None:
    """Root at INFO; `websocket` at DEBUG brings the feed socket's debug lines (websockets logs
    through `ingest.client.websocket`), token masked; INFY named in its subscription lines."""
    logs = tmp_path / "logs"
    configure_logging("INFO", [TOKEN], logs)
    logging.getLogger("websocket").setLevel(logging.DEBUG)

    async def scenario() -> None:
        with psycopg.connect(instruments_db) as conn:
            records = instrument_records(conn)
        simulator = FeedSimulator(records, token=TOKEN, rate=500)
        await simulator.start()
        try:
            settings = Settings(
                data_dir=tmp_path / "data",
                upstox_access_token=Secret(TOKEN),
                upstox_api_base=simulator.url,
                rollup_interval_s=1,
            )
            service = WebSocketService(settings, instruments_db)
            await service.start(subscribe_universe=False)
            try:
                await service.subscribe_symbol(["INFY"])
                await asyncio.sleep(1.5)
                await service.unsubscribe_symbol(["INFY"])
            finally:
                await service.stop()
        finally:
            await simulator.stop()

    asyncio.run(scenario())
    trading = (logs / TRADING_LOG).read_text()
    records = _records(logs / TRADING_LOG)
    debug = [line for line in records if _level(line) == "DEBUG"]
    assert any(" ingest.client.websocket " in line for line in debug), records[:20]
    assert "Bearer ********" in trading, "the handshake's headers are logged, the token masked"
    assert TOKEN not in trading
    infy = [line for line in records if "INFY (NSE_EQ|" in line]
    assert any("subscribed 1 key in full mode: INFY (NSE_EQ|" in line for line in infy), infy
    assert any("unsubscribed 1 key: INFY (NSE_EQ|" in line for line in infy), infy


# `tickvault ingest`, the real process ---------------------------------------------------


async def _run_ingest(url: str, simulator: FeedSimulator, workdir: Path, **env: str) -> str:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TICKVAULT_", "UPSTOX_"))},
        "TICKVAULT_DATABASE_URL": url,
        "TICKVAULT_DATA_DIR": str(workdir / "data"),
        "UPSTOX_ACCESS_TOKEN": TOKEN,
        "UPSTOX_API_BASE": simulator.url,
        **env,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tickvault",
        "ingest",
        cwd=workdir,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    await asyncio.sleep(6)
    process.send_signal(signal.SIGTERM)
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()[-3000:]
    return output.decode()


def test_tickvault_ingest_writes_greppable_files_without_the_token(
    instruments_db: str, tmp_path: Path
) -> None:
    """At DEBUG, the universe subscribed (INFY in it), a journal too small for any frame (so
    the ingest logs real errors), and a .env others may read in the working directory."""
    (tmp_path / ".env").write_text("TICKVAULT_SIMULATOR_SEED=3\n")
    (tmp_path / ".env").chmod(0o644)
    logs = tmp_path / "logs"

    async def scenario() -> str:
        with psycopg.connect(instruments_db) as conn:
            records = instrument_records(conn)
        simulator = FeedSimulator(records, token=TOKEN, rate=1000)
        await simulator.start()
        try:
            return await _run_ingest(
                instruments_db,
                simulator,
                tmp_path,
                TICKVAULT_LOG_DIR=str(logs),
                TICKVAULT_LOG_LEVEL="DEBUG",
                TICKVAULT_JOURNAL_MAX_BYTES="1",
            )
        finally:
            await simulator.stop()

    stdout = asyncio.run(scenario())
    trading, errors = (logs / TRADING_LOG).read_text(), (logs / ERRORS_LOG).read_text()
    for text in (trading, errors, stdout):
        assert TOKEN not in text

    records = _records(logs / TRADING_LOG)
    assert {_level(line) for line in records} >= {"DEBUG", "INFO", "WARNING", "ERROR"}
    assert any("ingest started" in line for line in records)
    assert any("ingest stopped" in line for line in records), "logged to the end"
    # grep INFY logs/trading.log
    infy = [line for line in trading.splitlines() if "INFY" in line]
    assert any(re.search(r"subscribed \d+ keys in full mode: .*INFY \(NSE_EQ\|", x) for x in infy)

    error_records = _records(logs / ERRORS_LOG)
    assert error_records, "the journal refused frames: the ingest logged errors"
    assert {_level(line) for line in error_records} <= {"ERROR", "CRITICAL"}
    assert any("frames are dropped" in line for line in error_records)
    assert set(error_records) <= set(records), "every error is in trading.log too"

    warning = [line for line in records if "chmod 600 .env" in line]
    assert len(warning) == 1, "one warning about the .env others may read"
    assert _level(warning[0]) == "WARNING"
    assert "chmod 600 .env" in stdout
