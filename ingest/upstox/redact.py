"""The access token never reaches a log: Authorization masked in websockets' debug log."""

from __future__ import annotations

import logging


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
