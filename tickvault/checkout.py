"""Where the checkout's store is, from whatever folder a notebook kernel was started in, and
a connection to it.

Its own module so that the notebook helper, its option-chain frames (tickvault/chain_frames.py)
and the history (tickvault/history_sql.py) all find the store the same way without importing
each other.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import psycopg

from core.config import Settings
from core.ist import IST_ZONE
from store.local.url import database_url


def checkout_settings(start: Path | None = None) -> Settings:
    """The settings `make run` uses, from whatever folder the kernel was started in.

    Jupyter starts a kernel in the notebook's folder (`notebooks/`), while `make run` reads
    `.env` and keeps its store (`.tickvault`) in the checkout's root: so the nearest folder,
    from `start` (the working directory) up, that holds a `.env` or a data directory is where
    `.env` is read and a relative TICKVAULT_DATA_DIR is resolved.
    """
    here = (start or Path.cwd()).absolute()
    default_dir = Settings.data_dir
    root = next(
        (
            folder
            for folder in (here, *here.parents)
            if (folder / ".env").is_file() or (folder / default_dir).is_dir()
        ),
        here,
    )
    settings = Settings.from_env(env_file=root / ".env")
    if settings.data_dir.is_absolute():
        return settings
    return replace(settings, data_dir=root / settings.data_dir)


def connect() -> psycopg.Connection:
    """A connection to the store in IST, so timestamps come back as the exchange's clock."""
    conn = psycopg.connect(database_url(checkout_settings()), autocommit=True)
    conn.execute(f"SET TIME ZONE '{IST_ZONE}'")
    return conn
