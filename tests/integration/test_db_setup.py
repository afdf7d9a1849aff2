"""``saga db setup``, the deployment's migrate job, as a process against real PostgreSQL:
it migrates, seeds, and gives each service role the password its variable holds.

Roles are cluster-wide, so every test puts the service roles' passwords back as they were
(the test server trusts local logins, so nothing else notices them meanwhile).
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence

import asyncpg
import pytest

from saga.participant.journey import discover_journeys
from saga.settings import to_plain_url
from saga.store import migrate, roles
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.embedded]

SERVICE_ROLES = roles.service_roles(j.database_role for j in discover_journeys().values())


def setup(database_url: str, app_env: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``saga db setup`` with only the password variables given in ``env``."""
    environment = {
        k: v
        for k, v in os.environ.items()
        if k != "DATABASE_URL" and not k.startswith(roles.PASSWORD_VARIABLE_PREFIX)
    }
    environment.update(APP_ENV=app_env, DATABASE_URL=database_url, LOG_LEVEL="INFO", **env)
    return subprocess.run(
        [sys.executable, "-m", "saga", "db", "setup"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )


def stored_secrets(admin_url: str) -> dict[str, str | None]:
    """``pg_authid.rolpassword`` of every service role."""

    async def read() -> dict[str, str | None]:
        conn = await asyncpg.connect(to_plain_url(admin_url))
        try:
            rows = await conn.fetch(
                "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY($1::text[])",
                SERVICE_ROLES,
            )
        finally:
            await conn.close()
        return {row["rolname"]: row["rolpassword"] for row in rows}

    return asyncio.run(read())


def set_secrets(admin_url: str, wanted: Mapping[str, str | None]) -> None:
    async def write() -> None:
        conn = await asyncpg.connect(to_plain_url(admin_url))
        try:
            for role, secret in wanted.items():
                statement = await conn.fetchval(
                    "SELECT CASE WHEN $2::text IS NULL "
                    "THEN format('ALTER ROLE %I PASSWORD NULL', $1::text) "
                    "ELSE format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text) END",
                    role,
                    secret,
                )
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(write())


@pytest.fixture(autouse=True)
def service_roles_restored(admin_database_url: str, migrated_database_url: str) -> Iterator[None]:
    """Put the service roles' secrets back after the test (a migrated database of the run
    guarantees the migrations have created the roles)."""
    before = stored_secrets(admin_database_url)
    assert sorted(before) == SERVICE_ROLES
    try:
        yield
    finally:
        set_secrets(admin_database_url, before)


def secret_matches(secret: str | None, password: str) -> bool:
    """Whether a SCRAM secret was made from ``password`` (recomputed with its own salt)."""
    if secret is None or not secret.startswith("SCRAM-SHA-256$"):
        return False
    iterations, salt = secret.split("$")[1].split(":")
    expected = roles.scram_secret(password, salt=base64.b64decode(salt), iterations=int(iterations))
    return secrets.compare_digest(expected, secret)


def new_passwords() -> dict[str, str]:
    # One with characters PostgreSQL normalizes (SASLprep) before hashing.
    made = {role: f"pw-{secrets.token_hex(12)}" for role in SERVICE_ROLES}
    made[SERVICE_ROLES[0]] += "-ção\u00a0Ⅸ"
    return made


def variables(passwords: Mapping[str, str], *, without: Sequence[str] = ()) -> dict[str, str]:
    return {
        roles.password_variable(role): password
        for role, password in passwords.items()
        if role not in without
    }


def assert_no_password_in(
    result: subprocess.CompletedProcess[str], passwords: Iterable[str]
) -> None:
    output = result.stdout + result.stderr
    for password in passwords:
        assert password not in output
        assert password.split("-")[1] not in output  # not even its random part


def test_setup_migrates_seeds_and_sets_each_service_role_password(
    fresh_database_url: str, admin_database_url: str
) -> None:
    passwords = new_passwords()
    first = setup(fresh_database_url, "test", **variables(passwords))
    assert first.returncode == 0, first.stderr
    assert "upgraded to head" in first.stdout
    assert "seeded 0 row(s)" not in first.stdout
    assert f"role passwords: {len(SERVICE_ROLES)} set" in first.stdout
    assert asyncio.run(_revision(fresh_database_url)) == migrate.head_revision()
    stored = stored_secrets(admin_database_url)
    for role, password in passwords.items():
        assert secret_matches(stored[role], password), role
    assert_no_password_in(first, passwords.values())

    # Again, now without the coordinator's variable: seeds and migrations have nothing left
    # to do, the other roles get their (new) passwords, the coordinator keeps its own.
    again = new_passwords()
    second = setup(fresh_database_url, "test", **variables(again, without=[roles.COORDINATOR_ROLE]))
    assert second.returncode == 0, second.stderr
    assert "seeded 0 row(s)" in second.stdout
    assert f"left as they were: {roles.COORDINATOR_ROLE}" in second.stdout
    assert "role_password_unchanged" in second.stderr
    assert roles.password_variable(roles.COORDINATOR_ROLE) in second.stderr
    restored = stored_secrets(admin_database_url)
    assert restored[roles.COORDINATOR_ROLE] == stored[roles.COORDINATOR_ROLE]
    for role in SERVICE_ROLES:
        if role != roles.COORDINATOR_ROLE:
            assert secret_matches(restored[role], again[role]), role
    assert_no_password_in(second, [*passwords.values(), *again.values()])


def test_production_without_a_password_changes_nothing_and_names_the_variable(
    fresh_database_url: str, admin_database_url: str
) -> None:
    missing = "austa_care_journey"
    assert missing in SERVICE_ROLES
    passwords = new_passwords()
    before = stored_secrets(admin_database_url)
    result = setup(
        fresh_database_url,
        "production",
        # Production settings need a broker address; setup never connects to it.
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
        **variables(passwords, without=[missing]),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("saga: error: DB_PASSWORD_AUSTA_CARE_JOURNEY must be set")
    assert "Traceback" not in result.stderr
    assert_no_password_in(result, passwords.values())
    assert stored_secrets(admin_database_url) == before
    assert asyncio.run(_revision(fresh_database_url)) is None


async def test_scram_secrets_are_the_ones_postgresql_builds(admin_database_url: str) -> None:
    """:func:`roles.scram_secret` hashes exactly as the server does (SASLprep included), so
    a hash made here is a password the service can log in with."""
    role = f"austa_test_scram_{uuid.uuid4().hex[:8]}"
    samples = [
        "plain-ascii-Password1",
        "pässwörd",  # NFKC leaves it, but it takes the non-ASCII path
        "Ⅸ\u00a0ﬁ\u00ad!",  # NFKC folds, a non-ASCII space maps to ' ', U+00AD to nothing
        # Prohibited strings are hashed as given, not normalized: each one below would
        # change under NFKC (Ⅸ → IX, ⑴ → (1)), so a missed prohibition shows.
        "bell\u0007Ⅸ",  # a control character
        "\u0627Ⅸ\u0628",  # right-to-left text holding a left-to-right character
        "\u2474\u0627",  # right-to-left text not starting with a right-to-left character
        "\u0627\u2474",  # ... nor ending with one
        "\u0627\u2474\u0628",  # right-to-left at both ends: allowed, so normalized
        "\u00ad",  # nothing left after mapping
    ]
    conn = await asyncpg.connect(to_plain_url(admin_database_url))
    try:
        await conn.execute(f'CREATE ROLE "{role}" NOLOGIN')
        for password in samples:
            # The server hashes a clear-text password itself (what setup never sends).
            await conn.execute(
                await conn.fetchval(
                    "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)",
                    role,
                    password,
                )
            )
            secret = await conn.fetchval(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1", role
            )
            assert secret_matches(secret, password), ascii(password)
            assert not secret_matches(secret, password + "x")
    finally:
        await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        await conn.close()


async def test_the_statement_holds_the_secret_quoted_never_the_password(
    admin_database_url: str,
) -> None:
    """What setup sends: the server quotes an awkward role name and the secret, and the
    statement (what a server's log or pg_stat_statements would keep) has no password."""
    role = f'austa test "odd" {uuid.uuid4().hex[:8]}'
    password = f"it's a {secrets.token_hex(8)}; DROP ROLE postgres; --"
    conn = await asyncpg.connect(to_plain_url(admin_database_url))
    try:
        await conn.execute(await conn.fetchval("SELECT format('CREATE ROLE %I', $1::text)", role))
        statement = await roles.alter_role_statement(conn, role, password)
        assert "SCRAM-SHA-256$" in statement
        assert password not in statement
        assert password.split()[2] not in statement
        await conn.execute(statement)
        secret = await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", role)
        assert secret_matches(secret, password)
    finally:
        await conn.execute(
            await conn.fetchval("SELECT format('DROP ROLE IF EXISTS %I', $1::text)", role)
        )
        await conn.close()


async def _revision(url: str) -> str | None:
    conn = await asyncpg.connect(to_plain_url(url))
    try:
        if await conn.fetchval("SELECT to_regclass('public.alembic_version')") is None:
            return None
        revision: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
        return revision
    finally:
        await conn.close()
