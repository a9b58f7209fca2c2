"""Configuration from the environment, read once and passed down explicitly.

Every knob is an environment variable so that the same code runs from a shell, from docker
compose's `.env` and from the tests. README.md's configuration table lists them all; keep the
two in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ingest.upstox.wire import DEFAULT_MODE_LIMITS


class Secret(str):
    """A string that never shows itself in a repr, a log line or an f-string debug dump."""

    def __repr__(self) -> str:
        return "Secret('********')" if self else "Secret('')"


_N = TypeVar("_N", int, float)


def _number(env: dict[str, str], name: str, default: _N) -> _N:
    """`name` parsed like its default (int or float); a bad value names the variable."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return type(default)(raw)
    except ValueError:
        kind = "a whole number" if isinstance(default, int) else "a number"
        raise ValueError(f"{name} must be {kind}, got {raw!r}") from None


def _mode_limits(env: dict[str, str]) -> dict[str, tuple[int, int]]:
    """`TICKVAULT_MODE_LIMITS=full:2000/1500,ltpc:5000/2000` overrides the documented limits."""
    limits = dict(DEFAULT_MODE_LIMITS)
    raw = env.get("TICKVAULT_MODE_LIMITS", "").strip()
    for item in filter(None, (part.strip() for part in raw.split(","))):
        try:
            mode, numbers = item.split(":")
            single, combined = numbers.split("/")
            limits[mode.strip()] = (int(single), int(combined))
        except ValueError:
            raise ValueError(
                f"TICKVAULT_MODE_LIMITS item {item!r} is not of the form mode:single/combined"
            ) from None
    return limits


@dataclass(frozen=True)
class Settings:
    """What tickvault runs with; `Settings.from_env()` is the only place that reads os.environ."""

    data_dir: Path = Path(".tickvault")
    database_url: str | None = None
    pg_bindir: Path | None = None
    pg_port: int = 55432
    upstox_access_token: Secret = field(default=Secret(""), repr=False)
    upstox_api_base: str = "https://api.upstox.com"
    feed_mode: str = "full"
    max_connections: int = 1
    mode_limits: dict[str, tuple[int, int]] = field(
        default_factory=lambda: dict(DEFAULT_MODE_LIMITS)
    )
    index_keys: tuple[str, ...] = ("NSE_INDEX|Nifty 50", "NSE_INDEX|Nifty Bank")
    batch_rows: int = 20_000
    batch_ms: int = 100
    queue_max_rows: int = 500_000
    journal_max_bytes: int = 2 * 1024**3
    journal_segment_bytes: int = 64 * 1024**2
    rollup_interval_s: float = 5.0
    simulator_rate: int = 2000
    simulator_seed: int = 1
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_key: Secret = field(default=Secret(""), repr=False)
    log_level: str = "INFO"

    @property
    def pg_data_dir(self) -> Path:
        return self.data_dir / "pg"

    @property
    def journal_dir(self) -> Path:
        return self.data_dir / "journal"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        bindir = env.get("TICKVAULT_PG_BINDIR")
        indices = env.get("TICKVAULT_INDEX_KEYS")
        return cls(
            data_dir=Path(env.get("TICKVAULT_DATA_DIR") or ".tickvault"),
            database_url=env.get("TICKVAULT_DATABASE_URL") or None,
            pg_bindir=Path(bindir) if bindir else None,
            pg_port=_number(env, "TICKVAULT_PG_PORT", 55432),
            upstox_access_token=Secret(env.get("UPSTOX_ACCESS_TOKEN", "")),
            upstox_api_base=env.get("UPSTOX_API_BASE") or "https://api.upstox.com",
            feed_mode=env.get("TICKVAULT_FEED_MODE") or "full",
            max_connections=_number(env, "TICKVAULT_MAX_CONNECTIONS", 1),
            mode_limits=_mode_limits(env),
            index_keys=tuple(k.strip() for k in indices.split(",") if k.strip())
            if indices is not None
            else cls.index_keys,
            batch_rows=_number(env, "TICKVAULT_BATCH_ROWS", 20_000),
            batch_ms=_number(env, "TICKVAULT_BATCH_MS", 100),
            queue_max_rows=_number(env, "TICKVAULT_QUEUE_MAX_ROWS", 500_000),
            journal_max_bytes=_number(env, "TICKVAULT_JOURNAL_MAX_BYTES", 2 * 1024**3),
            journal_segment_bytes=_number(env, "TICKVAULT_JOURNAL_SEGMENT_BYTES", 64 * 1024**2),
            rollup_interval_s=_number(env, "TICKVAULT_ROLLUP_INTERVAL_S", 5.0),
            simulator_rate=_number(env, "TICKVAULT_SIMULATOR_RATE", 2000),
            simulator_seed=_number(env, "TICKVAULT_SIMULATOR_SEED", 1),
            api_host=env.get("TICKVAULT_API_HOST") or "127.0.0.1",
            api_port=_number(env, "TICKVAULT_API_PORT", 8000),
            api_key=Secret(env.get("TICKVAULT_API_KEY", "")),
            log_level=(env.get("TICKVAULT_LOG_LEVEL") or "INFO").upper(),
        )
