"""The embedded server: PostgreSQL binaries, the private cluster, the TimescaleDB build."""
