"""Prometheus figures read from the status the ingest publishes, at scrape time.

The ingest runs in another process and serves no HTTP of its own, so everything /metrics
says comes from that status: the feed, subscriptions, journal, writer, pipeline and disk.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ingest.status import DiskStatus, FeedStatus, IngestStatus, SignalsStatus


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
        yield from _disk_metrics(status.disk)
        yield from _flow_metrics(status)
        yield from _signals_metrics(status.signals)
        yield GaugeMetricFamily(
            "tickvault_writer_oldest_unwritten_tick_age_seconds",
            "Age of the oldest tick not yet committed (0 when none waits)",
            writer.oldest_unwritten_tick_age_s if writer is not None else 0.0,
        )
        yield from _watchdog_metrics(feed)


def _flow_metrics(status: IngestStatus) -> Iterator[Metric]:
    """What went through: rows committed, frames dropped or malformed, the writer's errors
    and the rows it holds."""
    writer, pipeline = status.writer, status.pipeline
    for name, help_text, value in (
        ("tickvault_ticks_received", "Ticks decoded from the feed", status.cache.ticks_processed),
        (
            "tickvault_rows_written",
            "Tick rows committed to the database",
            writer and writer.rows_written,
        ),
        ("tickvault_writer_errors", "Failed database writes (retried)", writer and writer.errors),
        (
            "tickvault_malformed_frames",
            "Feed frames that did not decode",
            pipeline and pipeline.malformed_frames,
        ),
        (
            "tickvault_frames_refused",
            "Feed frames dropped before the journal (disk full or failing)",
            pipeline and pipeline.frames_refused,
        ),
    ):
        yield CounterMetricFamily(name, help_text, value or 0)
    yield GaugeMetricFamily(
        "tickvault_writer_queue_rows",
        "Rows waiting for the database",
        writer.queue_depth if writer is not None else 0,
    )


def _signals_metrics(signals: SignalsStatus | None) -> Iterator[Metric]:
    """The custom handlers' signals by what became of them (ingest/signals.py)."""
    counts = CounterMetricFamily(
        "tickvault_signals",
        "Signals custom handlers emitted: stored, repeated (emitted again after a crash, "
        "already stored), rejected (bad or refused) or dropped (queue full)",
        labels=["outcome"],
    )
    if signals is not None:
        for outcome in ("emitted", "stored", "repeated", "rejected", "dropped"):
            counts.add_metric([outcome], getattr(signals, outcome))
    yield counts


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


def _disk_metrics(disk: DiskStatus | None) -> Iterator[Metric]:
    """Sizes and free space (ingest/disk.py); a figure not measured yet is left out."""
    if disk is None:
        return
    free = GaugeMetricFamily(
        "tickvault_disk_free_bytes", "Free space of a disk tickvault writes to", labels=["disk"]
    )
    for name, value in (
        ("data_dir", disk.data_dir_free_bytes),
        ("journal", disk.journal_free_bytes),
    ):
        if value is not None:
            free.add_metric([name], value)
    yield free
    yield GaugeMetricFamily(
        "tickvault_disk_min_free_bytes",
        "Free space below which new frames are refused (TICKVAULT_MIN_FREE_GB)",
        disk.min_free_bytes,
    )
    yield GaugeMetricFamily(
        "tickvault_disk_below_floor",
        "1 while new frames are refused for want of free space",
        int(disk.refusing_frames is not None),
    )
    for name, value, what in (
        ("tickvault_database_bytes", disk.database_bytes, "Size of the database"),
        ("tickvault_archive_bytes", disk.archive_bytes, "Size of the Parquet tick archive"),
    ):
        if value is not None:
            yield GaugeMetricFamily(name, what, value)
