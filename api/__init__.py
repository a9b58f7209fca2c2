"""The HTTP API: live feed state from the ingest service, history from TimescaleDB."""

from api.app import create_app

__all__ = ["create_app"]
