"""The simulated market behind the feed simulator: one reproducible random walk per instrument.

Each instrument draws from its own `random.Random` seeded by (seed, instrument key), so its
price path depends on nothing but the seed: not on which other keys are subscribed, not on
timing. Prices are held as whole numbers of ticks, so every price is on the tick grid and
`units / SCALE` gives the decimal price exactly as the exchange would print it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from ingest.simulator.chains import INDEX_CHAINS, chain_records, chain_specs, slot_of
from ingest.simulator.pricing import black_scholes, smile, years_to

SCALE = 10_000  # price units per rupee: 1 unit = 0.01 paise, fine enough for every tick size
DEFAULT_TICK_PAISE = 5.0
DEFAULT_CLOSE = 1000.0
DAY_MS = 86_400_000
IST_OFFSET_MS = 19_800_000
DEPTH_LEVELS = 30  # full_d30; full (d5) and option_greeks use the first levels
QUANTITY_PATTERNS = 16
DEFAULT_IV = 0.2  # at-the-money IV of an option whose underlying has no chain spec

# 256 equally likely standard-normal draws: one table lookup instead of random.gauss per trade.
_Z = tuple(NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256))

# Per-trade volatility as a fraction of price, and the size of a typical trade in lots.
_SIGMA = {"INDEX": 0.00008, "EQ": 0.0001, "FUT": 0.0001, "CE": 0.0015, "PE": 0.0015}
# Now and then a trade is a block of SPIKE_TIMES its size (the example spike detector's
# prey, ingest/spike.py): one trade in SPIKE_CHANCE**-1 of each stock and contract.
SPIKE_CHANCE = 1 / 1500
SPIKE_TIMES = 100
_MAX_LOTS = {"EQ": 200, "FUT": 10, "CE": 30, "PE": 30}
_SPREADS = ((0, 1), (1, 0), (1, 1))  # ticks from the last price to the best bid and ask

# A small universe in the instrument-master format for standalone runs. Equity keys carry
# real ISINs; the NSE_FO exchange tokens are made up. `last_price` (the previous close) is
# not in today's master files; the simulator uses it when present.
DEFAULT_UNIVERSE: tuple[dict[str, object], ...] = (
    {"instrument_key": "NSE_INDEX|Nifty 50", "segment": "NSE_INDEX", "instrument_type": "INDEX",
     "trading_symbol": "NIFTY", "last_price": 24300.0},
    {"instrument_key": "NSE_INDEX|Nifty Bank", "segment": "NSE_INDEX", "instrument_type": "INDEX",
     "trading_symbol": "BANKNIFTY", "last_price": 52100.0},
    {"instrument_key": "NSE_EQ|INE002A01018", "segment": "NSE_EQ", "instrument_type": "EQ",
     "trading_symbol": "RELIANCE", "tick_size": 10.0, "lot_size": 1, "last_price": 1285.4},
    {"instrument_key": "NSE_EQ|INE009A01021", "segment": "NSE_EQ", "instrument_type": "EQ",
     "trading_symbol": "INFY", "tick_size": 10.0, "lot_size": 1, "last_price": 1876.3},
    {"instrument_key": "NSE_EQ|INE467B01029", "segment": "NSE_EQ", "instrument_type": "EQ",
     "trading_symbol": "TCS", "tick_size": 10.0, "lot_size": 1, "last_price": 4120.5},
    {"instrument_key": "NSE_EQ|INE040A01034", "segment": "NSE_EQ", "instrument_type": "EQ",
     "trading_symbol": "HDFCBANK", "tick_size": 10.0, "lot_size": 1, "last_price": 1712.9},
    {"instrument_key": "NSE_EQ|INE062A01020", "segment": "NSE_EQ", "instrument_type": "EQ",
     "trading_symbol": "SBIN", "tick_size": 5.0, "lot_size": 1, "last_price": 812.35},
    {"instrument_key": "NSE_FO|900001", "segment": "NSE_FO", "instrument_type": "FUT",
     "trading_symbol": "NIFTY FUT", "tick_size": 10.0, "lot_size": 75,
     "underlying_key": "NSE_INDEX|Nifty 50", "underlying_type": "INDEX"},
    {"instrument_key": "NSE_FO|900002", "segment": "NSE_FO", "instrument_type": "FUT",
     "trading_symbol": "RELIANCE FUT", "tick_size": 10.0, "lot_size": 500,
     "underlying_key": "NSE_EQ|INE002A01018", "underlying_type": "EQUITY"},
    {"instrument_key": "NSE_FO|900003", "segment": "NSE_FO", "instrument_type": "CE",
     "trading_symbol": "NIFTY 24300 CE", "tick_size": 5.0, "lot_size": 75,
     "strike_price": 24300.0, "underlying_key": "NSE_INDEX|Nifty 50", "underlying_type": "INDEX"},
    {"instrument_key": "NSE_FO|900004", "segment": "NSE_FO", "instrument_type": "PE",
     "trading_symbol": "NIFTY 24300 PE", "tick_size": 5.0, "lot_size": 75,
     "strike_price": 24300.0, "underlying_key": "NSE_INDEX|Nifty 50", "underlying_type": "INDEX"},
    {"instrument_key": "NSE_FO|900005", "segment": "NSE_FO", "instrument_type": "CE",
     "trading_symbol": "RELIANCE 1300 CE", "tick_size": 5.0, "lot_size": 500,
     "strike_price": 1300.0, "underlying_key": "NSE_EQ|INE002A01018", "underlying_type": "EQUITY"},
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Profile:
    """What the simulator knows of an instrument before it trades: the static part."""

    key: str
    kind: str  # EQ, FUT, CE, PE or INDEX
    tick_units: int
    lot: int
    close: float  # previous close, on the tick grid
    strike: float = 0.0
    spot: float = 0.0  # underlying's previous close, for option pricing
    expiry_ms: int = 0
    underlying: str = ""  # an option's underlying key: its price prices the option
    base_iv: float = DEFAULT_IV  # an option's at-the-money IV (pricing.smile)


class QuantityPattern:
    """Bid and ask quantities of the depth levels; `layouts` is filled by the wire encoder.

    Depth quantities come from a few patterns per lot size rather than fresh draws per
    level: a requote then costs one draw, and the encoder can prepare each pattern's bytes.
    """

    __slots__ = ("layouts", "quantities")

    def __init__(self, quantities: tuple[tuple[int, int], ...]) -> None:
        self.quantities = quantities
        self.layouts: dict[object, Any] = {}  # simulator.frames's _Depth -> _DepthLayout


class Universe:
    """Instrument-master records by key, and a plausible profile for any key at all."""

    def __init__(self, records: Iterable[Mapping[str, object]], seed: int) -> None:
        self.seed = seed
        self.records = {str(record["instrument_key"]): record for record in records}
        self._given = list(self.records.values())
        self._chains = chain_specs(self.records)
        for spec in self._chains:  # a master without closes (the sample) gets typical ones
            index = self.records[spec.underlying_key]
            if not _number(index, "last_price"):
                self.records[spec.underlying_key] = {**index, "last_price": spec.level}
        self._listing: list[Mapping[str, object]] = []
        self._listed_until = -1  # when the nearest listed expiry closes: the listing rolls
        self._profiles: dict[str, Profile] = {}
        self._patterns: dict[int, tuple[QuantityPattern, ...]] = {}
        self._tables: dict[tuple[object, ...], tuple[float, ...]] = {}

    def listing(self, now_ms: int) -> list[Mapping[str, object]]:
        """The instrument master at `now_ms`: the records given and the option chains of their
        indices (chains.py), less every contract whose expiry has passed. The same list object
        until the next expiry passes, so that a reader may cache what it made of it."""
        if now_ms >= self._listed_until:
            # By key: a master saved from an earlier run holds chain records already.
            by_key = {str(record["instrument_key"]): record for record in self._given}
            for spec in self._chains:
                spot = self.profile(spec.underlying_key, now_ms).close
                given = (
                    r for r in by_key.values() if r.get("underlying_key") == spec.underlying_key
                )
                taken = {slot for r in given if (slot := slot_of(r)) is not None}
                for record in chain_records(spec, spot, now_ms, taken):
                    key = str(record["instrument_key"])
                    by_key[key] = self.records.setdefault(key, record)
            listed = [r for r in by_key.values() if not 0 < _number(r, "expiry") <= now_ms]
            expiries = (int(_number(record, "expiry")) for record in listed)
            self._listed_until = min((ms for ms in expiries if ms > 0), default=2**62)
            self._listing = listed
        return self._listing

    def profile(self, key: str, now_ms: int) -> Profile:
        profile = self._profiles.get(key)
        if profile is None:
            profile = self._profiles[key] = self._build_profile(key, now_ms)
        return profile

    def patterns(self, lot: int) -> tuple[QuantityPattern, ...]:
        patterns = self._patterns.get(lot)
        if patterns is None:
            rng = random.Random(f"{self.seed}|depth|{lot}")
            most = 2000 if lot == 1 else 40  # an equity book shows shares, F&O books lots
            patterns = self._patterns[lot] = tuple(
                QuantityPattern(
                    tuple(
                        (
                            lot * int(1 + most * rng.random() ** 2),
                            lot * int(1 + most * rng.random() ** 2),
                        )
                        for _ in range(DEPTH_LEVELS)
                    )
                )
                for _ in range(QUANTITY_PATTERNS)
            )
        return patterns

    def table(
        self, key: tuple[object, ...], build: Callable[[], tuple[float, ...]]
    ) -> tuple[float, ...]:
        """A lookup table shared by all instruments that ask for the same `key`."""
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = build()
        return table

    def _build_profile(self, key: str, now_ms: int) -> Profile:
        record = self.records.get(key)
        if record is None:
            segment = key.partition("|")[0]
            kind = "INDEX" if segment.endswith("_INDEX") else "EQ"
            return Profile(key, kind, _tick_units(DEFAULT_TICK_PAISE), 1, DEFAULT_CLOSE)
        kind = str(record.get("instrument_type") or "EQ")
        if kind not in _SIGMA:
            kind = "EQ"
        tick_units = _tick_units(_number(record, "tick_size") or DEFAULT_TICK_PAISE)
        lot = 1 if kind == "INDEX" else max(1, int(_number(record, "lot_size")))
        underlying = str(record.get("underlying_key") or "")
        has_underlying = underlying and underlying != key
        spot = self.profile(underlying, now_ms).close if has_underlying else 0.0
        strike = _number(record, "strike_price")
        if kind in ("CE", "PE"):
            spot = spot or strike or DEFAULT_CLOSE
        expiry_ms = int(_number(record, "expiry"))
        spec = INDEX_CHAINS.get(underlying)
        base_iv = spec.base_iv if spec is not None else DEFAULT_IV
        close = _number(record, "last_price")
        if not close:
            close = self._invented_close(key, kind, spot, strike, expiry_ms, now_ms, base_iv)
        close = max(1, round(close * SCALE / tick_units)) * tick_units / SCALE
        underlying = underlying if has_underlying and kind in ("CE", "PE") else ""
        return Profile(
            key, kind, tick_units, lot, close, strike, spot, expiry_ms, underlying, base_iv
        )

    def _invented_close(
        self,
        key: str,
        kind: str,
        spot: float,
        strike: float,
        expiry_ms: int,
        now_ms: int,
        base_iv: float,
    ) -> float:
        """A previous close for a record that carries none: near the underlying's, if known;
        an option's from its price model a day earlier."""
        if kind in ("CE", "PE"):
            years = years_left(expiry_ms, now_ms - DAY_MS)
            iv = smile(base_iv, spot, strike or spot, years)
            price, _ = black_scholes(spot, strike or spot, years, iv, kind == "CE")
            return max(price, 0.05)
        if spot:
            return spot * 1.004  # a future trades a little over its underlying
        rng = random.Random(f"{self.seed}|close|{key}")
        if kind == "INDEX":
            return 20_000.0 * math.exp(rng.gauss(0.0, 0.4))
        return DEFAULT_CLOSE * math.exp(rng.gauss(0.0, 0.8))


def _number(record: Mapping[str, object], name: str) -> float:
    """A numeric field of a record; 0 when it is missing or not a number."""
    value = record.get(name)
    return float(value) if isinstance(value, int | float) else 0.0


def _tick_units(tick_paise: float) -> int:
    return max(1, round(tick_paise * SCALE / 100))


def years_left(expiry_ms: int, now_ms: int) -> float:
    """Time to expiry in years, a week when the record has no expiry (pricing.years_to)."""
    return years_to(expiry_ms or now_ms + 7 * DAY_MS, now_ms)


class Instrument:
    """The live state of one instrument: the last trade, volume, depth and greeks.

    `trade` moves it one trade forward. `depth_changed` and `greeks_changed` tell the encoder
    whether the last trade requoted the book (a live frame leaves an unchanged book out, as
    the real feed does). `cache` and `heads` belong to the wire encoder: bytes of the current
    quotes (emptied at each requote) and of the map-entry headers.

    An option does not walk: each trade prices it (pricing.py) at its `underlying`'s last
    price, on the smile, with the time left, so its price, greeks and IV agree. Its path
    therefore depends on when its underlying traded, not on the seed alone.
    """

    __slots__ = (
        "ask_units",
        "atp",
        "band_high",
        "band_low",
        "bid_units",
        "book_moves",
        "cache",
        "close",
        "day_high",
        "day_low",
        "day_open",
        "day_start_ms",
        "depth_changed",
        "greeks",
        "greeks_changed",
        "heads",
        "index",
        "iv",
        "key",
        "key_bytes",
        "kind",
        "lot",
        "ltp",
        "ltq",
        "ltt",
        "oi",
        "oi_open",
        "option",
        "pattern",
        "patterns",
        "profile",
        "random",
        "recorded_ltt",
        "sizes",
        "spike_random",
        "steps",
        "strike",
        "tbq",
        "tick_units",
        "ticks",
        "tsq",
        "turnover",
        "underlying",
        "vol_offset",
        "vtt",
    )

    def __init__(
        self,
        profile: Profile,
        universe: Universe,
        now_ms: int,
        underlying: Instrument | None = None,
    ) -> None:
        rng = random.Random(f"{universe.seed}|{profile.key}")
        self.random = rng.random
        # Its own stream, so the price and size paths stay those of the seed without spikes.
        self.spike_random = random.Random(f"{universe.seed}|spike|{profile.key}").random
        self.profile = profile
        self.key = profile.key
        self.key_bytes = profile.key.encode()
        self.kind = profile.kind
        self.index = profile.kind == "INDEX"
        self.option = profile.kind in ("CE", "PE")
        self.tick_units = profile.tick_units
        self.lot = profile.lot
        self.patterns = universe.patterns(self.lot)
        self.close = profile.close
        close_ticks = round(profile.close * SCALE / profile.tick_units)
        sigma = max(0.7, close_ticks * _SIGMA[profile.kind])
        # Price moves per trade in ticks, trade sizes and book changes: tables shared by
        # instruments alike, so that thousands of instruments stay small in the CPU caches.
        self.steps = universe.table(
            ("steps", round(sigma, 1)), lambda: tuple(round(z * sigma) for z in _Z)
        )
        self.band_low = round(close_ticks * 0.97)
        self.band_high = round(close_ticks * 1.03)
        max_lots = _MAX_LOTS.get(profile.kind, 1)
        lot = self.lot
        self.sizes = universe.table(
            ("sizes", lot, max_lots),
            lambda: tuple(lot * (1 + int(max_lots * (i / 64) ** 3)) for i in range(64)),
        )
        self.book_moves = universe.table(
            ("book", lot), lambda: tuple(float(lot * (i - 31) * 2) for i in range(64))
        )
        # The day opened with a gap; the state below is "the market so far today".
        self.ticks = max(1, close_ticks + round(rng.gauss(0.0, 20.0) * sigma))
        self.ltp = self.ticks * self.tick_units / SCALE
        self.day_open = self.day_high = self.day_low = self.ltp
        local_ms = now_ms + IST_OFFSET_MS
        self.day_start_ms = local_ms - local_ms % DAY_MS - IST_OFFSET_MS
        self.ltt = now_ms - now_ms % 1000 if self.index else now_ms
        self.recorded_ltt = 0
        self.cache: dict[object, bytes] = {}
        self.heads: dict[int, bytes] = {}
        self.ltq = 0 if self.index else self.sizes[rng.randrange(64)]
        self.vtt = 0 if self.index else self.lot * rng.randint(1_000, 100_000)
        self.turnover = self.vtt * self.ltp
        self.atp = 0.0 if self.index else round(self.ltp, 2)
        self.tbq = float(self.lot * rng.randint(1_000, 50_000)) if not self.index else 0.0
        self.tsq = float(self.lot * rng.randint(1_000, 50_000)) if not self.index else 0.0
        derivative = self.kind in ("FUT", "CE", "PE")
        self.oi = float(self.lot * rng.randint(500, 50_000)) if derivative else 0.0
        self.iv = 0.0
        self.greeks: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)
        self.strike = profile.strike or profile.spot
        self.underlying = underlying
        self.vol_offset = 0.0
        if self.option:
            # Each contract's IV sits a little off the smile, and drifts there.
            self.vol_offset = (rng.random() - 0.5) * 0.01
            self.ticks = self._priced_ticks(now_ms)
            self.ltp = self.ticks * self.tick_units / SCALE
            self.day_open = self.day_high = self.day_low = self.atp = self.ltp
            self.turnover = self.vtt * self.ltp
            # Open interest gathers near the money, as on NSE.
            distance = abs(math.log(self.strike / self._spot())) / 0.03
            self.oi = float(self.lot * max(1, round(self.oi / self.lot / (1 + distance**2))))
        self.oi_open = self.oi
        self.bid_units = self.ask_units = 0
        self.pattern = self.patterns[0]
        self.depth_changed = self.greeks_changed = False
        if not self.index:
            self._requote(now_ms)

    def move_to(self, price: float) -> None:
        """Jump to `price` (a test moving an underlying: /_sim/move); the walk goes on from
        there, within a band re-centred on it, and options priced on it follow."""
        self.ticks = ticks = max(1, round(price * SCALE / self.tick_units))
        self.band_low, self.band_high = round(ticks * 0.97), round(ticks * 1.03)
        self.ltp = ltp = ticks * self.tick_units / SCALE
        self.day_high, self.day_low = max(self.day_high, ltp), min(self.day_low, ltp)

    def _spot(self) -> float:
        """The underlying's price now: its last trade, or its previous close if not traded."""
        underlying = self.underlying
        return underlying.ltp if underlying is not None else self.profile.spot

    def _priced_ticks(self, now_ms: int) -> int:
        """The option's price in ticks at `now_ms`, with its IV and greeks set to match."""
        profile = self.profile
        spot = self._spot()
        years = years_to(profile.expiry_ms or now_ms + 7 * DAY_MS, now_ms)
        # The IV sent is the one priced with: rounded first, as Upstox prints it.
        iv = round(smile(profile.base_iv, spot, self.strike, years) + self.vol_offset, 4)
        price, greeks = black_scholes(spot, self.strike, years, iv, self.kind == "CE")
        self.iv = iv
        delta, theta, gamma, vega, rho = greeks
        rounded = (
            round(delta, 4), round(theta, 4), round(gamma, 6), round(vega, 4), round(rho, 4)
        )  # fmt: skip
        self.greeks_changed = changed = rounded != self.greeks
        if changed:
            self.greeks = rounded
            self.cache = {}  # the encoder's bytes of the old greeks
        return max(1, round(price * SCALE / self.tick_units))

    def trade(self, now_ms: int) -> bool:
        """One more trade at `now_ms` (later if the last one was not earlier); False if an
        index already printed this second (index feeds carry whole seconds)."""
        if self.index:
            ltt = now_ms - now_ms % 1000
            if ltt <= self.ltt:
                return False
        else:
            ltt = now_ms if now_ms > self.ltt else self.ltt + 1
        self.ltt = ltt
        r = self.random
        if self.option:
            if r() < 0.2:
                self.vol_offset = min(0.02, max(-0.02, self.vol_offset + (r() - 0.5) * 0.002))
            ticks = self._priced_ticks(ltt)
        else:
            ticks = self.ticks + self.steps[int(r() * 256)]
            if ticks > self.band_high:  # lean back towards the previous close
                ticks -= 1
            elif ticks < self.band_low:
                ticks += 1
        self.ticks = ticks
        self.ltp = ltp = ticks * self.tick_units / SCALE
        if ltp > self.day_high:
            self.day_high = ltp
        elif ltp < self.day_low:
            self.day_low = ltp
        if self.index:
            return True
        self.ltq = volume = self.sizes[int(r() * 64)]
        if r() < 0.3:  # more trades happened since the last frame than the one printed
            volume += self.sizes[int(r() * 64)] * 3
        if self.spike_random() < SPIKE_CHANCE:  # a block trade: what spike detectors find
            volume *= SPIKE_TIMES
        self.vtt = vtt = self.vtt + volume
        self.turnover = turnover = self.turnover + volume * ltp
        self.atp = round(turnover / vtt, 2)
        units = ticks * self.tick_units
        if r() < 0.2 or not self.bid_units <= units <= self.ask_units:
            self._requote(ltt)
        else:
            self.depth_changed = False
        return True

    def _requote(self, now_ms: int) -> None:
        """A new book around the last price: depth, buy/sell totals and, for a derivative,
        open interest."""
        r = self.random
        tick = self.tick_units
        units = self.ticks * tick
        below, above = _SPREADS[int(r() * 3)]
        bid = units - below * tick
        self.bid_units = bid if bid > 0 else tick
        self.ask_units = units + above * tick
        self.pattern = self.patterns[int(r() * QUANTITY_PATTERNS)]
        moves = self.book_moves
        self.tbq = abs(self.tbq + moves[int(r() * 64)])
        self.tsq = abs(self.tsq + moves[int(r() * 64)])
        if self.oi and r() < 0.3:
            self.oi = abs(self.oi + moves[int(r() * 64)])
        self.depth_changed = True
        self.cache = {}

    def depth(self, levels: int) -> list[tuple[int, float, int, float]]:
        """The book as (bidQ, bidP, askQ, askP) per level, best first: a reader's view."""
        tick = self.tick_units
        return [
            (
                bid_q,
                max(self.bid_units - i * tick, 0) / SCALE,
                ask_q,
                (self.ask_units + i * tick) / SCALE,
            )
            for i, (bid_q, ask_q) in enumerate(self.pattern.quantities[:levels])
        ]
