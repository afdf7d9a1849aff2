"""The engine's settings: one typed object, read from the environment in one place.

:func:`load_settings` reads ``APP_ENV`` (``development`` by default), then the checked-in
template ``.env.<APP_ENV>`` from the working directory, then the process environment, which
wins. ``${VAR}`` references inside the files are expanded from the environment, so
production keeps its secrets out of the repository. A malformed value raises
:class:`~saga.errors.SettingsError` naming every bad variable and what it expected.

Nothing here runs at import time; callers pass the resulting object explicitly.
"""

from __future__ import annotations

import math
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from saga.errors import SettingsError


class AppEnv(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class RetentionMode(StrEnum):
    ARCHIVE = "archive"
    DELETE = "delete"


class PartitionExpiry(StrEnum):
    """What becomes of a monthly partition past its table's retention."""

    DETACH = "detach"
    """Detached: kept as a table of its own for an operator to archive or drop."""
    DROP = "drop"
    """Dropped with its rows."""


class LogFormat(StrEnum):
    CONSOLE = "console"
    JSON = "json"


class Idempotence(StrEnum):
    """``KAFKA_ENABLE_IDEMPOTENCE``: whether producers ask the broker for a producer id so
    that a send retried inside the client is never written twice."""

    AUTO = "auto"
    """Idempotent when the broker hands out producer ids (Apache Kafka), not otherwise."""
    TRUE = "true"
    """Idempotent, or the producer refuses to start."""
    FALSE = "false"
    """Never idempotent."""


_ASYNC_DRIVER = "postgresql+asyncpg"
_ACCEPTED_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")

Milliseconds = Annotated[int, Field(gt=0)]

_SECRET_FIELDS = frozenset({"web_secret_key"})
"""Settings whose values no error message repeats."""


class Settings(BaseSettings):
    """Everything the engine's processes are configured with. Field names are the
    upper-cased environment variable names."""

    model_config = SettingsConfigDict(
        case_sensitive=False,
        extra="ignore",
        env_file_encoding="utf-8",
        frozen=True,
    )

    def __init__(self, **values: Any) -> None:
        # Built directly (tests, embedding code) as well as by load_settings: either way a
        # bad value is a SettingsError naming the variable, not pydantic's error.
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from None

    app_env: AppEnv = Field(
        default=AppEnv.DEVELOPMENT, description="one of development, test, production"
    )

    database_url: str | None = Field(
        default=None,
        description=(
            "a PostgreSQL URL such as postgresql://user:password@host:5432/dbname; "
            "unset means the embedded server (demo and tests only)"
        ),
    )
    database_pool_size: int = Field(default=5, ge=1, le=500, description="an integer 1..500")
    database_max_overflow: int = Field(
        default=0, ge=0, le=500, description="an integer 0..500 (connections above the pool)"
    )
    database_connection_timeout: Milliseconds = Field(
        default=5000, description="milliseconds > 0 to wait for a connection"
    )
    database_idle_timeout: Milliseconds = Field(
        default=30000, description="milliseconds > 0 after which an idle connection is recycled"
    )
    database_statement_timeout: Milliseconds = Field(
        default=5000, description="milliseconds > 0 a statement may run"
    )
    database_slow_query_threshold: Milliseconds = Field(
        default=200, description="milliseconds > 0 above which a query is logged as slow"
    )
    database_slow_unit_threshold: Milliseconds = Field(
        default=500,
        description=(
            "milliseconds > 0 above which a whole unit of work (the wait for a "
            "connection and every retry included) is logged as slow_unit and counted"
        ),
    )
    database_log_queries: bool | None = Field(
        default=None,
        description="true or false; unset logs every query only in development",
    )
    database_retry_attempts: int = Field(
        default=8, ge=1, le=100, description="an integer 1..100 (attempts per unit of work)"
    )
    database_retry_base_delay: Milliseconds = Field(
        default=5, description="milliseconds > 0 before the first retry"
    )
    database_retry_max_delay: Milliseconds = Field(
        default=1000, description="milliseconds > 0, the longest wait between retries"
    )

    kafka_bootstrap_servers: str | None = Field(
        default=None,
        description=(
            "a comma-separated host:port list; unset means the embedded broker "
            "(demo and tests only)"
        ),
    )
    kafka_client_id: str = Field(default="austa-saga", min_length=1, description="a non-empty id")
    kafka_topic_prefix: str = Field(
        default="austa.saga",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="letters, digits, '.', '_' or '-'",
    )
    kafka_topic_partitions: int = Field(default=8, ge=1, le=1024, description="an integer 1..1024")
    kafka_topic_replication_factor: int = Field(
        default=1,
        ge=1,
        le=16,
        description="an integer 1..16, at most the number of brokers (3 is usual on Kafka)",
    )
    kafka_enable_idempotence: Idempotence = Field(
        default=Idempotence.AUTO,
        description=(
            "auto, true or false: auto turns idempotence on when the broker supports it, "
            "true refuses to start a producer when it does not"
        ),
    )
    participant_shared_transactions: bool = Field(
        default=True,
        description=(
            "true or false: a participant's commands of one isolation level in hand "
            "together share one transaction, each in a savepoint"
        ),
    )
    kafka_fetch_max_wait_ms: int = Field(
        default=10, ge=1, le=60000, description="an integer 1..60000 (milliseconds)"
    )
    # At most 30 s: a fetch that waits at the broker longer than aiokafka's request
    # timeout (40 s) would fail as timed out.
    kafka_idle_poll_ms: int = Field(
        default=500,
        ge=0,
        le=30000,
        description=(
            "an integer 0..30000 (milliseconds): the longest fetch wait of an idle "
            "consumer; 0 keeps every fetch at KAFKA_FETCH_MAX_WAIT_MS"
        ),
    )
    kafka_session_timeout_ms: int = Field(
        default=6000,
        ge=1000,
        le=300000,
        description="an integer 1000..300000 (milliseconds); Kafka's default floor is 6000",
    )
    kafka_heartbeat_interval_ms: int = Field(
        default=2000, ge=100, le=100000, description="an integer 100..100000 (milliseconds)"
    )
    kafka_max_message_bytes: int = Field(
        default=1_000_000, ge=1024, description="an integer >= 1024 (bytes)"
    )

    worker_schedule: str = Field(
        default="",
        description=(
            "comma-separated job=SECONDS[/BATCH] overrides of the worker's schedule, "
            "e.g. step_timeouts=0.5/200,saga_retention=600"
        ),
    )
    worker_disabled_jobs: str = Field(
        default="",
        pattern=r"^[a-z_, ]*$",
        description="comma-separated names of worker jobs not to run",
    )
    worker_max_batches_per_run: int = Field(
        default=20,
        ge=1,
        le=10000,
        description="an integer 1..10000: full batches a job runs back to back before it yields",
    )
    retention_inbox_days: float = Field(
        default=7.0, gt=0, description="days > 0 a journey keeps a finished saga's inbox rows"
    )
    retention_outbox_days: float = Field(
        default=7.0, gt=0, description="days > 0 published outbox rows are kept"
    )
    retention_saga_days: float = Field(
        default=30.0, gt=0, description="days > 0 a finished saga and its step log are kept"
    )
    retention_saga_mode: RetentionMode = Field(
        default=RetentionMode.ARCHIVE,
        description="archive (move to shared.saga_*_archive) or delete",
    )
    retention_soft_deleted_days: float = Field(
        default=30.0, gt=0, description="days > 0 a soft-deleted row is kept before it is purged"
    )
    partitions_months_ahead: int = Field(
        default=3, ge=1, le=36, description="an integer 1..36: monthly partitions created ahead"
    )
    # The health journey's: months of raw readings kept in health_journey.health_metric.
    health_metrics_retention_months: int | None = Field(
        default=None,
        ge=1,
        le=1200,
        description="an integer 1..1200 of months; unset: every reading is kept",
    )
    health_metrics_retention_mode: PartitionExpiry = Field(
        default=PartitionExpiry.DETACH,
        description="detach (keep expired months as tables of their own) or drop",
    )
    outbox_republish_after_seconds: float = Field(
        default=60.0,
        gt=0,
        description="seconds > 0 an outbox row may stay unpublished before the worker sends it",
    )
    # The plan journey's (issue 18): the engine's Settings is the one typed settings
    # object the processes read, so the journey's one setting lives here too.
    claim_review_threshold_cents: int = Field(
        default=500_000,
        ge=0,
        description=(
            "an integer >= 0 of cents: submit_claim waits for a plan auditor's "
            "claim_reviewed above it"
        ),
    )
    retry_alert_threshold: int = Field(
        default=50,
        ge=1,
        description=(
            "an integer >= 1: serialization and deadlock retries of one step within "
            "RETRY_ALERT_WINDOW_SECONDS that raise an alert"
        ),
    )
    retry_alert_window_seconds: float = Field(
        default=300.0, gt=0, description="seconds > 0 the retry monitor looks back"
    )
    vacuum_dead_tuples_threshold: int = Field(
        default=10_000,
        ge=1,
        description=(
            "an integer >= 1: dead tuples a churning table must have before the worker vacuums it"
        ),
    )
    vacuum_dead_tuples_percent: float = Field(
        default=20.0,
        ge=0,
        le=100,
        description=(
            "percent 0..100 of a churning table's tuples that must be dead before the "
            "worker vacuums it"
        ),
    )
    vacuum_behind_seconds: float = Field(
        default=3600.0,
        gt=0,
        description=(
            "seconds > 0 without any vacuum of a churning table past the dead-tuple "
            "thresholds after which autovacuum counts as behind and the worker vacuums it"
        ),
    )
    index_bloat_threshold_percent: float = Field(
        default=50.0,
        gt=0,
        le=100,
        description=(
            "percent > 0, at most 100, of estimated wasted space at which a churning "
            "table's index is reported as bloated"
        ),
    )
    reindex_concurrently_enabled: bool = Field(
        default=False,
        description="true or false: the worker rebuilds bloated indexes with REINDEX CONCURRENTLY",
    )
    table_maintenance_timeout_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="seconds > 0 one VACUUM or REINDEX of the worker may run",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="a TCP port 0..65535 for /metrics, /live and /ready; unset: none",
    )
    broker_unreachable_seconds: float = Field(
        default=60.0,
        ge=0,
        le=86400,
        description=(
            "seconds 0..86400 the broker may stay unreachable before /ready answers 503; "
            "0: /ready does not ask"
        ),
    )
    shutdown_timeout_seconds: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="seconds 1..3600 a stopping process has to finish what it holds",
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        description="an OTLP/HTTP collector's base URL (spans go to <it>/v1/traces); "
        "set: `saga run` processes export saga spans (needs the otel extra); unset: none",
    )
    otel_service_name: str | None = Field(
        default=None,
        description="the service name on exported spans; unset: saga-coordinator, "
        "saga-<journey>, saga-worker or saga by process",
    )

    web_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="a host name or address for `saga web` to listen on",
    )
    web_port: int = Field(
        default=8088, ge=1, le=65535, description="a TCP port 1..65535 for `saga web`"
    )
    # Signs the console's session cookies. Kept out of reprs and of error messages.
    web_secret_key: str | None = Field(
        default=None,
        min_length=32,
        repr=False,
        description=(
            "a random string of at least 32 characters, e.g. from "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        ),
    )
    web_session_hours: float = Field(
        default=8.0,
        gt=0,
        le=24 * 7,
        description="hours > 0, at most 168, a console session lasts after sign-in",
    )
    web_login_attempts: int = Field(
        default=10,
        ge=1,
        description="an integer >= 1: failed console sign-ins per minute per client",
    )
    web_token_days: int = Field(
        default=90,
        ge=1,
        le=366,
        description="an integer 1..366: days a new console token lasts by default",
    )
    web_cookie_secure: bool | None = Field(
        default=None,
        description="true or false; unset means true in production (cookies over HTTPS only)",
    )

    log_level: str = Field(
        default="INFO",
        pattern=r"(?i)^(debug|info|warning|error|critical)$",
        description="one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
    )
    log_format: LogFormat | None = Field(
        default=None, description="console or json; unset means json in production"
    )
    log_sensitive_fields: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9_, -]*$",
        description=(
            "comma-separated field names whose values are masked in logs and in `saga show`, "
            "beside the defaults and those the journey services declare"
        ),
    )

    @field_validator(
        "database_url",
        "kafka_bootstrap_servers",
        "metrics_port",
        "health_metrics_retention_months",
        "otel_exporter_otlp_endpoint",
        "otel_service_name",
        "web_secret_key",
        "web_cookie_secure",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("worker_schedule")
    @classmethod
    def _check_worker_schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value

    @field_validator("otel_exporter_otlp_endpoint")
    @classmethod
    def _check_otlp_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, sep, rest = value.strip().partition("://")
        if not sep or scheme not in ("http", "https") or not rest.strip("/"):
            raise ValueError("must be an http:// or https:// URL such as http://collector:4318")
        return value.strip()

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, sep, _ = value.partition("://")
        if not sep or scheme not in _ACCEPTED_SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(_ACCEPTED_SCHEMES)}")
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if "${" in value:
            raise ValueError("a ${...} reference in the URL was not set in the environment")
        if not url.database:
            raise ValueError("the URL names no database (…/dbname)")
        if not url.host and "host" not in url.query:
            raise ValueError("the URL names no host (…@host:port/… or ?host=/socket/dir)")
        return value

    @field_validator("kafka_enable_idempotence", mode="before")
    @classmethod
    def _idempotence_any_case(cls, value: Any) -> Any:
        if isinstance(value, bool):  # built in code rather than read from the environment
            return Idempotence.TRUE if value else Idempotence.FALSE
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{server.strip()!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _production_needs_real_services(self) -> Settings:
        # The embedded server and broker are for the demo and the tests only.
        if self.app_env is AppEnv.PRODUCTION:
            missing = [
                name
                for name, value in (
                    ("DATABASE_URL", self.database_url),
                    ("KAFKA_BOOTSTRAP_SERVERS", self.kafka_bootstrap_servers),
                )
                if value is None
            ]
            if missing:
                raise ValueError(f"{' and '.join(missing)} must be set when APP_ENV=production")
        return self

    @property
    def async_database_url(self) -> str | None:
        """``database_url`` with the asyncpg driver named, as SQLAlchemy wants it."""
        return to_async_url(self.database_url) if self.database_url else None

    @property
    def logs_queries(self) -> bool:
        if self.database_log_queries is not None:
            return self.database_log_queries
        return self.app_env is AppEnv.DEVELOPMENT

    @property
    def effective_log_format(self) -> LogFormat:
        if self.log_format is not None:
            return self.log_format
        return LogFormat.JSON if self.app_env is AppEnv.PRODUCTION else LogFormat.CONSOLE

    @property
    def effective_web_cookie_secure(self) -> bool:
        if self.web_cookie_secure is not None:
            return self.web_cookie_secure
        return self.app_env is AppEnv.PRODUCTION

    def web_session_key(self) -> str | None:
        """``WEB_SECRET_KEY``; None in development and test when it is unset (the console
        then signs with a random key of its own process, so a restart signs everyone
        out). Unset in production raises :class:`~saga.errors.SettingsError`: checked
        here, where the console starts, rather than for every process, since only the
        console needs it."""
        if self.web_secret_key is None and self.app_env is AppEnv.PRODUCTION:
            raise SettingsError(
                {
                    "WEB_SECRET_KEY": "must be set when APP_ENV=production: it signs the "
                    "console's session cookies, which must outlive a restart and be the "
                    "same on every console process"
                }
            )
        return self.web_secret_key

    @property
    def sensitive_fields(self) -> tuple[str, ...]:
        """``LOG_SENSITIVE_FIELDS`` as a tuple of names."""
        return tuple(filter(None, (name.strip() for name in self.log_sensitive_fields.split(","))))

    def environment(self) -> dict[str, str]:
        """These settings as the environment variables that load them again
        (``DATABASE_POOL_SIZE=8``, ...), for a process started to work beside this one.
        Settings that are unset have no variable."""
        found: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool):
                found[name.upper()] = "true" if value else "false"
            elif isinstance(value, StrEnum):
                found[name.upper()] = value.value
            else:
                found[name.upper()] = str(value)
        return found


def parse_schedule(text: str) -> dict[str, tuple[float, int | None]]:
    """``"step_timeouts=0.5/200, saga_retention=600"`` → ``{job: (seconds, batch or None)}``;
    a malformed entry raises ValueError naming it."""
    schedule: dict[str, tuple[float, int | None]] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, sep, timing = (piece.strip() for piece in entry.partition("="))
        seconds, slash, batch = (piece.strip() for piece in timing.partition("/"))
        try:
            interval = float(seconds)
            size = int(batch) if slash else None
        except ValueError:
            interval, size = -1.0, None
        if (
            not sep
            or not name.replace("_", "").isalnum()
            or not math.isfinite(interval)
            or interval <= 0
            or (size is not None and size < 1)
        ):
            raise ValueError(f"{entry!r} is not job=SECONDS or job=SECONDS/BATCH (both > 0)")
        schedule[name] = (interval, size)
    return schedule


def to_async_url(url: str) -> str:
    """Name the asyncpg driver in a PostgreSQL URL (``postgresql://`` → ``postgresql+asyncpg://``)."""
    _, _, rest = url.partition("://")
    return f"{_ASYNC_DRIVER}://{rest}"


def to_plain_url(url: str) -> str:
    """The libpq form of a URL (for asyncpg.connect, psql and pg_dump)."""
    _, _, rest = url.partition("://")
    return f"postgresql://{rest}"


def env_file_for(app_env: str, env_dir: Path) -> Path:
    return env_dir / f".env.{app_env}"


def load_settings(*, env_dir: Path | None = None, **overrides: Any) -> Settings:
    """Read the settings for ``APP_ENV`` from ``.env.<APP_ENV>`` in ``env_dir`` (the working
    directory by default) and from the environment, which wins; ``overrides`` win over both."""
    raw_env = os.environ.get("APP_ENV", AppEnv.DEVELOPMENT.value)
    try:
        app_env = AppEnv(raw_env.strip().lower())
    except ValueError:
        raise SettingsError(
            {"APP_ENV": f"expected one of development, test, production; got {raw_env!r}"}
        ) from None
    env_file = env_file_for(app_env.value, env_dir or Path.cwd())
    try:
        return Settings(
            _env_file=env_file if env_file.is_file() else None,
            **overrides,
        )
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> dict[str, str]:
    problems: dict[str, str] = {}
    for error in exc.errors():
        if not error["loc"]:
            # A rule across several variables: its message names them; the input is every
            # setting, secrets included, so it is not echoed.
            problems["APP_ENV"] = str(error["msg"]).removeprefix("Value error, ")
            continue
        field = str(error["loc"][0])
        info = Settings.model_fields.get(field)
        expected = info.description if info is not None and info.description else error["msg"]
        if field in _SECRET_FIELDS:
            problems[field.upper()] = f"expected {expected} ({error['msg']}; value not shown)"
            continue
        shown = error["input"]
        if isinstance(shown, str) and "://" in shown:
            shown = redact_url(shown)
        problems[field.upper()] = f"expected {expected}; got {shown!r} ({error['msg']})"
    return problems


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{location}"
