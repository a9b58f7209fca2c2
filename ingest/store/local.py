"""Which database tickvault talks to: TICKVAULT_DATABASE_URL, or the embedded local cluster."""

from __future__ import annotations

from ingest.config import Settings
from ingest.store.cluster import LocalCluster
from ingest.store.postgres import PgInstall, StoreError, find_bindir


def local_cluster(settings: Settings) -> LocalCluster:
    return LocalCluster(
        PgInstall(find_bindir(settings.pg_bindir)), settings.pg_data_dir, settings.pg_port
    )


def database_url(settings: Settings, start: bool = False) -> str:
    """The libpq URL to use; with `start`, the local cluster is started when it is down."""
    if settings.database_url:
        return settings.database_url
    cluster = local_cluster(settings)
    if not cluster.is_running():
        if not start:
            raise StoreError(
                f"the local TimescaleDB in {cluster.data_dir} is not running: "
                "`tickvault db start` starts it (or set TICKVAULT_DATABASE_URL)"
            )
        cluster.start()
    return cluster.url()
