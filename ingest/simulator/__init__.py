"""The Upstox feed simulator: a V3 feed server on loopback with a simulated market behind it.

Imports nothing of the project but ingest.upstox (an import contract in pyproject.toml says so).
"""

from ingest.simulator.server import FeedSimulator, SentTick

__all__ = ["FeedSimulator", "SentTick"]
