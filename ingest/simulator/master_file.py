"""The instrument master the simulator publishes, as Upstox does on its asset host:
`GET /market-quote/instruments/exchange/complete.json.gz`, gzipped JSON.

By default it is the simulator's own universe, option chains included, as listed at the
simulator's clock (an expired contract leaves it, the next expiry joins). A test puts another
file in its place, to see tickvault follow a changed master:
`FeedSimulator.instrument_file.replace(data)` in the same process, or a file given at start
(`--instruments-file`), read again at every request so that rewriting it changes what is
served. The bytes are served as they are: a truncated or
malformed file reaches the client the way a broken download would.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from websockets.http11 import Response

from ingest.simulator.protocol import binary_response, error_response


class InstrumentFile:
    """What the instruments path answers: the universe's records, or a replacement."""

    def __init__(
        self, listing: Callable[[], Sequence[Mapping[str, object]]], path: Path | None = None
    ) -> None:
        """`listing()`: the universe's records now, the same object while they are unchanged."""
        self._listing = listing
        self._path = path
        self._replacement: bytes | None = None
        self._universe: tuple[object, bytes] | None = None  # (listing, its gzipped JSON)

    def replace(self, data: bytes | None) -> None:
        """Serve `data` from now on; None serves the universe (or the start-time file) again."""
        self._replacement = data

    def body(self) -> bytes:
        if self._replacement is not None:
            return self._replacement
        if self._path is not None:
            return self._path.read_bytes()
        records = self._listing()
        if self._universe is None or self._universe[0] is not records:
            text = json.dumps(list(records), separators=(",", ":"))
            self._universe = (records, gzip.compress(text.encode(), mtime=0))
        return self._universe[1]

    def response(self) -> Response:
        try:
            body = self.body()
        except OSError as error:
            return error_response(503, {"message": f"cannot read the instrument file: {error}"})
        return binary_response(body, "application/gzip")
