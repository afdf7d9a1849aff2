"""The migration history applies, reverts to nothing, and applies again."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from saga.settings import to_plain_url
from saga.store import migrate

pytestmark = pytest.mark.integration

SCHEMAS = ("shared", "health_journey", "care_journey", "plan_journey", "gamification")

# Every user-visible object in the database, by kind and qualified name. System schemas
# and Alembic's own bookkeeping table are left out.
SNAPSHOT = """
WITH user_ns AS (
    SELECT oid, nspname FROM pg_namespace
    WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
)
SELECT 'schema', nspname FROM user_ns
UNION ALL
SELECT 'relation:' || c.relkind::text, n.nspname || '.' || c.relname
FROM pg_class c JOIN user_ns n ON n.oid = c.relnamespace
WHERE c.relname NOT IN ('alembic_version', 'alembic_version_pkc')
UNION ALL
SELECT 'function', n.nspname || '.' || p.proname
FROM pg_proc p JOIN user_ns n ON n.oid = p.pronamespace
UNION ALL
SELECT 'type', n.nspname || '.' || t.typname
FROM pg_type t JOIN user_ns n ON n.oid = t.typnamespace
WHERE t.typname NOT IN ('alembic_version', '_alembic_version')
UNION ALL
SELECT 'trigger', tgname FROM pg_trigger WHERE NOT tgisinternal
UNION ALL
SELECT 'policy', polname FROM pg_policy
UNION ALL
SELECT 'extension', extname FROM pg_extension
UNION ALL
SELECT 'default_acl', defaclrole::regrole::text || ':' || defaclobjtype::text FROM pg_default_acl
"""


async def snapshot(url: str) -> set[tuple[str, str]]:
    conn = await asyncpg.connect(to_plain_url(url))
    try:
        return {(kind, name) for kind, name in await conn.fetch(SNAPSHOT)}
    finally:
        await conn.close()


def objects_in(objects: set[tuple[str, str]], schema: str) -> set[tuple[str, str]]:
    return {o for o in objects if o[1] == schema or o[1].startswith(f"{schema}.")}


async def test_upgrade_downgrade_upgrade_round_trip(fresh_database_url: str) -> None:
    empty = await snapshot(fresh_database_url)

    await asyncio.to_thread(migrate.upgrade, fresh_database_url)
    migrated = await snapshot(fresh_database_url)
    for schema in SCHEMAS:
        assert ("schema", schema) in migrated
        assert objects_in(migrated, schema) - {("schema", schema)}, f"{schema} is empty"

    await asyncio.to_thread(migrate.downgrade, fresh_database_url, "base")
    assert await snapshot(fresh_database_url) == empty

    await asyncio.to_thread(migrate.upgrade, fresh_database_url)
    assert await snapshot(fresh_database_url) == migrated


async def test_each_revision_downgrades_on_its_own(fresh_database_url: str) -> None:
    """Walk down one revision at a time and back up, so every downgrade() is exercised
    against the schema its own upgrade() made."""
    await asyncio.to_thread(migrate.upgrade, fresh_database_url)
    full = await snapshot(fresh_database_url)
    steps = 0
    while True:
        conn = await asyncpg.connect(to_plain_url(fresh_database_url))
        try:
            current = await conn.fetchval("SELECT version_num FROM alembic_version")
        finally:
            await conn.close()
        if current is None:
            break
        await asyncio.to_thread(migrate.downgrade, fresh_database_url, "-1")
        steps += 1
    assert steps >= 5
    await asyncio.to_thread(migrate.upgrade, fresh_database_url)
    assert await snapshot(fresh_database_url) == full


def test_offline_sql_covers_every_schema_without_a_database() -> None:
    sql = migrate.offline_sql()
    for schema in SCHEMAS:
        assert f"CREATE SCHEMA {schema}" in sql
    assert sql.count("UPDATE alembic_version") + sql.count("INSERT INTO alembic_version") >= 5
    assert "COMMIT;" in sql
