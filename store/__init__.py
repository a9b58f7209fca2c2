"""The store: a PostgreSQL with TimescaleDB, its schema, and every query of its tables."""
