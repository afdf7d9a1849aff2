"""The journeys' seed data: complete, valid, and idempotent down to ``updated_at``."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from journeys.care.seeds import SPECIALTIES
from journeys.gamification.seeds import ACHIEVEMENTS
from journeys.health.seeds import GOAL_TEMPLATES
from journeys.plan.seeds import INSURANCE_PLANS
from journeys.shared.seeds import EMAIL_DOMAIN, PERMISSIONS, ROLES, sample_users
from saga.settings import Settings
from saga.store import Database, migrate
from saga.store.seeding import SeedReport, discover_seeders, run_seeders

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ("shared", "health_journey", "care_journey", "plan_journey", "gamification")

REFERENCE_SEEDERS = (
    "shared.reference",
    "health.reference",
    "care.reference",
    "plan.reference",
    "gamification.reference",
)
SAMPLE_SEEDERS = (
    "shared.samples",
    "health.samples",
    "care.samples",
    "plan.samples",
    "gamification.samples",
)

# Every table and materialized view of the journeys' schemas (partitions are read through
# their parent), so that a change anywhere shows: triggers' rows (the plan audit log), the
# leaderboard, and tables no seeder names.
RELATIONS = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(:schemas) AND c.relkind IN ('r', 'p', 'm') AND NOT c.relispartition
ORDER BY 1
"""


async def contents(conn: AsyncConnection) -> dict[str, str]:
    """Each relation's row count and a checksum of every column of every row."""
    names = (await conn.execute(text(RELATIONS), {"schemas": list(SCHEMAS)})).scalars().all()
    checksums = {}
    for name in names:
        checksums[name] = await conn.scalar(
            text(
                f"SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, ',' "
                f"ORDER BY t::text), '')) FROM {name} t"
            )
        )
    return checksums


async def row_count(conn: AsyncConnection, table: str) -> int:
    count = await conn.scalar(text(f"SELECT count(*) FROM {table}"))
    assert isinstance(count, int)
    return count


async def row_counts(conn: AsyncConnection, tables: list[str]) -> dict[str, int]:
    return {table: await row_count(conn, table) for table in tables}


async def seed(database: Database, *, include_samples: bool) -> SeedReport:
    seeders = discover_seeders()
    return await database.run(
        lambda conn: run_seeders(conn, seeders, include_samples=include_samples), name="seed"
    )


async def assert_counts_match_the_tables(database: Database, report: SeedReport) -> None:
    """What a seeder says it inserted is what the table holds (they started empty)."""
    inserted = {table: n for tables in report.inserted.values() for table, n in tables.items()}
    assert await database.run(lambda conn: row_counts(conn, list(inserted))) == inserted


def cpf_is_valid(cpf: str) -> bool:
    """The Receita Federal rule, written apart from the seeds' own generator."""
    if re.fullmatch(r"[0-9]{11}", cpf) is None or len(set(cpf)) == 1:
        return False
    for position in (9, 10):
        total = sum(int(cpf[i]) * (position + 1 - i) for i in range(position))
        remainder = total % 11
        if int(cpf[position]) != (0 if remainder < 2 else 11 - remainder):
            return False
    return True


async def test_reference_seed_is_complete_and_a_second_run_changes_nothing(
    settings: Settings, fresh_database_url: str
) -> None:
    await asyncio.to_thread(migrate.upgrade, fresh_database_url)
    database = Database.from_settings(settings, url=fresh_database_url)
    try:
        first = await seed(database, include_samples=False)

        assert tuple(first.inserted) == REFERENCE_SEEDERS
        assert first.inserted["shared.reference"] == {
            "shared.shared_permission": len(PERMISSIONS),
            "shared.shared_role": len(ROLES),
            "shared.shared_role_permission": sum(len(r.permissions) for r in ROLES.values()),
        }
        assert first.inserted["health.reference"] == {
            "health_journey.health_goal_template": len(GOAL_TEMPLATES)
        }
        assert first.inserted["care.reference"] == {"care_journey.care_specialty": len(SPECIALTIES)}
        assert first.inserted["plan.reference"] == {
            "plan_journey.plan_insurance_plan": len(INSURANCE_PLANS)
        }
        assert first.inserted["gamification.reference"] == {
            "gamification.gamification_achievement": len(ACHIEVEMENTS)
        }
        await assert_counts_match_the_tables(database, first)
        assert await database.run(lambda conn: row_count(conn, "shared.shared_user")) == 0

        before = await database.run(contents)
        second = await seed(database, include_samples=False)
        after = await database.run(contents)

        assert second.total == 0
        assert all(count == 0 for tables in second.inserted.values() for count in tables.values())
        assert after == before
    finally:
        await database.dispose()


async def test_sample_seed_is_valid_and_a_second_run_changes_nothing(
    settings: Settings, fresh_database_url: str
) -> None:
    await asyncio.to_thread(migrate.upgrade, fresh_database_url)
    database = Database.from_settings(settings, url=fresh_database_url)
    try:
        first = await seed(database, include_samples=True)

        assert tuple(first.inserted) == REFERENCE_SEEDERS + SAMPLE_SEEDERS
        empty = [
            table
            for name in SAMPLE_SEEDERS
            for table, count in first.inserted[name].items()
            if count == 0
        ]
        assert empty == []
        assert first.inserted["shared.samples"]["shared.shared_user"] == len(sample_users())
        await assert_counts_match_the_tables(database, first)

        before = await database.run(contents)
        second = await seed(database, include_samples=True)
        after = await database.run(contents)

        assert second.total == 0
        assert after == before
    finally:
        await database.dispose()


async def test_sample_people_and_points_are_consistent(
    settings: Settings, fresh_database_url: str
) -> None:
    await asyncio.to_thread(migrate.upgrade, fresh_database_url)
    database = Database.from_settings(settings, url=fresh_database_url)
    try:
        await seed(database, include_samples=True)

        async def people(conn: AsyncConnection) -> list[tuple[str, str, str]]:
            rows = await conn.execute(text("SELECT cpf, email, phone FROM shared.shared_user"))
            return [(r.cpf, r.email, r.phone) for r in rows]

        async def xp_mismatches(conn: AsyncConnection) -> list[tuple[str, int, int]]:
            rows = await conn.execute(
                text(
                    "SELECT p.display_name, p.xp, coalesce(sum(l.points), 0) AS ledger "
                    "FROM gamification.gamification_profile p "
                    "LEFT JOIN gamification.gamification_points_ledger l ON l.profile_id = p.id "
                    "GROUP BY p.id HAVING p.xp <> coalesce(sum(l.points), 0)"
                )
            )
            return [(r.display_name, r.xp, r.ledger) for r in rows]

        async def total_xp(conn: AsyncConnection) -> int:
            total = await conn.scalar(
                text("SELECT coalesce(sum(xp), 0) FROM gamification.gamification_profile")
            )
            assert total is not None
            return int(total)

        users = await database.run(people)
        assert len(users) == len(sample_users())
        for cpf, email, phone in users:
            assert cpf_is_valid(cpf), cpf
            # The check above would catch a wrong digit: flip the last one and it fails.
            assert not cpf_is_valid(cpf[:10] + str((int(cpf[10]) + 1) % 10)), cpf
            assert email.endswith(f"@{EMAIL_DOMAIN}"), email
            assert re.fullmatch(r"\+55 [1-9][0-9] 9[0-9]{4}-[0-9]{4}", phone), phone
        assert await database.run(xp_mismatches) == []
        assert await database.run(total_xp) > 0
    finally:
        await database.dispose()


def saga_seed(database_url: str, hash_seed: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    # A different hash seed per run: the sample data must not depend on set or dict order.
    environment.update(DATABASE_URL=database_url, APP_ENV="test", PYTHONHASHSEED=hash_seed)
    return subprocess.run(
        [sys.executable, "-m", "saga", "db", "seed", "--samples"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )


@pytest.mark.embedded
def test_the_cli_seeds_and_then_finds_nothing_new(fresh_database_url: str) -> None:
    migrate.upgrade(fresh_database_url)

    first = saga_seed(fresh_database_url, hash_seed="1")
    assert first.returncode == 0, first.stderr
    for table in (
        "shared.shared_permission",
        "shared.shared_user",
        "health_journey.health_metric",
        "care_journey.care_slot",
        "plan_journey.plan_claim",
        "gamification.gamification_points_ledger",
    ):
        assert re.search(rf"\b{re.escape(table)}=[1-9]", first.stdout), first.stdout
    assert re.search(r"^seeded [1-9][0-9]* row\(s\) including samples$", first.stdout, re.M)

    second = saga_seed(fresh_database_url, hash_seed="2")
    assert second.returncode == 0, second.stderr
    assert "seeded 0 row(s) including samples" in second.stdout
