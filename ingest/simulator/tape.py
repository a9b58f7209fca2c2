"""What the simulator wrote to its clients: counts always, each minute's OHLCV in the minute
book (minutes.py, what the candle endpoints serve), and, only when asked (`record`), every
distinct tick, so a test can compare the database with exactly what was sent.

The record is for tests and short runs: it holds at most `record_limit` ticks (36 bytes
each, in arrays), then stops recording, says so once in the log and in the stats, and
`sent_ticks` raises NotRecorded rather than hand a test a partial list as if it were all (as
it does when the simulator does not record at all).
"""

from __future__ import annotations

import logging
from array import array
from collections import Counter
from collections.abc import Sequence

from ingest.simulator.market import Instrument
from ingest.simulator.minutes import MinuteBook

logger = logging.getLogger(__name__)

SentTick = tuple[str, int, float, int | None, int | None]  # key, ltt ms, ltp, ltq, vtt
DEFAULT_RECORD_LIMIT = 1_000_000  # ticks: 36 MB
_NONE = -1  # ltq and vtt of an index


class NotRecorded(RuntimeError):
    """The simulator cannot list every tick it sent: it does not record them, or its record
    reached its limit (later ticks were counted, not recorded)."""


class TickRecord:
    """Distinct sent ticks in columns: an instrument index, ltt, ltp, ltq and vtt."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the record limit must be at least 1 tick")
        self.limit = limit
        self.full = False
        self._keys: list[str] = []
        self._index: dict[str, int] = {}
        self._key = array("i")
        self._ltt = array("q")
        self._ltp = array("d")
        self._ltq = array("q")
        self._vtt = array("q")

    def __len__(self) -> int:
        return len(self._ltt)

    def add(self, instrument: Instrument) -> None:
        if len(self._ltt) >= self.limit:
            if not self.full:
                self.full = True
                logger.warning(
                    "the simulator's sent-tick record is full at %d ticks: later ticks are"
                    " counted, not recorded, and sent_ticks() fails (raise record_limit,"
                    " --record-limit)",
                    self.limit,
                )
            return
        index = self._index.get(instrument.key)
        if index is None:
            index = self._index[instrument.key] = len(self._keys)
            self._keys.append(instrument.key)
        self._key.append(index)
        self._ltt.append(instrument.ltt)
        self._ltp.append(instrument.ltp)
        if instrument.index:
            self._ltq.append(_NONE)
            self._vtt.append(_NONE)
        else:
            self._ltq.append(instrument.ltq)
            self._vtt.append(instrument.vtt)

    def ticks(self) -> list[SentTick]:
        if self.full:
            raise NotRecorded(
                f"the simulator's sent-tick record reached its limit of {self.limit} ticks;"
                " ticks sent after that were not recorded (raise record_limit, --record-limit)"
            )
        keys = self._keys
        return [
            (keys[k], ltt, ltp, None if ltq == _NONE else ltq, None if vtt == _NONE else vtt)
            for k, ltt, ltp, ltq, vtt in zip(
                self._key, self._ltt, self._ltp, self._ltq, self._vtt, strict=True
            )
        ]


class Tape:
    """The record of sent frames. `counts` holds ticks, feeds, frames and bytes sent, and
    whatever else the simulator counts there (drops, garbage frames); `minutes` gets every
    distinct sent tick; `ticks` keeps them when recording."""

    def __init__(
        self,
        minutes: MinuteBook,
        recording: bool = False,
        record_limit: int = DEFAULT_RECORD_LIMIT,
    ) -> None:
        self.counts: Counter[str] = Counter()
        self.minutes = minutes
        self.ticks = TickRecord(record_limit) if recording else None

    def sent_ticks(self) -> list[SentTick]:
        """Every distinct tick written to a client, in order: (instrument_key, ltt in epoch ms,
        ltp, ltq, vtt), ltq and vtt None for an index. A snapshot repeats an instrument's
        last tick; that is not a new tick. vtt is on the wire in full and option_greeks
        modes only. NotRecorded when not recording, or past the record's limit."""
        if self.ticks is None:
            raise NotRecorded(
                "the simulator does not record the ticks it sends: start it with"
                " FeedSimulator(record=True), --record, or, for the one tickvault's ingest"
                " starts, WebSocketService(record_simulator=True)"
            )
        return self.ticks.ticks()

    def stats(self) -> dict[str, object]:
        counts, ticks = self.counts, self.ticks
        return {
            "ticks_sent": counts["ticks"],
            "feeds_sent": counts["feeds"],
            "frames_sent": counts["frames"],
            "bytes_sent": counts["bytes"],
            "drops": counts["drops"],
            "garbage_frames": counts["garbage"],
            "recording": ticks is not None,
            "recorded_ticks": 0 if ticks is None else len(ticks),
            "record_full": ticks is not None and ticks.full,
            "candle_minutes": self.minutes.size(),
        }

    def record(self, frame: bytes, instruments: Sequence[Instrument]) -> None:
        """A binary frame went out with these instruments' entries in it."""
        counts, minutes, ticks = self.counts, self.minutes, self.ticks
        counts["frames"] += 1
        counts["bytes"] += len(frame)
        counts["feeds"] += len(instruments)
        new = 0
        for instrument in instruments:
            if instrument.ltt != instrument.recorded_ltt:
                instrument.recorded_ltt = instrument.ltt
                new += 1
                minutes.sent(instrument)
                if ticks is not None:
                    ticks.add(instrument)
        counts["ticks"] += new
