"""Alembic environment: async (asyncpg) online runs, plain SQL for offline review.

The database URL comes from ``config.attributes["database_url"]`` (set by ``saga db``) or,
for a bare ``alembic`` call, from the engine's settings (``DATABASE_URL``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from saga.settings import load_settings, to_async_url

config = context.config


def _database_url() -> str:
    url = config.attributes.get("database_url") or load_settings().database_url
    if not url:
        raise RuntimeError("DATABASE_URL is not set: say which database to migrate")
    return to_async_url(str(url))


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=None,
        # Each revision commits on its own, so a failure leaves the database at the last
        # good revision rather than rolling back every revision of the run.
        transaction_per_migration=True,
        version_table="alembic_version",
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(
        url=config.attributes.get("database_url") or "postgresql+asyncpg://",
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    # ``saga db`` passes a MigrationProgress: it names the revision a failure happened in.
    progress = config.attributes.get("progress")

    def applied(*, step: Any, **_: Any) -> None:
        if progress is not None:
            progress.at = step.up_revision_id if step.is_upgrade else _down(step)

    _configure(connection=connection, on_version_apply=applied)
    if progress is not None:
        progress.at = context.get_context().get_current_revision()
        progress.connected = True
    with context.begin_transaction():
        context.run_migrations()


def _down(step: Any) -> str | None:
    down = step.down_revision_ids
    return down[0] if down else None


async def run_migrations_online() -> None:
    engine = create_async_engine(_database_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_on)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
