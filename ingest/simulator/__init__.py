"""The Upstox feed simulator: a V3 feed server on loopback with a simulated market behind it.

server (FeedSimulator: sockets, sessions, the market's pace), rest (authorize, redirect, test
hooks), protocol (the rules of entry and of requests), following (the followed instruments),
market (their prices), frames (protobuf bytes), tape (what was sent), minutes (each
minute's OHLCV, the candles' history), candles (their endpoints), idle (the instruments
nobody follows, trading on), command (the CLI).
Imports nothing of the project but ingest.upstox (an import contract in pyproject.toml says so).
"""

from ingest.simulator.server import FeedSimulator
from ingest.simulator.tape import NotRecorded, SentTick

__all__ = ["FeedSimulator", "NotRecorded", "SentTick"]
