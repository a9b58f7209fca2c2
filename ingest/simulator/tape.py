"""What the simulator wrote to its clients: counts always, and every distinct tick when
recording, so a test can compare the database with exactly what was sent."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ingest.simulator.market import Instrument

SentTick = tuple[str, int, float, int | None, int | None]  # key, ltt ms, ltp, ltq, vtt


class Tape:
    """The record of sent frames. `counts` holds ticks, feeds, frames and bytes sent, and
    whatever else the simulator counts there (drops, garbage frames)."""

    def __init__(self, recording: bool = True) -> None:
        self.recording = recording
        self.counts: Counter[str] = Counter()
        self._sent: list[SentTick] = []

    def sent_ticks(self) -> list[SentTick]:
        """Every distinct tick written to a client, in order: (instrument_key, ltt in epoch ms,
        ltp, ltq, vtt), ltq and vtt None for an index. A snapshot repeats an instrument's
        last tick; that is not a new tick. vtt is on the wire in full and option_greeks
        modes only. Empty unless recording."""
        return list(self._sent)

    def record(self, frame: bytes, instruments: Sequence[Instrument]) -> None:
        """A binary frame went out with these instruments' entries in it."""
        counts, sent, recording = self.counts, self._sent, self.recording
        counts["frames"] += 1
        counts["bytes"] += len(frame)
        counts["feeds"] += len(instruments)
        new = 0
        for instrument in instruments:
            if instrument.ltt != instrument.recorded_ltt:
                instrument.recorded_ltt = instrument.ltt
                new += 1
                if recording:
                    if instrument.index:
                        sent.append((instrument.key, instrument.ltt, instrument.ltp, None, None))
                    else:
                        sent.append(
                            (
                                instrument.key,
                                instrument.ltt,
                                instrument.ltp,
                                instrument.ltq,
                                instrument.vtt,
                            )
                        )
        counts["ticks"] += new
