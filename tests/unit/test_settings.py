from __future__ import annotations

from pathlib import Path

import pytest

from saga.errors import SettingsError
from saga.settings import AppEnv, LogFormat, Settings, load_settings, to_async_url

SETTING_VARS = (
    "APP_ENV",
    "PARTICIPANT_SHARED_TRANSACTIONS",
    "DATABASE_URL",
    "DATABASE_POOL_SIZE",
    "DATABASE_CONNECTION_TIMEOUT",
    "DATABASE_IDLE_TIMEOUT",
    "KAFKA_BOOTSTRAP_SERVERS",
    "LOG_FORMAT",
    "DB_USER",
    "DB_PASSWORD",
    "DB_HOST",
    "DB_PORT",
    "DB_NAME",
)
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTING_VARS:
        monkeypatch.delenv(name, raising=False)


def test_defaults_without_files(tmp_path: Path) -> None:
    settings = load_settings(env_dir=tmp_path)
    assert settings.app_env is AppEnv.DEVELOPMENT
    assert settings.database_url is None
    assert settings.database_pool_size == 5
    assert settings.logs_queries is True
    assert settings.effective_log_format is LogFormat.CONSOLE


def test_participants_share_transactions_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings(env_dir=tmp_path).participant_shared_transactions is True
    monkeypatch.setenv("PARTICIPANT_SHARED_TRANSACTIONS", "false")
    assert load_settings(env_dir=tmp_path).participant_shared_transactions is False
    monkeypatch.setenv("PARTICIPANT_SHARED_TRANSACTIONS", "sometimes")
    with pytest.raises(SettingsError, match="PARTICIPANT_SHARED_TRANSACTIONS"):
        load_settings(env_dir=tmp_path)


def test_env_file_for_app_env_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env.test").write_text("DATABASE_POOL_SIZE=2\nDATABASE_CONNECTION_TIMEOUT=1000\n")
    monkeypatch.setenv("APP_ENV", "test")
    settings = load_settings(env_dir=tmp_path)
    assert settings.app_env is AppEnv.TEST
    assert settings.database_pool_size == 2
    assert settings.database_connection_timeout == 1000
    assert settings.logs_queries is False


def test_environment_wins_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env.development").write_text("DATABASE_POOL_SIZE=2\n")
    monkeypatch.setenv("DATABASE_POOL_SIZE", "9")
    assert load_settings(env_dir=tmp_path).database_pool_size == 9


@pytest.mark.parametrize(
    ("variable", "value", "expected_words"),
    [
        ("DATABASE_POOL_SIZE", "lots", "an integer 1..500"),
        ("DATABASE_POOL_SIZE", "0", "an integer 1..500"),
        ("DATABASE_CONNECTION_TIMEOUT", "-5", "milliseconds > 0"),
        ("DATABASE_IDLE_TIMEOUT", "soon", "milliseconds > 0"),
        ("DATABASE_URL", "mysql://x@h/db", "scheme must be one of"),
        ("DATABASE_URL", "postgresql://user@host", "names no database"),
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost", "is not host:port"),
        ("LOG_LEVEL", "loud", "one of DEBUG"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", "an http:// or https:// URL"),
    ],
)
def test_bad_value_names_the_variable_and_what_it_expected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected_words: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(env_dir=tmp_path)
    assert set(caught.value.problems) == {variable}
    assert expected_words in str(caught.value)
    assert repr(value) in str(caught.value)


def test_every_bad_variable_is_reported_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_POOL_SIZE", "x")
    monkeypatch.setenv("DATABASE_IDLE_TIMEOUT", "y")
    with pytest.raises(SettingsError) as caught:
        load_settings(env_dir=tmp_path)
    assert set(caught.value.problems) == {"DATABASE_POOL_SIZE", "DATABASE_IDLE_TIMEOUT"}


def test_unknown_app_env_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "staging")
    with pytest.raises(SettingsError, match="APP_ENV: expected one of development, test"):
        load_settings(env_dir=tmp_path)


def test_production_template_expands_secrets_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    for name, value in {
        "DB_USER": "care",
        "DB_PASSWORD": "s3cret",
        "DB_HOST": "db.internal",
        "DB_PORT": "5432",
        "DB_NAME": "austa",
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(env_dir=REPO_ROOT)
    assert settings.database_url == "postgresql://care:s3cret@db.internal:5432/austa"
    assert settings.database_pool_size == 20
    assert settings.effective_log_format is LogFormat.JSON


def test_production_without_its_secrets_stops_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        load_settings(env_dir=REPO_ROOT)


def test_production_requires_a_broker_without_echoing_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:hunter2@db:5432/austa")
    with pytest.raises(SettingsError, match="KAFKA_BOOTSTRAP_SERVERS must be set") as caught:
        load_settings(env_dir=tmp_path)
    assert "hunter2" not in str(caught.value)


def test_a_malformed_url_is_shown_without_its_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://care:hunter2@db:3306/austa")
    with pytest.raises(SettingsError) as caught:
        load_settings(env_dir=tmp_path)
    assert "hunter2" not in str(caught.value)
    assert "mysql://care:***@db:3306/austa" in str(caught.value)


def test_blank_url_means_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "  ")
    assert load_settings(env_dir=tmp_path).database_url is None


def test_socket_urls_are_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@/austa?host=/tmp/pg")
    settings = load_settings(env_dir=tmp_path)
    assert settings.async_database_url == "postgresql+asyncpg://postgres@/austa?host=/tmp/pg"


def test_async_url_names_the_driver() -> None:
    assert to_async_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"


def test_settings_are_immutable(tmp_path: Path) -> None:
    settings = load_settings(env_dir=tmp_path)
    with pytest.raises(ValueError, match="frozen"):
        settings.database_pool_size = 3  # type: ignore[misc]


def test_environment_loads_the_same_settings_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        app_env="test",
        database_url="postgresql://postgres@/austa?host=/tmp/pg",
        database_log_queries=False,
        kafka_bootstrap_servers="127.0.0.1:9092",
        kafka_topic_prefix="scene.1",
        retention_saga_mode="delete",
        outbox_republish_after_seconds=2.5,
        log_format="json",
        claim_review_threshold_cents=123,
    )
    environment = settings.environment()
    assert environment["DATABASE_LOG_QUERIES"] == "false"
    assert environment["LOG_FORMAT"] == "json"
    assert "METRICS_PORT" not in environment  # unset stays unset
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert load_settings(env_dir=tmp_path) == settings


def test_an_idle_fetch_wait_past_the_request_timeout_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings(env_dir=tmp_path).kafka_idle_poll_ms == 500
    monkeypatch.setenv("KAFKA_IDLE_POLL_MS", "0")
    assert load_settings(env_dir=tmp_path).kafka_idle_poll_ms == 0
    monkeypatch.setenv("KAFKA_IDLE_POLL_MS", "45000")
    with pytest.raises(SettingsError, match="KAFKA_IDLE_POLL_MS"):
        load_settings(env_dir=tmp_path)
