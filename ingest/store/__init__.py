"""The store: a PostgreSQL with TimescaleDB, its schema, and the bars rolled up from ticks."""
