"""Fixtures for the integration tests of the database layer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from saga.settings import Settings
from saga.store import Database


@pytest.fixture
async def scratch(settings: Settings, fresh_database_url: str) -> AsyncIterator[Database]:
    """A Database on an empty database with two accounts of 100 each."""
    db = Database.from_settings(settings, url=fresh_database_url, application_name="tests")

    async def create(conn: AsyncConnection) -> None:
        await conn.execute(text("CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL)"))
        await conn.execute(text("INSERT INTO account VALUES (1, 100), (2, 100)"))

    await db.run(create)
    try:
        yield db
    finally:
        await db.dispose()
