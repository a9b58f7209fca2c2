"""Configuration from the environment: clear errors for bad values, and the token hidden."""

from __future__ import annotations

import pytest

from ingest.config import Secret, Settings
from ingest.upstox.wire import DEFAULT_MODE_LIMITS


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings.database_url is None
    assert settings.mode_limits == DEFAULT_MODE_LIMITS
    assert settings.upstox_api_base == "https://api.upstox.com"
    assert not settings.upstox_access_token


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TICKVAULT_BATCH_ROWS", "lots", "TICKVAULT_BATCH_ROWS must be a whole number"),
        ("TICKVAULT_ROLLUP_INTERVAL_S", "soon", "TICKVAULT_ROLLUP_INTERVAL_S must be a number"),
        ("TICKVAULT_MODE_LIMITS", "full=2000", "is not of the form mode:single/combined"),
    ],
)
def test_a_bad_value_names_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env({name: value})


def test_mode_limits_override_only_the_modes_named() -> None:
    settings = Settings.from_env({"TICKVAULT_MODE_LIMITS": "full:10/5, ltpc:20/8"})
    assert settings.mode_limits["full"] == (10, 5)
    assert settings.mode_limits["ltpc"] == (20, 8)
    assert settings.mode_limits["option_greeks"] == DEFAULT_MODE_LIMITS["option_greeks"]


def test_the_token_never_shows_in_a_repr() -> None:
    settings = Settings.from_env({"UPSTOX_ACCESS_TOKEN": "eyJhbGciOi-secret"})
    assert settings.upstox_access_token == "eyJhbGciOi-secret"
    assert "secret" not in repr(settings)
    assert "secret" not in repr(settings.upstox_access_token)
    assert repr(Secret("")) == "Secret('')"
