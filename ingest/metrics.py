"""Prometheus instruments observed as things happen in the ingest (latencies, counts).

The API's /metrics does not see this registry: it runs in another process and serves what
the ingest publishes in its status. The benchmark reads the latency histograms in-process
(bench/ingest_worker.py: receipt to commit, batch writes). Each service owns its registry, so
several services in one process (the tests) do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.ticks_in = Counter(
            "tickvault_ticks_received", "Ticks decoded from the feed", registry=self.registry
        )
        self.rows_written = Counter(
            "tickvault_rows_written", "Tick rows committed to the database", registry=self.registry
        )
        self.malformed_frames = Counter(
            "tickvault_malformed_frames", "Feed frames that did not decode", registry=self.registry
        )
        self.frames_refused = Counter(
            "tickvault_frames_refused",
            "Feed frames dropped because the journal could not take them",
            registry=self.registry,
        )
        self.writer_errors = Counter(
            "tickvault_writer_errors", "Failed database writes (retried)", registry=self.registry
        )
        self.queue_depth = Gauge(
            "tickvault_writer_queue_rows", "Rows waiting for the database", registry=self.registry
        )
        self.batch_seconds = Histogram(
            "tickvault_batch_write_seconds",
            "Time to COPY and commit one batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.commit_latency_seconds = Histogram(
            "tickvault_receipt_to_commit_seconds",
            "Age of a batch's oldest tick when the batch committed",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
