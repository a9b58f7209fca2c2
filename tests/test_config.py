"""Configuration from the environment and `.env`: which wins, clear errors for bad values,
defaults written once, and the secrets hidden."""

from __future__ import annotations

import dataclasses
import logging
import re
from datetime import time
from pathlib import Path

import pytest

from core.config import Secret, Settings, check_dotenv, variable
from core.upstox_wire import DEFAULT_MODE_LIMITS

CONFIGURATION_DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
VARIABLES = [variable(item.name) for item in dataclasses.fields(Settings)]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of its own, and none of tickvault's variables in the environment."""
    monkeypatch.chdir(tmp_path)
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.database_url is None
    assert settings.data_dir == Path(".tickvault")
    assert settings.journal_dir == Path(".tickvault/journal")
    assert settings.pg_data_dir == Path(".tickvault/pg")
    assert settings.mode_limits == DEFAULT_MODE_LIMITS
    assert settings.upstox_api_base == "https://api.upstox.com"
    assert not settings.upstox_access_token
    assert settings.api_allowed_hosts == ("127.0.0.1", "localhost", "[::1]")
    assert settings.log_dir is None  # tickvault run and ingest then use data_dir / "logs"


def test_every_variable_is_read(workdir: Path) -> None:
    environ = {
        "TICKVAULT_DATA_DIR": "/srv/tv",
        "TICKVAULT_DATABASE_URL": "postgresql://db/tv",
        "TICKVAULT_PG_BINDIR": "/usr/lib/postgresql/17/bin",
        "TICKVAULT_PG_PORT": "6543",
        "UPSTOX_ACCESS_TOKEN": "token-1234",
        "UPSTOX_API_BASE": "http://127.0.0.1:9",
        "UPSTOX_CLIENT_ID": "app",
        "UPSTOX_CLIENT_SECRET": "app-secret",
        "UPSTOX_REDIRECT_URI": "http://127.0.0.1:5000/cb",
        "UPSTOX_LOGIN_BASE": "http://127.0.0.1:10",
        "TICKVAULT_FEED_MODE": "ltpc",
        "TICKVAULT_INSTRUMENTS_URL": "https://mirror.example/complete.json.gz",
        "TICKVAULT_INSTRUMENTS_MAX_REMOVED_SHARE": "0.5",
        "TICKVAULT_MAX_CONNECTIONS": "3",
        "TICKVAULT_MODE_LIMITS": "full:10/5",
        "TICKVAULT_INDEX_KEYS": "NSE_INDEX|Nifty 50",
        "TICKVAULT_OPTION_CHAINS": "NIFTY, INFY",
        "TICKVAULT_OPTION_EXPIRIES": "3",
        "TICKVAULT_OPTION_STRIKES": "24",
        "TICKVAULT_OPTION_MODE": "full",
        "TICKVAULT_BATCH_ROWS": "7",
        "TICKVAULT_BATCH_MS": "8",
        "TICKVAULT_QUEUE_MAX_ROWS": "9",
        "TICKVAULT_DB_RETRY_MAX_S": "2.5",
        "TICKVAULT_JOURNAL_MAX_BYTES": "10",
        "TICKVAULT_JOURNAL_SEGMENT_BYTES": "11",
        "TICKVAULT_ROLLUP_INTERVAL_S": "0.5",
        "TICKVAULT_STALL_S": "2.5",
        "TICKVAULT_FEED_READ_PAUSE_MS": "7.5",
        "TICKVAULT_SIMULATOR_RATE": "12",
        "TICKVAULT_SIMULATOR_SEED": "13",
        "TICKVAULT_SPIKE_DETECTOR": "true",
        "TICKVAULT_SPIKE_WINDOW": "24",
        "TICKVAULT_SPIKE_Z": "4.5",
        "TICKVAULT_API_HOST": "::1",
        "TICKVAULT_API_PORT": "14",
        "TICKVAULT_API_WORKERS": "15",
        "TICKVAULT_API_KEY": "key-5678",
        "TICKVAULT_API_ALLOWED_HOSTS": "api.example",
        "TICKVAULT_STREAM_MAX_SYMBOLS": "21",
        "TICKVAULT_STREAM_MAX_CLIENTS": "22",
        "TICKVAULT_STREAM_QUEUE_MAX": "23",
        "TICKVAULT_STREAM_QUEUE_MAX_BYTES": "2048",
        "TICKVAULT_STREAM_DEFLATE": "true",
        "TICKVAULT_LOG_LEVEL": "debug",
        "TICKVAULT_LOG_DIR": "/var/log/tickvault",
        "TICKVAULT_SCHEDULE_ENABLED": "false",
        "TICKVAULT_PREOPEN_AT": "08:05",
        "TICKVAULT_POSTCLOSE_AT": "16:10",
        "TICKVAULT_SCHEDULE_STEP_ATTEMPTS": "16",
        "TICKVAULT_SCHEDULE_RETRY_INITIAL_S": "1.5",
        "TICKVAULT_SCHEDULE_RETRY_MAX_S": "17",
        "TICKVAULT_SCHEDULE_CATCH_UP_DAYS": "18",
        "TICKVAULT_TICKS_RETENTION_DAYS": "19",
        "TICKVAULT_BARS_RETENTION_DAYS": "20",
        "TICKVAULT_ARCHIVE_TICKS": "false",
        "TICKVAULT_ARCHIVE_URL": "s3://market-data/tv",
        "TICKVAULT_MIN_FREE_GB": "0.25",
        "TICKVAULT_AUDIT_AFTER_CLOSE": "false",
    }
    assert set(environ) == set(VARIABLES), "a new field: add its variable here"
    assert Settings.from_env(environ) == Settings(
        data_dir=Path("/srv/tv"),
        database_url="postgresql://db/tv",
        pg_bindir=Path("/usr/lib/postgresql/17/bin"),
        pg_port=6543,
        upstox_access_token=Secret("token-1234"),
        upstox_api_base="http://127.0.0.1:9",
        upstox_client_id="app",
        upstox_client_secret=Secret("app-secret"),
        upstox_redirect_uri="http://127.0.0.1:5000/cb",
        upstox_login_base="http://127.0.0.1:10",
        feed_mode="ltpc",
        instruments_url="https://mirror.example/complete.json.gz",
        instruments_max_removed_share=0.5,
        max_connections=3,
        mode_limits={**DEFAULT_MODE_LIMITS, "full": (10, 5)},
        index_keys=("NSE_INDEX|Nifty 50",),
        option_chains=("NIFTY", "INFY"),
        option_expiries=3,
        option_strikes=24,
        option_mode="full",
        batch_rows=7,
        batch_ms=8,
        queue_max_rows=9,
        db_retry_max_s=2.5,
        journal_max_bytes=10,
        journal_segment_bytes=11,
        rollup_interval_s=0.5,
        stall_s=2.5,
        feed_read_pause_ms=7.5,
        simulator_rate=12,
        simulator_seed=13,
        spike_detector=True,
        spike_window=24,
        spike_z=4.5,
        api_host="::1",
        api_port=14,
        api_workers=15,
        api_key=Secret("key-5678"),
        api_allowed_hosts=("api.example",),
        stream_max_symbols=21,
        stream_max_clients=22,
        stream_queue_max=23,
        stream_queue_max_bytes=2048,
        stream_deflate=True,
        log_level="DEBUG",
        log_dir=Path("/var/log/tickvault"),
        schedule_enabled=False,
        preopen_at=time(8, 5),
        postclose_at=time(16, 10),
        schedule_step_attempts=16,
        schedule_retry_initial_s=1.5,
        schedule_retry_max_s=17,
        schedule_catch_up_days=18,
        ticks_retention_days=19,
        bars_retention_days=20,
        archive_ticks=False,
        archive_url="s3://market-data/tv",
        min_free_gb=0.25,
        audit_after_close=False,
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("8:30pm", "TICKVAULT_PREOPEN_AT: "),
        ("08:30+05:30", "TICKVAULT_PREOPEN_AT: give the time of day in IST without an offset"),
    ],
)
def test_a_schedule_time_is_an_ist_time_of_day(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings.from_env({"TICKVAULT_PREOPEN_AT": value})


def test_a_retention_shorter_than_the_bars_refresh_window_is_refused(workdir: Path) -> None:
    with pytest.raises(ValueError, match="TICKVAULT_TICKS_RETENTION_DAYS: retention must be 0"):
        Settings.from_env({"TICKVAULT_TICKS_RETENTION_DAYS": "3"})


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1", "most"])
def test_the_share_a_refresh_may_remove_is_above_0_and_at_most_1(value: str) -> None:
    with pytest.raises(ValueError, match="TICKVAULT_INSTRUMENTS_MAX_REMOVED_SHARE"):
        Settings.from_env({"TICKVAULT_INSTRUMENTS_MAX_REMOVED_SHARE": value})
    assert Settings.from_env({}).instruments_max_removed_share == 0.2


@pytest.mark.parametrize("variable_name", ["UPSTOX_ACCESS_TOKEN", "TICKVAULT_API_KEY"])
@pytest.mark.parametrize("value", ["t", "abc1234"])
def test_a_token_or_key_too_short_to_be_real_is_refused_unquoted(
    variable_name: str, value: str
) -> None:
    """Masked in every log line, a one-letter secret would mask every such letter: no real
    token or key is that short, so the setting is refused, its value never repeated."""
    with pytest.raises(ValueError, match="too short") as refused:
        Settings.from_env({variable_name: value})
    message = str(refused.value)
    assert message == (
        f"{variable_name}: too short to be a real one ({len(value)} characters, at least 8);"
        " check the value"
    )
    assert "abc1234" not in message
    assert Settings.from_env({variable_name: "abcd1234"})


def test_the_configuration_doc_lists_every_variable() -> None:
    listed = set(re.findall(r"^\| `([A-Z_]+)` \|", CONFIGURATION_DOC.read_text(), re.MULTILINE))
    assert set(VARIABLES) <= listed


def test_a_dotenv_file_is_read(workdir: Path) -> None:
    (workdir / ".env").write_text(
        "# docker compose's variables sit in the same file\n"
        "POSTGRES_PASSWORD=not-ours\n"
        "TICKVAULT_BATCH_ROWS=1234\n"
        "UPSTOX_ACCESS_TOKEN=from-the-file\n"
        "TICKVAULT_INDEX_KEYS=NSE_INDEX|Nifty 50, NSE_INDEX|Nifty IT\n"
        "TICKVAULT_API_KEY=\n"
    )
    settings = Settings.from_env()
    assert settings.batch_rows == 1234
    assert settings.upstox_access_token == "from-the-file"
    assert settings.index_keys == ("NSE_INDEX|Nifty 50", "NSE_INDEX|Nifty IT")
    assert settings.api_key == ""  # empty counts as unset
    assert settings.batch_ms == Settings().batch_ms


def test_the_environment_wins_over_the_dotenv_file(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / ".env").write_text("TICKVAULT_BATCH_ROWS=1234\nTICKVAULT_BATCH_MS=50\n")
    monkeypatch.setenv("TICKVAULT_BATCH_ROWS", "99")
    settings = Settings.from_env()
    assert settings.batch_rows == 99
    assert settings.batch_ms == 50


def test_an_empty_variable_means_the_default_whatever_the_file_says(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / ".env").write_text("UPSTOX_ACCESS_TOKEN=from-the-file\nTICKVAULT_BATCH_MS=50\n")
    monkeypatch.setenv("UPSTOX_ACCESS_TOKEN", "")
    monkeypatch.setenv("TICKVAULT_BATCH_MS", "")
    settings = Settings.from_env()
    assert settings.upstox_access_token == ""  # the simulator
    assert settings.batch_ms == Settings().batch_ms


def test_overrides_in_code_win_over_both(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / ".env").write_text("TICKVAULT_DATA_DIR=/from/file\n")
    monkeypatch.setenv("TICKVAULT_API_HOST", "0.0.0.0")
    settings = Settings.from_env(data_dir=workdir)
    assert settings.data_dir == workdir
    assert settings.api_host == "0.0.0.0"
    assert settings.api_allowed_hosts == ("127.0.0.1", "localhost", "[::1]", "0.0.0.0")


def test_settings_built_in_code_read_nothing(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / ".env").write_text("UPSTOX_ACCESS_TOKEN=from-the-file\n")
    monkeypatch.setenv("TICKVAULT_BATCH_ROWS", "99")
    settings = Settings(simulator_rate=100)
    assert settings.upstox_access_token == ""
    assert settings.batch_rows == 20_000
    assert settings.simulator_rate == 100


def test_an_explicit_environ_ignores_the_process_environment(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / ".env").write_text("TICKVAULT_BATCH_ROWS=1234\n")
    monkeypatch.setenv("TICKVAULT_BATCH_MS", "99")
    assert Settings.from_env({}) == Settings()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TICKVAULT_BATCH_ROWS", "lots", "TICKVAULT_BATCH_ROWS must be a whole number, got 'lots'"),
        ("TICKVAULT_PG_PORT", "5.5", "TICKVAULT_PG_PORT must be a whole number"),
        ("TICKVAULT_ROLLUP_INTERVAL_S", "soon", "TICKVAULT_ROLLUP_INTERVAL_S must be a number"),
        ("TICKVAULT_MODE_LIMITS", "full=2000", "is not of the form mode:single/combined"),
        ("TICKVAULT_MODE_LIMITS", "full:2000", "TICKVAULT_MODE_LIMITS: item 'full:2000' is not"),
        ("TICKVAULT_OPTION_MODE", "greeks", "TICKVAULT_OPTION_MODE: .*'option_greeks'"),
        ("TICKVAULT_OPTION_STRIKES", "0", "TICKVAULT_OPTION_STRIKES"),
        ("TICKVAULT_FEED_READ_PAUSE_MS", "-1", "TICKVAULT_FEED_READ_PAUSE_MS"),
        ("TICKVAULT_FEED_READ_PAUSE_MS", "1000", "TICKVAULT_FEED_READ_PAUSE_MS"),
    ],
)
def test_a_bad_value_names_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        Settings.from_env({name: value})
    assert "\n" not in str(raised.value)


def test_a_bad_value_in_the_dotenv_file_names_the_variable(workdir: Path) -> None:
    (workdir / ".env").write_text("TICKVAULT_API_PORT=eighty\n")
    with pytest.raises(
        ValueError, match=r"^TICKVAULT_API_PORT must be a whole number, got 'eighty'$"
    ):
        Settings.from_env()


def test_every_bad_value_is_named_on_one_line() -> None:
    both = "TICKVAULT_BATCH_ROWS must be a whole number, got 'x'; TICKVAULT_BATCH_MS must be"
    with pytest.raises(ValueError, match=both) as raised:
        Settings.from_env({"TICKVAULT_BATCH_ROWS": "x", "TICKVAULT_BATCH_MS": "y"})
    assert "\n" not in str(raised.value)


def test_option_chains_none_follows_none() -> None:
    assert Settings.from_env({"TICKVAULT_OPTION_CHAINS": "none"}).option_chains == ()
    assert Settings.from_env({"TICKVAULT_OPTION_CHAINS": ""}).option_chains == (
        "NIFTY",
        "BANKNIFTY",
    )


def test_mode_limits_override_only_the_modes_named() -> None:
    settings = Settings.from_env({"TICKVAULT_MODE_LIMITS": "full:10/5, ltpc:20/8"})
    assert settings.mode_limits["full"] == (10, 5)
    assert settings.mode_limits["ltpc"] == (20, 8)
    assert settings.mode_limits["option_greeks"] == DEFAULT_MODE_LIMITS["option_greeks"]


def test_allowed_hosts_are_configured_or_loopback_and_the_api_host() -> None:
    assert Settings(api_host="::").api_allowed_hosts == ("127.0.0.1", "localhost", "[::1]", "[::]")
    assert Settings(api_host="localhost").api_allowed_hosts == ("127.0.0.1", "localhost", "[::1]")
    configured = Settings.from_env({"TICKVAULT_API_ALLOWED_HOSTS": " api.example , *.lan"})
    assert configured.api_allowed_hosts == ("api.example", "*.lan")


def test_a_copy_with_changes_is_still_settings() -> None:
    """The ingest hands the feed client a copy pointed at the simulator."""
    settings = Settings.from_env({"TICKVAULT_BATCH_ROWS": "7"})
    copy = dataclasses.replace(settings, upstox_api_base="http://127.0.0.1:1", api_key="k")
    assert copy.batch_rows == 7
    assert copy.upstox_api_base == "http://127.0.0.1:1"
    assert isinstance(copy.api_key, Secret)


def test_the_secrets_never_show_in_a_repr() -> None:
    settings = Settings.from_env(
        {
            "UPSTOX_ACCESS_TOKEN": "eyJhbGciOi-secret",
            "TICKVAULT_API_KEY": "key-secret",
            "UPSTOX_CLIENT_SECRET": "client-secret",
        }
    )
    assert settings.upstox_access_token == "eyJhbGciOi-secret"
    assert settings.api_key == "key-secret"
    assert settings.upstox_client_secret == "client-secret"
    assert "secret" not in repr(settings)
    assert "secret" not in f"{settings=}"
    assert "secret" not in repr(settings.upstox_access_token)
    assert "secret" not in repr(settings.api_key)
    assert repr(Secret("")) == "Secret('')"


def test_a_secret_given_in_code_as_a_plain_string_is_hidden_too() -> None:
    settings = Settings(
        upstox_access_token="plain-secret", api_key="other-secret", upstox_client_secret="c-secret"
    )
    assert isinstance(settings.upstox_client_secret, Secret)
    assert "secret" not in repr(settings)
    assert isinstance(settings.upstox_access_token, Secret)
    assert isinstance(settings.api_key, Secret)
    assert "secret" not in repr((settings.upstox_access_token, settings.api_key))


def test_a_log_dir_from_the_dotenv_file(workdir: Path) -> None:
    (workdir / ".env").write_text("TICKVAULT_LOG_DIR=/srv/tickvault/logs\n")
    assert Settings.from_env().log_dir == Path("/srv/tickvault/logs")


@pytest.mark.parametrize(
    ("mode", "who"),
    [(0o644, "its group and other users"), (0o640, "its group"), (0o604, "other users")],
)
def test_a_dotenv_others_may_read_is_one_warning_naming_the_fix(
    workdir: Path, caplog: pytest.LogCaptureFixture, mode: int, who: str
) -> None:
    (workdir / ".env").write_text("UPSTOX_ACCESS_TOKEN=eyJ-secret\n")
    (workdir / ".env").chmod(mode)
    with caplog.at_level(logging.WARNING):
        warning = check_dotenv()
    assert warning is not None
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", warning)]
    assert "chmod 600 .env" in warning
    assert f"open to {who} (mode {mode:04o})" in warning
    assert "eyJ-secret" not in caplog.text


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_dotenv_only_its_owner_may_read_gives_no_warning(
    workdir: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    (workdir / ".env").write_text("UPSTOX_ACCESS_TOKEN=eyJ-secret\n")
    (workdir / ".env").chmod(mode)
    with caplog.at_level(logging.DEBUG):
        assert check_dotenv() is None
    assert not caplog.records


def test_no_dotenv_gives_no_warning(workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        assert check_dotenv() is None
    assert not caplog.records


def test_the_archive_goes_to_object_storage_when_an_s3_url_is_set() -> None:
    assert Settings.from_env({}).archive_root == Path(".tickvault/archive")
    settings = Settings.from_env({"TICKVAULT_ARCHIVE_URL": "s3://market-data/tickvault"})
    assert settings.archive_root == "s3://market-data/tickvault"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("s3://AKIAEXAMPLE:wJalrXUtnFEMI-secret@market-data/x", "must not carry credentials"),
        ("https://market-data.example.com/x", "must be an s3://bucket/prefix URL"),
        ("/srv/archive", "must be an s3://bucket/prefix URL"),
        ("s3:///x", "must name a bucket"),
        ("s3://market-data/x?endpoint_override=minio:9000", "AWS_ENDPOINT_URL"),
    ],
)
def test_a_bad_archive_url_is_refused_without_repeating_it(value: str, message: str) -> None:
    """The URL may hold a secret: the one line names the variable and what to do, not it."""
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        Settings.from_env({"TICKVAULT_ARCHIVE_URL": value})
    assert str(refused.value).startswith("TICKVAULT_ARCHIVE_URL: ")
    assert "secret" not in str(refused.value)
    assert value not in str(refused.value)
