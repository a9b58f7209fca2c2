"""The simulator's HTTP side, answered before any websocket handshake: the REST authorize
call, the bare feed URL's redirect, the single-use codes that let a handshake through, and
the instrument master (ingest/simulator/master_file.py), and the /_sim/ test hooks for a
simulator in another process (loopback only, like the rest)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from core.upstox_wire import AUTHORIZE_PATH, FEED_PATH, INSTRUMENTS_PATH
from ingest.simulator.calendar_api import MARKET_PATH, SimulatedMarket
from ingest.simulator.candle_api import CandleEndpoints
from ingest.simulator.chain_api import CHAIN_PATH, ChainEndpoint
from ingest.simulator.master_file import InstrumentFile
from ingest.simulator.minutes import MinuteBook
from ingest.simulator.protocol import (
    INVALID_TOKEN,
    Gate,
    error_response,
    json_response,
    redirect_response,
)
from ingest.simulator.tape import NotRecorded, SentTick

CONTROL_PATH = "/_sim/"


class Controls(Protocol):
    """What the test hooks work on (the FeedSimulator)."""

    @property
    def feed_url(self) -> str: ...

    @property
    def minutes(self) -> MinuteBook: ...

    def stats(self) -> dict[str, object]: ...

    def sent_ticks(self) -> list[SentTick]: ...

    def stall(self, seconds: float) -> None: ...

    def move(self, key: str, price: float) -> None: ...

    @property
    def chain(self) -> ChainEndpoint: ...

    def reject_token(self, rejecting: bool = True) -> None: ...

    def accept_token(self, token: str | None) -> None: ...
    @property
    def market(self) -> SimulatedMarket: ...

    async def send_market_info(self) -> int: ...

    async def drop_connections(self) -> int: ...

    async def send_garbage(self) -> int: ...

    @property
    def instrument_file(self) -> InstrumentFile: ...


class Rest:
    """`process_request` for websockets' server: a Response answers the request, None lets
    the websocket handshake go on."""

    def __init__(self, simulator: Controls, gate: Gate) -> None:
        self._simulator = simulator
        self._gate = gate
        self._background: set[asyncio.Task[int]] = set()
        self._candles = CandleEndpoints(simulator.minutes, gate)

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = parse_qs(url.query)
        if url.path == AUTHORIZE_PATH:
            if not self._gate.token_accepted(request):
                return error_response(401, INVALID_TOKEN)
            redirect = self._gate.authorized_url(self._simulator.feed_url)
            data = {"authorized_redirect_uri": redirect, "authorizedRedirectUri": redirect}
            return json_response(200, {"status": "success", "data": data})
        if url.path == FEED_PATH:
            if "code" in query:
                if self._gate.use_code(query["code"][0]):
                    return None  # go on with the websocket handshake
                return error_response(403, {"message": "authorization code unknown or used"})
            if not self._gate.token_accepted(request):
                return error_response(401, INVALID_TOKEN)
            return redirect_response(self._gate.authorized_url(self._simulator.feed_url))
        if url.path == INSTRUMENTS_PATH:  # public, like Upstox's asset host
            return self._simulator.instrument_file.response()
        if url.path.startswith(MARKET_PATH):
            return self._simulator.market.answer(url.path)
        if url.path == CHAIN_PATH:
            return self._simulator.chain.answer(request, query)
        if self._candles.serves(url.path):
            return self._candles.answer(url.path, request)
        if url.path.startswith(CONTROL_PATH):
            return self._control(url.path[len(CONTROL_PATH) :], query)
        return error_response(404, {"message": "not found"})

    def _control(self, action: str, query: dict[str, list[str]]) -> Response:
        """GET /_sim/stats, /_sim/sent_ticks, /_sim/drop, /_sim/garbage,
        /_sim/stall?seconds=N, /_sim/reject_token?on=1|0, /_sim/accept_token?token=T
        (the one token accepted from now on; without `token`, any),
        /_sim/market_status?SEGMENT=STATUS (sent to the clients in a market_info frame)
        /_sim/throttle?n=N (the next N candle calls answer 429) and
        /_sim/move?instrument_key=K&price=P (K's price jumps to P)."""
        simulator = self._simulator
        if action == "stats":
            return json_response(200, simulator.stats())
        if action == "sent_ticks":
            try:
                return json_response(200, simulator.sent_ticks())
            except NotRecorded as error:  # started without --record, or its record is full
                return error_response(409, {"errorCode": "SIM_NOT_RECORDED", "message": str(error)})
        if action == "stall":
            simulator.stall(float(query.get("seconds", ["5"])[0]))
        elif action == "reject_token":
            simulator.reject_token(query.get("on", ["1"])[0] not in ("0", "false"))
        elif action == "accept_token":
            simulator.accept_token(query.get("token", [None])[0])
        elif action == "market_status":
            try:
                simulator.market.set_statuses({seg: vals[0] for seg, vals in query.items()})
            except ValueError as error:
                return error_response(400, {"message": str(error)})
            self._in_background(simulator.send_market_info())
        elif action == "move":
            try:
                simulator.move(query["instrument_key"][0], float(query["price"][0]))
            except (KeyError, ValueError) as error:
                message = f"move needs instrument_key and a positive price: {error}"
                return error_response(400, {"message": message})
        elif action == "throttle":
            self._candles.throttle(int(query.get("n", ["1"])[0]))
        elif action in ("drop", "garbage"):
            fault = simulator.drop_connections() if action == "drop" else simulator.send_garbage()
            self._in_background(fault)
        else:
            return error_response(404, {"message": f"no hook {action!r}"})
        return json_response(200, {"status": "success", "action": action})

    def _in_background(self, work: Coroutine[object, object, int]) -> None:
        """Run a hook's socket work after the answer: it must not hold up this request."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
