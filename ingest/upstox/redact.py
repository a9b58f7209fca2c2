"""The access token never reaches a log: Authorization masked in websockets' debug log, and
the secrets a process holds masked in its log records (`secret_pattern`, which tickvault's
logging uses) without garbling the rest of the line."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from core.config import MIN_SECRET_CHARS


def secret_pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    """One pattern for every secret (None for none), the longest first.

    A secret of MIN_SECRET_CHARS or more matches wherever it occurs: a token may sit inside
    a URL, a quoted string or a form body, between any characters. A shorter one (a test's,
    or a setting built in code) matches only standing alone, not next to a letter or digit:
    a token `t` must not turn every t of every line into asterisks, and text that stands
    alone as it is still masked.
    """
    parts = [
        re.escape(secret)
        if len(secret) >= MIN_SECRET_CHARS
        else rf"(?<![^\W_]){re.escape(secret)}(?![^\W_])"
        for secret in sorted({s for s in secrets if s}, key=len, reverse=True)
    ]
    return re.compile("|".join(parts)) if parts else None


class RedactBearer(logging.Filter):
    """Masks Authorization values in websockets' debug log of the handshake headers.

    Attach it to the logger a websockets client or server is given: both log every header
    at DEBUG, the Authorization one included.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(arg, str) and "Bearer " in arg for arg in record.args
        ):
            record.args = tuple(
                _mask_bearer(arg) if isinstance(arg, str) and "Bearer " in arg else arg
                for arg in record.args
            )
        return True


def _mask_bearer(text: str) -> str:
    head, _, _ = text.partition("Bearer ")
    return f"{head}Bearer ********"
