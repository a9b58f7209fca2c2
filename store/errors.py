"""The one error of the store."""

from __future__ import annotations


class StoreError(RuntimeError):
    """A store operation that cannot go on; the message says what to do about it."""
