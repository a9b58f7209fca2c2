"""The Upstox V3 market data feed client: authorize, connect, subscribe, and keep it that way.

A universe larger than one connection may carry is spread over up to `max_connections`
websockets, each reconnecting on its own with backoff and jitter; a request beyond the
per-mode key limits is refused whole before anything is sent.

The package, each module one job:
- `facade`: `FeedClient`, the subscriptions and the lifecycle, delegating to the rest;
- `planner`: which connection takes which key under the per-mode limits (pure, no I/O);
- `authorize`: TLS rules, the single-use feed URL, the access token;
- `connection`: one socket's keep-open loop;
- `ledger`: counters, the last error and the requests in flight, for `status()`.
"""

from ingest.client.authorize import is_loopback
from ingest.client.connection import FrameSink, FrameSpan, SinkError
from ingest.client.facade import FeedClient
from ingest.client.planner import SubscriptionLimitError

# The Phase 2 guide's name for the feed client.
UpstoxWebSocketClient = FeedClient

__all__ = [
    "FeedClient",
    "FrameSink",
    "FrameSpan",
    "SinkError",
    "SubscriptionLimitError",
    "UpstoxWebSocketClient",
    "is_loopback",
]
