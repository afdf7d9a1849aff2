"""``saga db`` as an operator runs it: a real process against a real database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from saga.store import migrate

pytestmark = [pytest.mark.integration, pytest.mark.embedded]

REPO_ROOT = Path(__file__).resolve().parents[2]


def saga(
    *args: str, database_url: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL"}}
    environment.update(APP_ENV="test", **env)
    if database_url is not None:
        environment["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "saga", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )


def test_upgrade_current_lint_downgrade(fresh_database_url: str) -> None:
    upgraded = saga("db", "upgrade", database_url=fresh_database_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "upgraded to head" in upgraded.stdout

    current = saga("db", "current", database_url=fresh_database_url)
    assert current.stdout.strip() == (
        f"database: {migrate.head_revision()}; head: {migrate.head_revision()}"
    )

    lint = saga("db", "lint", database_url=fresh_database_url)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "no findings" in lint.stdout

    downgraded = saga("db", "downgrade", "base", database_url=fresh_database_url)
    assert downgraded.returncode == 0, downgraded.stderr
    assert "database: not migrated" in saga("db", "current", database_url=fresh_database_url).stdout


def test_seeding_an_unmigrated_database_says_to_upgrade_first(fresh_database_url: str) -> None:
    result = saga("db", "seed", database_url=fresh_database_url)
    assert result.returncode == 1
    assert "run `saga db upgrade`" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_lint_fails_on_a_breach_and_names_it(fresh_database_url: str) -> None:
    assert saga("db", "upgrade", database_url=fresh_database_url).returncode == 0
    import asyncio

    import asyncpg

    from saga.settings import to_plain_url

    async def add_bad_table() -> None:
        conn = await asyncpg.connect(to_plain_url(fresh_database_url))
        try:
            await conn.execute("CREATE TABLE care_journey.appointment_note (id bigint PRIMARY KEY)")
        finally:
            await conn.close()

    asyncio.run(add_bad_table())
    result = saga("db", "lint", database_url=fresh_database_url)
    assert result.returncode == 1
    assert "care_journey.appointment_note" in result.stdout
    assert "primary-key" in result.stdout
    assert "table-prefix" in result.stdout


def test_offline_sql_needs_no_database() -> None:
    result = saga("db", "sql", database_url="postgresql://nobody@127.0.0.1:1/none")
    assert result.returncode == 0, result.stderr
    assert "CREATE SCHEMA care_journey" in result.stdout
    assert "care_appointment_no_double_booking" in result.stdout

    head = migrate.head_revision()
    down = saga("db", "sql", "--downgrade", "--from", head, "--to", "base")
    assert down.returncode == 0, down.stderr
    assert "DROP SCHEMA shared CASCADE" in down.stdout


def test_bad_setting_stops_with_the_variable_named() -> None:
    result = saga("db", "upgrade", database_url="postgresql://x@h/db", DATABASE_POOL_SIZE="many")
    assert result.returncode == 2
    assert "DATABASE_POOL_SIZE: expected an integer 1..500; got 'many'" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_database_url_is_explained() -> None:
    result = saga("db", "upgrade")
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr
    assert "make demo" in result.stderr


def test_new_refuses_a_badly_named_migration() -> None:
    result = saga("db", "new", "--name", "CreateClaims")
    assert result.returncode == 2
    assert "must be snake_case and start with add_, update_ or remove_" in result.stderr


def test_unreachable_database_is_one_line() -> None:
    result = saga(
        "db",
        "lint",
        database_url="postgresql://postgres@127.0.0.1:1/nowhere",
        DATABASE_CONNECTION_TIMEOUT="500",
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("saga: error:")
