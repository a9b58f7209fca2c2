"""The ingest's periodic and daily work, beside the feed path and never imported by it: the
schedule, the market calendar, coverage spans and backfill, the parity audit, the instrument
master's refresh and the Apache edition's bar rollup. The service wires them in."""
