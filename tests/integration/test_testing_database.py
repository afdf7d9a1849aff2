"""saga.testing's databases: migrated to head (reference seeds when asked) on the server
DATABASE_URL names or an embedded one, copied per test, and gone afterwards."""

from __future__ import annotations

import asyncpg
import pytest

from journeys.care.seeds import SPECIALTIES
from saga.errors import UsageError
from saga.settings import Settings, to_plain_url
from saga.store import migrate
from saga.testing import MigratedTemplate, migrated_database
from saga.testing.database import database_name

pytestmark = pytest.mark.integration


async def fetchval(url: str, sql: str) -> object:
    conn = await asyncpg.connect(to_plain_url(url))
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def exists(admin_url: str, name: str) -> bool:
    conn = await asyncpg.connect(to_plain_url(admin_url))
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


SPECIALTY_COUNT = "SELECT count(*) FROM care_journey.care_specialty"


async def test_migrated_database_is_at_head_with_the_reference_seeds_and_dropped_after(
    settings: Settings,
) -> None:
    async with migrated_database(settings) as url:
        assert await fetchval(url, "SELECT version_num FROM alembic_version") == (
            migrate.head_revision()
        )
        assert await fetchval(url, SPECIALTY_COUNT) == len(SPECIALTIES)
        # The URL's own database is where its server can still be reached after the drop.
        still_there = settings.database_url
        if still_there is not None:
            assert await exists(still_there, database_name(url))
    if still_there is not None:
        assert not await exists(still_there, database_name(url))


async def test_without_reference_seeds_the_tables_are_empty(settings: Settings) -> None:
    async with migrated_database(settings, seed_reference=False) as url:
        assert await fetchval(url, SPECIALTY_COUNT) == 0


async def test_copies_of_a_template_are_databases_of_their_own(settings: Settings) -> None:
    async with MigratedTemplate(settings) as template, template.copy() as first:
        async with template.copy() as second:
            assert database_name(first) != database_name(second)
            conn = await asyncpg.connect(to_plain_url(first))
            try:
                await conn.execute("DELETE FROM care_journey.care_specialty")
            finally:
                await conn.close()
            assert await fetchval(second, SPECIALTY_COUNT) == len(SPECIALTIES)
            assert await fetchval(first, SPECIALTY_COUNT) == 0
        with pytest.raises(UsageError, match="is the template itself"):
            await template.drop_copy(first.replace(database_name(first), template.name))


async def test_a_template_is_used_inside_async_with() -> None:
    template = MigratedTemplate(Settings())
    with pytest.raises(UsageError, match="not made yet"):
        await template.create_copy()


def test_settings_of_the_wrong_type_are_refused() -> None:
    with pytest.raises(UsageError, match=r"settings must be a saga\.Settings .* got dict"):
        MigratedTemplate({"database_url": "postgresql://x/y"})  # type: ignore[arg-type]
