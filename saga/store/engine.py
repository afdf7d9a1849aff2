"""The async SQLAlchemy engine, mapped from :class:`~saga.settings.Settings`.

Pool size, overflow, the wait for a free connection, the connect timeout and the recycling
of idle connections come from the settings. Each connection starts with the configured
``statement_timeout`` so a transaction pays no extra round trip for it. Queries are logged
through structlog when ``DATABASE_LOG_QUERIES`` is on (the development default), and every
query slower than ``DATABASE_SLOW_QUERY_THRESHOLD`` is logged as ``slow_query``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import event
from sqlalchemy.engine import Connection, ExecutionContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from saga import metrics
from saga.errors import SettingsError
from saga.settings import Settings, to_async_url

log = structlog.get_logger("saga.store")

_STARTED_AT = "saga_query_started_at"
_MAX_LOGGED_STATEMENT = 500


@dataclass
class QueryRecorder:
    """Counts every query, logs each one when asked (development), and logs and counts
    the slow ones. Both kinds of unit of work report to it; the processes export its
    counters as metrics."""

    threshold_ms: float
    log_queries: bool = False
    queries: int = 0
    slow_queries: int = 0
    slowest_ms: float = 0.0
    slow_by_statement: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> QueryRecorder:
        return cls(
            threshold_ms=settings.database_slow_query_threshold,
            log_queries=settings.logs_queries,
        )

    def record(self, statement: str, elapsed_ms: float) -> None:
        self.queries += 1
        if self.log_queries:
            log.debug("query", statement=_shorten(statement), duration_ms=round(elapsed_ms, 2))
        if elapsed_ms < self.threshold_ms:
            return
        key = _shorten(statement)
        self.slow_queries += 1
        metrics.DB_SLOW_QUERIES.inc()
        self.slowest_ms = max(self.slowest_ms, elapsed_ms)
        self.slow_by_statement[key] = self.slow_by_statement.get(key, 0) + 1
        log.warning(
            "slow_query",
            statement=key,
            duration_ms=round(elapsed_ms, 2),
            threshold_ms=self.threshold_ms,
        )


def create_engine(
    settings: Settings,
    *,
    url: str | None = None,
    application_name: str = "austa-saga",
    recorder: QueryRecorder | None = None,
    server_settings: Mapping[str, str] | None = None,
) -> AsyncEngine:
    """An :class:`AsyncEngine` on ``url`` (default: ``settings.database_url``);
    ``server_settings`` are set on each of its connections when it opens, beside the
    application name and the statement timeout."""
    target = url or settings.database_url
    if target is None:
        raise SettingsError({"DATABASE_URL": "expected a PostgreSQL URL; it is not set"})
    engine = create_async_engine(
        to_async_url(target),
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_connection_timeout / 1000,
        pool_recycle=max(1, settings.database_idle_timeout // 1000),
        pool_pre_ping=False,
        connect_args={
            "timeout": settings.database_connection_timeout / 1000,
            "command_timeout": None,
            "server_settings": {
                "application_name": application_name,
                "statement_timeout": str(settings.database_statement_timeout),
                **(server_settings or {}),
            },
        },
    )
    _install_query_events(engine, recorder or QueryRecorder.from_settings(settings))
    return engine


def _install_query_events(engine: AsyncEngine, recorder: QueryRecorder) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _before(
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        conn.info[_STARTED_AT] = time.perf_counter()

    @event.listens_for(sync_engine, "after_cursor_execute")
    def _after(
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        started = conn.info.pop(_STARTED_AT, None)
        if started is not None:
            recorder.record(statement, (time.perf_counter() - started) * 1000)


def _shorten(statement: str) -> str:
    flat = " ".join(statement.split())
    if len(flat) <= _MAX_LOGGED_STATEMENT:
        return flat
    return flat[:_MAX_LOGGED_STATEMENT] + "…"
