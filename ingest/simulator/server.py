"""An Upstox Market Data Feed V3 server on loopback: tickvault's feed when no token is set,
the load generator of the benchmarks and the reference of the "no tick lost" tests.

It speaks the real protocol (see shared/specs/upstox-feed-v3.md): the REST authorize call
and the redirect, single-use codes, a `market_info` frame first, JSON requests in binary
frames, a snapshot after each `sub`, then conflated live frames at a configured rate. It
keeps each minute's OHLCV of what it traded (its candle endpoints' history, bounded in
days), can record every distinct tick it wrote to a socket (bounded too), so a test can
compare the database with exactly what was sent, and it can misbehave on request: drop
connections, send garbage, reject the token, go quiet.

Run it alone with `python -m ingest.simulator --port 8765 --rate 20000 --seed 1`; it then
answers test hooks on the same port: GET /_sim/stats, /_sim/sent_ticks (with --record),
/_sim/drop, /_sim/garbage, /_sim/stall?seconds=N, /_sim/reject_token?on=1|0 and
/_sim/market_status?NSE_EQ=NORMAL_CLOSE, /_sim/move?instrument_key=K&price=P (an underlying
jumps there; its options follow); and Upstox's market timings, holidays and status
(ingest/simulator/calendar_api.py), its option chain (ingest/simulator/chain_api.py);
/_sim/throttle?n=N (the next N candle calls answer 429; ingest/simulator/candle_api.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from core.upstox_wire import DEFAULT_MODE_LIMITS, FEED_PATH
from ingest.simulator.calendar_api import SimulatedMarket
from ingest.simulator.chain_api import ChainEndpoint
from ingest.simulator.following import Following
from ingest.simulator.frames import (
    ENCODERS,
    live_entries,
    live_frame,
    market_info_frame,
    snapshot_frame,
    split_frames,
)
from ingest.simulator.idle import IdleMarket
from ingest.simulator.market import DEFAULT_UNIVERSE, Instrument, Universe
from ingest.simulator.master_file import InstrumentFile
from ingest.simulator.minutes import DEFAULT_DAYS, MinuteBook
from ingest.simulator.oauth import LoginServer
from ingest.simulator.protocol import (
    ClientRequest,
    Gate,
    RequestError,
    check_limits,
    parse_request,
)
from ingest.simulator.rest import Rest
from ingest.simulator.sessions import Session, broadcast, drop, send
from ingest.simulator.tape import DEFAULT_RECORD_LIMIT, SentTick, Tape
from ingest.upstox.redact import RedactBearer

logger = logging.getLogger(__name__)
logger.addFilter(RedactBearer())

# A FeedResponse cannot start with 0x0f: field 1 with wire type 7, which does not exist.
GARBAGE_FRAME = b"\x0fgarbage: not a FeedResponse"
MIN_FRAME_INTERVAL = 0.002


def wall_clock_ms() -> int:
    """Epoch milliseconds: the market's clock unless a test gives another."""
    return time.time_ns() // 1_000_000


_Frame = tuple[bytes | str, list[Instrument]]  # a frame to send (str: an error) and its instruments


class FeedSimulator:
    """A feed server with a simulated market behind it; see the module docstring.

    `rate`: the market's ticks per second over the subscribed instruments, in frames
    `frame_interval` s apart (closer when too few instruments carry the rate at one
    appearance each a frame). `token`: the one access token accepted, None any non-empty.
    `record`: keep every distinct sent tick, at most `record_limit` (tape.py); off, for long
    runs, counts and the minute book of `candle_days` IST dates (minutes.py) are all it
    keeps. `whole_market`: instruments nobody follows trade too (idle.py). `client_secret`:
    the one the OAuth login (`login_url`) accepts, None any; a login's token replaces the
    accepted one. `clock`: the market's time in epoch ms (a test may run it fast).

    A client that does not keep up holds the whole market back (the simulator waits for its
    socket to drain) rather than losing frames: the rate then measures what the slowest
    reader sustains, and a connection nobody reads stops the feed for everyone.
    """

    def __init__(
        self,
        instruments: Iterable[Mapping[str, object]] = DEFAULT_UNIVERSE,
        *,
        token: str | None = None,
        rate: float = 2000.0,
        frame_interval: float = 0.1,
        seed: int = 1,
        mode_limits: Mapping[str, tuple[int, int]] = DEFAULT_MODE_LIMITS,
        record: bool = True,
        record_limit: int = DEFAULT_RECORD_LIMIT,
        candle_days: int = DEFAULT_DAYS,
        whole_market: bool = False,
        max_frame_bytes: int = 512 * 1024,
        client_secret: str | None = None,
        instruments_file: Path | None = None,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        if rate <= 0 or frame_interval <= 0:
            raise ValueError("rate and frame_interval must be positive")
        self.rate = rate
        self._clock = clock
        self.frame_interval = frame_interval
        self.mode_limits = dict(mode_limits)
        self.max_frame_bytes = max_frame_bytes
        universe = Universe(instruments, seed)
        # The instrument master it publishes: `instrument_file.replace(data)` serves another.
        self.instrument_file = InstrumentFile(lambda: universe.listing(clock()), instruments_file)
        self._gate = Gate(token)
        self.market = SimulatedMarket()
        self.minutes = MinuteBook(candle_days)
        self._rest = Rest(self, self._gate)
        self._login = LoginServer(self._gate, client_secret)
        self._tape = Tape(self.minutes, record, record_limit)
        self._following = Following(universe)
        self.chain = ChainEndpoint(self._following, self._gate, clock)
        self._idle = IdleMarket(self._following, self.minutes, clock) if whole_market else None
        self._random = random.Random(seed).random
        self._sessions: list[Session] = []
        self._stall_until = 0.0
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []  # the market's pace, the idle market
        self._host = "127.0.0.1"

    # Life cycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the simulator binds to loopback only, not {host!r}")
        self._host = "127.0.0.1" if host == "localhost" else host
        self._server = await serve(
            self._serve,
            self._host,
            port,
            process_request=self._rest.process_request,
            compression=None,  # Upstox's frames are small protobufs; deflate would cost the rate
            logger=logger,
        )
        self._tasks = [asyncio.create_task(self._generate(), name="feed simulator")]
        if self._idle is not None:
            idle = self._idle.run(self._following.universe_keys(self._clock()))
            self._tasks.append(asyncio.create_task(idle, name="idle market"))
        await self._login.start(self._host)

    async def stop(self) -> None:
        await self._login.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FeedSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not running")
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def url(self) -> str:
        """The REST base, standing in for https://api.upstox.com."""
        return f"http://{self._host}:{self.port}"

    @property
    def login_url(self) -> str:
        """The OAuth login's base (UPSTOX_LOGIN_BASE): a listener of its own, see login.py."""
        return self._login.url

    @property
    def feed_url(self) -> str:
        return f"ws://{self._host}:{self.port}{FEED_PATH}"

    def followed_keys(self) -> list[str]:
        """The instrument keys some session follows now."""
        return self._following.keys()

    # What was sent

    def sent_ticks(self) -> list[SentTick]:
        """Every distinct tick written to a client, in order; see `Tape.sent_ticks` (it
        raises NotRecorded without `record`, or past `record_limit`)."""
        return self._tape.sent_ticks()

    def stats(self) -> dict[str, object]:
        return {
            "connections": len(self._sessions),
            "subscribed_keys": len(self._following),
            **self._tape.stats(),
            "rate": self.rate,
            "frame_interval": self.frame_interval,
            "whole_market": self._idle is not None,
            "stalled": self._stall_until > time.monotonic(),
            "rejecting_token": self._gate.rejecting,
        }

    # Faults

    async def drop_connections(self) -> int:
        """Close every feed connection abruptly (sessions.drop): clients see 1006."""
        sessions, self._sessions = self._sessions, []
        await drop(sessions, self._following)
        self._tape.counts["drops"] += len(sessions)
        return len(sessions)

    async def send_garbage(self) -> int:
        """One binary frame that is not a FeedResponse to every feed connection."""
        sent = await broadcast(self._sessions, GARBAGE_FRAME)
        self._tape.counts["garbage"] += sent
        return sent

    def reject_token(self, rejecting: bool = True) -> None:
        """Answer 401 UDAPI100050 to every token (authorize and redirect) until reset."""
        self._gate.rejecting = rejecting

    def accept_token(self, token: str | None) -> None:
        """Accept only `token` from now on (None: any), as when a new token replaces one."""
        self._gate.accept(token)

    async def send_market_info(self) -> int:
        """Tell every open feed connection the segment statuses of `market` (a test changed
        them) in a fresh market_info frame, as Upstox does when the market moves."""
        frame = market_info_frame(self._clock(), self.market.statuses)
        return await broadcast(self._sessions, frame)

    def move(self, key: str, price: float) -> None:
        """`key`'s price jumps to `price` now (an underlying, to move its chain's money)."""
        if not price > 0:
            raise ValueError(f"price must be positive, got {price}")
        self._following.know(key, self._clock()).move_to(price)

    def stall(self, seconds: float) -> None:
        """Send no live frames for `seconds`; sockets stay open and keep answering pings."""
        self._stall_until = time.monotonic() + seconds

    # Websocket

    async def _serve(self, connection: ServerConnection) -> None:
        session = Session(connection)
        try:
            await connection.send(market_info_frame(self._clock(), self.market.statuses))
            self._sessions.append(session)
            async for message in connection:
                for frame, instruments in self._on_request(session, message):
                    await send(session, frame, instruments, self._tape)
        except ConnectionClosed:
            pass
        finally:
            if session in self._sessions:
                self._sessions.remove(session)
                self._following.leave(session.modes)

    def _on_request(self, session: Session, message: str | bytes) -> list[_Frame]:
        """Apply one client request; the frames to answer with, each with its instruments.

        Nothing here awaits, so a subscription and its snapshot reach the socket before any
        live frame that carries the new keys.
        """
        try:
            request = parse_request(message)
            if request.mode is None:
                self._following.leave(session.modes, request.keys)
                return []
            return self._subscribe(session, request)
        except RequestError as error:
            return [(error.frame(), [])]

    def _subscribe(self, session: Session, request: ClientRequest) -> list[_Frame]:
        """`sub` and `change_mode` alike: the keys follow the mode, then get a snapshot."""
        assert request.mode is not None
        modes = {**session.modes, **dict.fromkeys(request.keys, request.mode)}
        check_limits(modes, self.mode_limits, request.method)
        now_ms = self._clock()
        for key in request.keys:
            if key not in session.modes:
                self._following.follow(key, now_ms)
        session.modes = modes
        instruments = [self._following[key] for key in request.keys]
        encode = ENCODERS[request.mode]
        entries = [encode(instrument, True) for instrument in instruments]
        return list(
            split_frames(snapshot_frame, now_ms, entries, instruments, self.max_frame_bytes)
        )

    # The market

    async def _generate(self) -> None:
        """Trade `rate` ticks a second among the subscribed instruments, a frame at a time."""
        last = next_frame = time.monotonic()
        due = 0.0
        while True:
            now = time.monotonic()
            if now < self._stall_until:
                await asyncio.sleep(self._stall_until - now)
                last = next_frame = time.monotonic()
                continue
            active = self._following.active()
            if not active:
                await self._following.wait()
                last = next_frame = time.monotonic()
                continue
            due = min(due + (now - last) * self.rate, 2 * len(active))  # catch up, within reason
            last = now
            count = min(int(due), len(active))  # each instrument at most once a frame
            if count:
                due -= count
                await self._emit(active, count)
            # Frames that carry half of the instruments leave room to catch up after a delay.
            interval = len(active) / self.rate / 2
            interval = min(self.frame_interval, max(interval, MIN_FRAME_INTERVAL))
            next_frame = max(next_frame + interval, time.monotonic())
            await asyncio.sleep(next_frame - time.monotonic())

    async def _emit(self, active: list[Instrument], count: int) -> None:
        """One live frame per session: `count` instruments trade, each at most once."""
        start = int(self._random() * len(active))
        chosen = active[start : start + count]
        if len(chosen) < count:
            chosen += active[: count - len(chosen)]
        now_ms = self._clock()
        traded = [instrument for instrument in chosen if instrument.trade(now_ms)]
        if not traded:
            return
        # Two sessions following an instrument in one mode share its bytes.
        shared: dict[tuple[str, str], bytes] | None = {} if len(self._sessions) > 1 else None
        for session in list(self._sessions):
            entries, included = live_entries(traded, session.modes, shared)
            if entries:
                frames = split_frames(live_frame, now_ms, entries, included, self.max_frame_bytes)
                for frame, instruments in frames:
                    await send(session, frame, instruments, self._tape)
