"""What the client counts and remembers: the counters `status()` shows, the requests in flight.

Upstox answers a refused request with a JSON text frame that may name the keys, or only the
request's guid; the ledger keeps the recent guids so that either form finds the keys. Every
message that reaches a log or `status()` passes through `scrub`, so the token never does.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from ingest.upstox.decoder import MalformedFrame

log = logging.getLogger(__name__)

_ERROR_SAMPLE_CHARS = 300
_TRACKED_REQUESTS = 1024  # recent requests kept so a failure naming a guid finds its keys


class Ledger:
    """Counters, the last error and the recent requests of one client, all its connections.

    `mask` hides secrets in a text (the current access token); it is asked on every use, so
    a token updated later is masked too.
    """

    def __init__(self, mask: Callable[[str], str]) -> None:
        self._mask = mask
        self.attempts = 0  # authorize (or redirect) calls: a hot loop shows here
        self.connects = 0
        self.reconnects = 0
        self.frames = 0
        self.malformed = 0
        self.requests_sent: Counter[str] = Counter()
        self.last_error: str | None = None
        self._requests: OrderedDict[str, list[str]] = OrderedDict()  # guid -> keys
        self._malformed_logged: set[str] = set()

    def scrub(self, text: str) -> str:
        """The text masked and cut short, for anything that reaches a log or status()."""
        return self._mask(text)[:_ERROR_SAMPLE_CHARS]

    def error(self, message: str, level: int = logging.WARNING) -> None:
        """Log `message` and keep it as the last error."""
        self.last_error = self.scrub(message)
        log.log(level, "%s", self.last_error)

    def request(self, method: str, keys: list[str], mode: str | None) -> bytes:
        """The wire form of one request, remembered by its guid in case the server refuses it."""
        guid = uuid.uuid4().hex
        data: dict[str, Any] = {"instrumentKeys": keys}
        if mode is not None:
            data["mode"] = mode
        self._requests[guid] = keys
        if len(self._requests) > _TRACKED_REQUESTS:
            self._requests.popitem(last=False)
        return json.dumps({"guid": guid, "method": method, "data": data}).encode()

    def malformed_frame(self, exc: MalformedFrame) -> None:
        """Count a frame the sink could not decode; log the first of each kind only."""
        self.malformed += 1
        kind = type(exc).__name__
        if kind not in self._malformed_logged:
            self._malformed_logged.add(kind)
            log.warning("skipping a malformed frame (%s); later ones are only counted", exc)

    def refused(self, text: str) -> dict[str, str]:
        """Record a text frame from the server; return {key: error} for the keys it refuses.

        Upstox sends errors as JSON text; one with status "failed" names its keys directly or
        by the guid of the request they came in.
        """
        self.error(f"feed says: {text}")
        try:
            message = json.loads(text)
        except ValueError:
            return {}
        if not isinstance(message, dict) or message.get("status") != "failed":
            return {}
        data = message.get("data")
        keys = data.get("instrumentKeys") if isinstance(data, dict) else None
        if not isinstance(keys, list):
            keys = self._requests.get(str(message.get("guid")))
        if not keys:
            return {}
        error = self.scrub(str(message.get("error") or message.get("message") or text))
        return dict.fromkeys(keys, error)
