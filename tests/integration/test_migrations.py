"""The migration history applies, reverts to nothing, and applies again."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
import pytest

from saga.settings import to_plain_url
from saga.store import migrate
from tests.conftest import REPO_ROOT

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


def _saga_db(url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environment.update(APP_ENV="test", DATABASE_URL=url, LOG_LEVEL="WARNING")
    return subprocess.run(
        [sys.executable, "-m", "saga", "db", *argv],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(to_plain_url(url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _revision(url: str) -> str | None:
    conn = await asyncpg.connect(to_plain_url(url))
    try:
        value: str | None = await conn.fetchval("SELECT version_num FROM public.alembic_version")
        return value
    finally:
        await conn.close()


@pytest.mark.embedded
async def test_an_sql_error_in_a_revision_is_one_line_naming_it(fresh_database_url: str) -> None:
    """A table in the way of the console's revision (the kind of SQL error a hand-made
    change in production causes): the upgrade, and the setup job, say in one line which
    revision failed and why, and the database stays at the last revision that committed."""
    before, failing = "20261202190000", "20261203090000"
    await asyncio.to_thread(migrate.upgrade, fresh_database_url, before)
    await _execute(fresh_database_url, "CREATE TABLE shared.saga_web_token (id int)")

    for argv in (("upgrade",), ("setup",)):
        result = await asyncio.to_thread(_saga_db, fresh_database_url, *argv)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"saga: error: migration {failing} (add console tables"), lines
        assert 'relation "saga_web_token" already exists [SQLSTATE 42P07]' in lines[0]
        assert lines[0].endswith(f"the database is at {before}, the last revision that committed")
        assert await _revision(fresh_database_url) == before

    # Once the table is out of the way, the same command goes on from there.
    await _execute(fresh_database_url, "DROP TABLE shared.saga_web_token")
    assert (await asyncio.to_thread(_saga_db, fresh_database_url, "upgrade")).returncode == 0
    assert await _revision(fresh_database_url) == migrate.head_revision()
