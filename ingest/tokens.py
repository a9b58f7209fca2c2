"""The Upstox access token: where it comes from, the file that keeps it, and how a running
ingest takes a new one without a restart.

Three sources, the first that has a token wins: `UPSTOX_ACCESS_TOKEN` (the environment or
`.env`), the token file in the data directory (written by `tickvault token set`,
`tickvault login` or `POST /api/v1/token`), else none, and the simulator is the feed.

The file holds a secret, so it is created 0600 under a temporary name in the same directory
and renamed over the old one: no reader ever sees half a token, and no other user can read
it, not even for an instant (mkstemp creates it 0600). The ingest polls the file's identity
once a second (a stat call: cheaper than any watcher, and a rename is seen the same way on
every filesystem) and hands a new token to the feed client, which re-authorizes with it.

Reading it trusts nothing about what sits at its path: it is opened without following a
symbolic link and without blocking (a FIFO would hang `tickvault token status`), and only a
regular file of at most MAX_FILE_BYTES is read (a link to /dev/zero would take gigabytes).
A file open to other users is read, with one warning naming the fix, as `.env` gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

from core.config import MIN_SECRET_CHARS, Secret, Settings, private_warning
from core.ist import IST
from ingest.status import TokenStatus

log = logging.getLogger(__name__)

TOKEN_FILE = "upstox_token.json"  # noqa: S105 (a file name)
KINDS = ("analytics", "daily")
DAILY_EXPIRY_IST = time(3, 30)  # a daily OAuth token ends at 03:30 IST the next day
POLL_INTERVAL_S = 1.0
MAX_TOKEN_CHARS = 4096
# The JSON save_token writes around a token of MAX_TOKEN_CHARS, with room to spare.
MAX_FILE_BYTES = 2 * MAX_TOKEN_CHARS
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
ENV_WINS = (
    "UPSTOX_ACCESS_TOKEN is set (in the environment or .env) and wins over the stored token: "
    "unset it for the stored one to be used"
)


class TokenFileError(ValueError):
    """The token file cannot be read as one; the message names the file, never its content."""


@dataclass(frozen=True)
class StoredToken:
    """What the token file says: the token, its kind, when it was saved, when it ends."""

    token: Secret = field(repr=False)
    kind: str  # "analytics" (a year, read-only) or "daily" (OAuth)
    saved_at: datetime
    expires_at: datetime | None  # a daily token's 03:30 IST; None for an analytics token


@dataclass(frozen=True)
class TokenChoice:
    """The token the feed starts with and where it came from: env, file or missing."""

    source: str
    token: Secret = field(repr=False)
    stored: StoredToken | None = None


@dataclass(frozen=True)
class UpstoxAccess:
    """Where Upstox's REST side answers and the token to ask it with, at one moment: what a
    job takes of the credentials, rather than a copy of Settings carrying them."""

    api_base: str
    token: Secret = field(repr=False)

    @classmethod
    def chosen(cls, settings: Settings) -> UpstoxAccess:
        """Upstox's base with the environment's token, else the stored one (may be empty)."""
        return cls(settings.upstox_api_base, choose_token(settings).token)


def token_path(data_dir: Path) -> Path:
    return Path(data_dir) / TOKEN_FILE


def daily_expiry(now: datetime) -> datetime:
    """The first 03:30 IST after `now`: when a daily token obtained at `now` stops working."""
    local = now.astimezone(IST)
    expiry = datetime.combine(local.date(), DAILY_EXPIRY_IST, IST)
    return expiry if expiry > local else expiry + timedelta(days=1)


def check_token(token: str) -> str:
    """The token without surrounding whitespace; ValueError (never quoting it) if unusable."""
    token = token.strip()
    if not token:
        raise ValueError("the access token is empty")
    if len(token) < MIN_SECRET_CHARS:
        raise ValueError(
            f"the access token is shorter than {MIN_SECRET_CHARS} characters: not an Upstox token"
        )
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"the access token is longer than {MAX_TOKEN_CHARS} characters")
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise ValueError("the access token holds spaces or characters a token never has")
    return token


def save_token(
    data_dir: Path, token: str, kind: str = "analytics", now: datetime | None = None
) -> StoredToken:
    """Store `token` in the data directory's token file, atomically and 0600."""
    if kind not in KINDS:
        raise ValueError(f"the token kind must be one of {', '.join(KINDS)}, not {kind!r}")
    now = now or datetime.now(UTC)
    stored = StoredToken(
        Secret(check_token(token)),
        kind,
        now,
        daily_expiry(now) if kind == "daily" else None,
    )
    body = {
        "access_token": str(stored.token),
        "kind": kind,
        "saved_at": now.isoformat(),
        "expires_at": stored.expires_at.isoformat() if stored.expires_at else None,
    }
    path = token_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{TOKEN_FILE}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(body, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename survives a crash
    finally:
        os.close(directory)
    return stored


def load_token(data_dir: Path) -> StoredToken | None:
    """The stored token, None without a file; TokenFileError for a file that is not one."""
    path = token_path(data_dir)
    data = _read_token_file(path)
    if data is None:
        return None
    try:
        body = json.loads(data.decode("utf-8"))
        kind = body["kind"]
        if kind not in KINDS:
            raise ValueError
        expires = body.get("expires_at")
        return StoredToken(
            Secret(check_token(body["access_token"])),
            kind,
            datetime.fromisoformat(body["saved_at"]),
            datetime.fromisoformat(expires) if expires else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):  # UnicodeDecodeError included
        raise _not_ours(path, "is not one tickvault wrote") from None


def _not_ours(path: Path, what: str) -> TokenFileError:
    return TokenFileError(
        f"the token file {path} {what}: store a token again with `tickvault token set` or"
        " `tickvault login`"
    )


# (path, inode, mode) of the files already warned about: the API reads the file per request.
_warned: set[tuple[str, int, int]] = set()


def _read_token_file(path: Path) -> bytes | None:
    """The bytes of the regular file at `path` (None if there is none), or TokenFileError
    for a link, a FIFO, a device or a file over MAX_FILE_BYTES, without reading it."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _not_ours(path, "is a symbolic link, not a file tickvault wrote") from None
        raise TokenFileError(f"cannot read the token file {path}: {type(error).__name__}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _not_ours(path, "is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise _not_ours(path, f"is over {MAX_FILE_BYTES} bytes, more than a token")
        seen = (str(path), info.st_ino, info.st_mode)
        if seen not in _warned:
            _warned.add(seen)
            private_warning(path, info.st_mode, "the Upstox access token")
        chunks, left = [], MAX_FILE_BYTES + 1
        while left and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as error:
        raise TokenFileError(f"cannot read the token file {path}: {type(error).__name__}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_FILE_BYTES:  # it grew while read
        raise _not_ours(path, f"is over {MAX_FILE_BYTES} bytes, more than a token")
    return data


def choose_token(settings: Settings) -> TokenChoice:
    """The environment's token, else the file's, else none (the simulator is the feed)."""
    if settings.upstox_access_token:
        return TokenChoice("env", settings.upstox_access_token)
    stored = load_token(settings.data_dir)
    if stored is not None:
        return TokenChoice("file", stored.token, stored)
    return TokenChoice("missing", Secret(""))


def what_the_ingest_does(source: str | None) -> str:
    """What the ingest does with a token just stored, told to whoever stored it: `source` is
    where its token comes from, as its status says (None: no ingest runs). Only an ingest
    that started on the stored token follows the file; one on the simulator or on
    UPSTOX_ACCESS_TOKEN keeps what it has until it is restarted."""
    if source is None:
        return "no ingest runs on this data directory: the next one starts with this token"
    if source == "file":
        return "the running ingest takes it within a second, re-authorizes and resumes"
    if source == "simulator":
        return (
            "the running ingest feeds from the simulator and takes no token while it runs:"
            " restart it to feed from Upstox with this one"
        )
    if source == "env":
        return (
            "the running ingest uses UPSTOX_ACCESS_TOKEN from its own environment, which wins"
            " over the file: it keeps that token"
        )
    return f"the running ingest's token came from {source}: restart it to use this one"


def describe(
    source: str, stored: StoredToken | None, state: str, since: datetime | None = None
) -> TokenStatus:
    """The status of a token, without the token."""
    expires = stored.expires_at if stored is not None and source == "file" else None
    return TokenStatus(
        source=source,
        state=state,
        kind=stored.kind if stored is not None and source == "file" else None,
        expires_at=expires.astimezone(IST).isoformat() if expires else None,
        in_use_since=since.isoformat() if since else None,
    )


class TokenKeeper:
    """The ingest's token: chosen at start, then followed in the file while the feed runs.

    `attach(apply)` names where a new token goes (the feed client's `update_token`); `watch()`
    runs for the life of the ingest and does nothing unless the token came from the file:
    the environment's token wins over the file for as long as the process runs.
    """

    def __init__(self, settings: Settings) -> None:
        self._data_dir = settings.data_dir
        choice = choose_token(settings)
        self.source = choice.source
        self.token = choice.token
        self.stored = choice.stored
        self.api_base = settings.upstox_api_base
        self.since = datetime.now(UTC)
        self._apply: Callable[[str], None] | None = None
        self._seen = self._identity()

    def use_simulator(self, url: str) -> UpstoxAccess:
        """No token anywhere: the in-process simulator at `url` is the feed, and takes this
        token."""
        self.source, self.token, self.api_base = "simulator", Secret("simulator"), url
        return self.access()

    def access(self) -> UpstoxAccess:
        """The feed's REST base and the token of the moment: a job asks each time it runs, so
        a token taken while the ingest runs is the one it uses."""
        return UpstoxAccess(self.api_base, self.token)

    def attach(self, apply: Callable[[str], None]) -> None:
        self._apply = apply

    def take(self, token: str, stored: StoredToken | None = None, source: str = "file") -> None:
        """Hand `token` to the feed: a new file, or `update_token()` in code (source "code")."""
        if self._apply is None:
            raise RuntimeError("the ingest service is not started")
        self._apply(token)
        self.token, self.stored, self.since = Secret(token), stored, datetime.now(UTC)
        self.source = source
        log.info("a new Upstox access token is in use (%s)", self.source)

    def status(self, feed_state: str | None) -> TokenStatus:
        """`feed_state` is the feed client's verdict on the token: unchecked, valid, rejected."""
        if self.source == "missing" or not self.token:
            return describe(self.source, None, "missing")
        if self.source == "simulator":
            return describe(self.source, None, feed_state or "unchecked", self.since)
        return describe(self.source, self.stored, feed_state or "unchecked", self.since)

    async def watch(self) -> None:
        """Follow the token file: a new token there goes to the feed within POLL_INTERVAL_S.
        Run it only for a token from the file (source "file")."""
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            identity = self._identity()
            if identity == self._seen:
                continue
            self._seen = identity
            try:
                stored = load_token(self._data_dir)
            except TokenFileError as error:
                log.error("%s; the feed keeps its token", error)
                continue
            if stored is not None and stored.token != self.token:
                self.take(stored.token, stored)

    def _identity(self) -> tuple[int, int, int] | None:
        """What changes when the file is written again: inode, mtime and size."""
        try:
            info = token_path(self._data_dir).stat()
        except OSError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size
