"""Prometheus figures read from the ingest's status at scrape time.

Counts the service already observes as they happen (ticks, rows written, malformed frames,
writer queue rows, batch latencies) live in its own registry; this collector adds what only
its status knows, so nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ingest.status import FeedStatus, IngestStatus


class StatusCollector(Collector):
    """One scrape's view of `WebSocketService.status()`."""

    def __init__(self, status: IngestStatus) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        """A section the service has not built yet counts as zeros."""
        status = self._status
        feed, subscriptions = status.feed, status.subscriptions
        journal, writer = status.journal, status.writer

        yield GaugeMetricFamily(
            "tickvault_ingest_running", "1 while the ingest service runs", int(status.is_running)
        )
        yield GaugeMetricFamily(
            "tickvault_feed_connected",
            "1 while every feed websocket that should be open is open",
            int(status.websocket_connected),
        )
        yield CounterMetricFamily(
            "tickvault_feed_connects", "Feed websocket connections opened", feed.connects or 0
        )
        yield CounterMetricFamily(
            "tickvault_feed_reconnects",
            "Feed websocket connections opened again after a drop",
            feed.reconnects or 0,
        )
        by_status = GaugeMetricFamily(
            "tickvault_subscriptions", "Instruments by subscription status", labels=["status"]
        )
        for name, count in (
            ("subscribed", subscriptions.subscribed_count if subscriptions else 0),
            ("failed", subscriptions.failed_count if subscriptions else 0),
            ("pending", subscriptions.pending_count if subscriptions else 0),
        ):
            by_status.add_metric([name], count)
        yield by_status
        yield GaugeMetricFamily(
            "tickvault_journal_backlog_frames",
            "Journaled frames whose ticks are not committed yet",
            journal.backlog_frames if journal is not None else 0,
        )
        yield GaugeMetricFamily(
            "tickvault_journal_bytes",
            "Journal size on disk",
            journal.bytes_on_disk if journal is not None else 0,
        )
        yield GaugeMetricFamily(
            "tickvault_writer_oldest_unwritten_tick_age_seconds",
            "Age of the oldest tick not yet committed (0 when none waits)",
            writer.oldest_unwritten_tick_age_s if writer is not None else 0.0,
        )
        yield from _watchdog_metrics(feed)


def _watchdog_metrics(feed: FeedStatus) -> Iterator[Metric]:
    """Per feed connection (label `connection`, its index): the stall watchdog's view.

    A connection whose socket has had no data frame yet has no age sample."""
    stalls = CounterMetricFamily(
        "tickvault_feed_stalls",
        "Times the stall watchdog reconnected a silent feed connection during market hours",
        labels=["connection"],
    )
    for index, count in enumerate(feed.stalls or []):
        stalls.add_metric([str(index)], count)
    yield stalls
    ages = GaugeMetricFamily(
        "tickvault_feed_last_data_age_seconds",
        "Seconds since a feed connection's last data frame",
        labels=["connection"],
    )
    for index, age in enumerate(feed.last_data_age_s or []):
        if age is not None:
            ages.add_metric([str(index)], age)
    yield ages
