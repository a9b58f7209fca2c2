"""Prometheus figures read from the ingest's status at scrape time.

Counts the service already observes as they happen (ticks, rows written, malformed frames,
writer queue rows, batch latencies) live in its own registry; this collector adds what only
its status knows, so nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class StatusCollector(Collector):
    """One scrape's view of `WebSocketService.get_status()`."""

    def __init__(self, status: dict[str, Any]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status
        feed = status.get("feed") or {}
        subscriptions = status.get("subscriptions") or {}
        journal = status.get("journal") or {}
        writer = status.get("writer") or {}

        yield GaugeMetricFamily(
            "tickvault_ingest_running", "1 while the ingest service runs", int(status["is_running"])
        )
        yield GaugeMetricFamily(
            "tickvault_feed_connected",
            "1 while every feed websocket that should be open is open",
            int(status["websocket_connected"]),
        )
        yield CounterMetricFamily(
            "tickvault_feed_connects", "Feed websocket connections opened", feed.get("connects", 0)
        )
        yield CounterMetricFamily(
            "tickvault_feed_reconnects",
            "Feed websocket connections opened again after a drop",
            feed.get("reconnects", 0),
        )
        by_status = GaugeMetricFamily(
            "tickvault_subscriptions", "Instruments by subscription status", labels=["status"]
        )
        for name in ("subscribed", "failed", "pending"):
            by_status.add_metric([name], subscriptions.get(f"{name}_count", 0))
        yield by_status
        yield GaugeMetricFamily(
            "tickvault_journal_backlog_frames",
            "Journaled frames whose ticks are not committed yet",
            journal.get("backlog_frames", 0),
        )
        yield GaugeMetricFamily(
            "tickvault_journal_bytes", "Journal size on disk", journal.get("bytes_on_disk", 0)
        )
        yield GaugeMetricFamily(
            "tickvault_writer_oldest_unwritten_tick_age_seconds",
            "Age of the oldest tick not yet committed (0 when none waits)",
            writer.get("oldest_unwritten_tick_age_s", 0.0),
        )
