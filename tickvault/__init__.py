"""The `tickvault` command: the one place that wires the store, ingest and api together."""
