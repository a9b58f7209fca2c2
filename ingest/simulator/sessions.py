"""The simulator's feed connections (ingest/simulator/server.py): what each follows, writing
a frame to one (counted as sent only once its bytes left), to all, and cutting them all off.

Apart from the server so that the one rule every send obeys, "a tick is recorded as sent
only if an open connection took its bytes", is in one place, beside the fault that breaks
connections on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from ingest.simulator.following import Following
from ingest.simulator.market import Instrument
from ingest.simulator.tape import Tape


@dataclass(eq=False)
class Session:
    """One client connection and what it follows: instrument key -> mode."""

    connection: ServerConnection
    modes: dict[str, str] = field(default_factory=dict)
    open: bool = True


async def send(
    session: Session, frame: bytes | str, instruments: Sequence[Instrument], tape: Tape
) -> None:
    """Write one frame, counting its ticks as sent: `send` writes to the socket before
    it first yields, so an open connection at this point means the bytes went out."""
    if not session.open or session.connection.state is not State.OPEN:
        return
    if isinstance(frame, bytes):
        tape.record(frame, instruments)
    with contextlib.suppress(ConnectionClosed):
        await session.connection.send(frame)


async def broadcast(sessions: Iterable[Session], frame: bytes) -> int:
    """`frame` to every open feed connection; how many there were."""
    open_ones = [s for s in sessions if s.open and s.connection.state is State.OPEN]
    for session in open_ones:
        with contextlib.suppress(ConnectionClosed):
            await session.connection.send(frame)
    return len(open_ones)


async def drop(sessions: Sequence[Session], following: Following) -> None:
    """Close every session's connection abruptly: no close frame, so clients see 1006. The
    TCP connection is shut after what was already written, so all recorded ticks left."""
    for session in sessions:
        session.open = False
        session.connection.transport.close()
        following.leave(session.modes)
    for session in sessions:
        try:  # a client that reads nothing never takes the last bytes: cut it off
            await asyncio.wait_for(session.connection.wait_closed(), 5)
        except TimeoutError:
            session.connection.transport.abort()
