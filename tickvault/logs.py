"""Logs: JSON lines on stdout, rotating plain-text files beside them, never a secret.

stdout carries one JSON object per line, for docker and log collectors. With a log directory
(`TICKVAULT_LOG_DIR`; `tickvault run` and `tickvault ingest` use the data directory's `logs/`)
the process also writes, for people with `tail -f` and `grep`:

- `trading.log`: every record at the configured level;
- `errors.log`: ERROR and above only;
- `signals.log`: the custom handlers' signals (ingest/signals.py), one JSON object per line
  for each signal stored in the `signals` table, written by the logger `signals`.

One line per record, `time level logger message`, e.g.

    2026-01-05T09:15:02.114+05:30 INFO ingest.subscriptions unsubscribed 1 key: INFY (NSE_EQ|...)

so `grep INFY trading.log` finds what concerns INFY and `grep ' ERROR '` the errors; the time
is local with its UTC offset. A traceback, or a message spanning lines, continues on lines
that start with spaces, so every line at the left margin starts a record and a message cannot
pass off a line of its own as one. Each file is rotated at `LOG_FILE_MAX_BYTES` and keeps
`LOG_FILE_BACKUPS` old ones (`trading.log.1` the newest), so the logs never take more than
(1 + LOG_FILE_BACKUPS) * LOG_FILE_MAX_BYTES each.

The token is kept out of messages at the source (it is a `Secret`); the redacting filter is
the second line of defence, for text we do not control such as library errors, and covers the
message, the traceback and the stack of a record on every output alike.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from datetime import datetime
from pathlib import Path

from ingest.signals import SIGNALS_LOGGER
from ingest.upstox.redact import secret_pattern

TRADING_LOG = "trading.log"
ERRORS_LOG = "errors.log"
SIGNALS_LOG = "signals.log"
LOG_FILE_MAX_BYTES = 10 * 1024**2  # a file is rotated past this size...
LOG_FILE_BACKUPS = 5  # ...and this many rotated ones are kept
MASK = "********"

_NOISY = ("websockets", "uvicorn.access")
# psycopg_pool warns of every failed reconnect, about one a second through a database outage;
# the ingest's writer says once when an outage starts and once when it ends.
_RECONNECTS = "psycopg.pool"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        error = _exception_text(self, record)
        if error:
            entry["error"] = error
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str)


class LineFormatter(logging.Formatter):
    """`2026-01-05T09:15:02.114+05:30 INFO ingest.service message`, continuation lines
    indented."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).astimezone()
        text = record.getMessage()
        for extra in (_exception_text(self, record), record.stack_info):
            if extra:
                text = f"{text}\n{extra}"
        line = f"{when.isoformat(timespec='milliseconds')} {record.levelname} {record.name}"
        return f"{line} {text}".replace("\n", "\n    ")


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The record's traceback as text, formatted once and kept (RedactFilter masks it there)."""
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    return record.exc_text or ""


class MessageFormatter(logging.Formatter):
    """The message alone: a signals.log line is the signal's JSON, time included."""

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


class RedactFilter(logging.Filter):
    """Masks each secret in a record's message, traceback and stack, before any handler
    formats it: wherever it occurs, or only standing alone when it is too short to be a real
    one (ingest/upstox/redact.py), so that no other text is masked with it."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._pattern = secret_pattern(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        pattern = self._pattern
        if pattern is None:
            return True
        message = record.getMessage()
        if pattern.search(message):
            record.msg, record.args = pattern.sub(MASK, message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and pattern.search(record.exc_text):
            record.exc_text = pattern.sub(MASK, record.exc_text)
        if record.stack_info and pattern.search(record.stack_info):
            record.stack_info = pattern.sub(MASK, record.stack_info)
        return True


def configure_logging(
    level: str,
    secrets: list[str],
    log_dir: Path | None = None,
    *,
    max_bytes: int = LOG_FILE_MAX_BYTES,
    backups: int = LOG_FILE_BACKUPS,
) -> None:
    """The process's logging: JSON lines on stdout and, with `log_dir`, trading.log,
    errors.log and signals.log there (the directory is made if missing), each output
    masking `secrets`.

    Replaces the root logger's handlers, closing the files a previous call opened. A log
    directory that cannot be written raises ValueError naming it.
    """
    redact = RedactFilter(secrets)
    stdout = logging.StreamHandler(sys.stdout)
    stdout.setFormatter(JsonFormatter())
    handlers: list[logging.Handler] = [stdout]
    if log_dir is not None:
        handlers += _file_handlers(log_dir, max_bytes, backups)
    for handler in handlers:
        handler.addFilter(redact)
    root = logging.getLogger()
    for previous in root.handlers:
        if isinstance(previous, logging.handlers.RotatingFileHandler):
            previous.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    _signals_file(log_dir, max_bytes, backups, redact)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.getLogger(_RECONNECTS).setLevel(max(logging.ERROR, root.level))


def _signals_file(log_dir: Path | None, max_bytes: int, backups: int, redact: RedactFilter) -> None:
    """signals.log takes the `signals` logger alone, at any log level: a signal is data the
    user asked for, not a diagnostic; it stays out of stdout and trading.log, which a busy
    handler would flood. Without a log directory signals are in the table only."""
    signals = logging.getLogger(SIGNALS_LOGGER)
    for previous in signals.handlers:
        previous.close()
    signals.handlers.clear()
    signals.propagate = False
    signals.setLevel(logging.INFO)
    if log_dir is None:
        signals.addHandler(logging.NullHandler())
        return
    handler = logging.handlers.RotatingFileHandler(
        log_dir / SIGNALS_LOG, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )
    handler.setFormatter(MessageFormatter())
    handler.addFilter(redact)
    signals.addHandler(handler)


def _file_handlers(log_dir: Path, max_bytes: int, backups: int) -> list[logging.Handler]:
    files: list[logging.Handler] = []
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        for name, level in ((TRADING_LOG, logging.NOTSET), (ERRORS_LOG, logging.ERROR)):
            handler = logging.handlers.RotatingFileHandler(
                log_dir / name, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
            )
            handler.setLevel(level)
            handler.setFormatter(LineFormatter())
            files.append(handler)

    except OSError as error:
        for handler in files:
            handler.close()
        raise ValueError(
            f"cannot write logs in {log_dir} (TICKVAULT_LOG_DIR): {error.strerror or error}"
        ) from None
    return files
