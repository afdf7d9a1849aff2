"""The engine factory maps the settings onto the pool and reports slow queries."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from structlog.testing import capture_logs

from saga.errors import DatabaseUnavailable
from saga.settings import Settings
from saga.store import Database
from saga.store.errors import database_errors

pytestmark = pytest.mark.integration


def tuned(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update=changes)


async def test_pool_follows_the_settings(settings: Settings, migrated_database_url: str) -> None:
    custom = tuned(
        settings,
        database_pool_size=3,
        database_max_overflow=1,
        database_connection_timeout=1500,
        database_idle_timeout=45000,
    )
    db = Database.from_settings(custom, url=migrated_database_url)
    try:
        pool = db.engine.pool
        assert pool.size() == 3  # type: ignore[attr-defined]
        assert pool._max_overflow == 1  # type: ignore[attr-defined]
        assert pool._timeout == 1.5  # type: ignore[attr-defined]
        assert pool._recycle == 45
        name = await db.run(lambda c: c.scalar(text("SHOW application_name")))
        assert name == "austa-saga"
    finally:
        await db.dispose()


async def test_slow_queries_are_logged_and_counted(
    settings: Settings, migrated_database_url: str
) -> None:
    db = Database.from_settings(
        tuned(settings, database_slow_query_threshold=20, database_log_queries=False),
        url=migrated_database_url,
    )
    slow_before = REGISTRY.get_sample_value("saga_db_slow_queries_total") or 0.0
    try:
        with capture_logs() as logs:
            await db.run(lambda c: c.execute(text("SELECT pg_sleep(0.05)")))
            await db.run(lambda c: c.execute(text("SELECT 1")))
    finally:
        await db.dispose()
    slow = [entry for entry in logs if entry["event"] == "slow_query"]
    assert len(slow) == 1
    assert slow[0]["log_level"] == "warning"
    assert "pg_sleep" in slow[0]["statement"]
    assert slow[0]["duration_ms"] >= 20
    assert db.queries.slow_queries == 1
    assert REGISTRY.get_sample_value("saga_db_slow_queries_total") == slow_before + 1
    assert db.queries.queries >= 2


async def test_development_logs_every_query(settings: Settings, migrated_database_url: str) -> None:
    db = Database.from_settings(
        tuned(settings, database_log_queries=True), url=migrated_database_url
    )
    try:
        with capture_logs() as logs:
            await db.run(lambda c: c.execute(text("SELECT 42")))
    finally:
        await db.dispose()
    assert any(e["event"] == "query" and "SELECT 42" in e["statement"] for e in logs)


async def test_unreachable_server_is_reported_as_unavailable(settings: Settings) -> None:
    db = Database.from_settings(
        tuned(settings, database_connection_timeout=500),
        url="postgresql://postgres@127.0.0.1:1/nowhere",
    )
    try:
        with pytest.raises(DatabaseUnavailable), database_errors():
            async with db.engine.connect():
                pass
    finally:
        await db.dispose()
