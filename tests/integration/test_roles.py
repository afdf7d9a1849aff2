"""Least privilege, on the real server: the migrations run as an owner that is not a
superuser, and every role's rights on every relation of the engine's schemas are the
ones the matrix below says, no more and no fewer.

The relations are read from the catalog, so a table a later migration adds is checked
too: it falls under its schema's rule (and a rule that no longer fits fails here). Each
cell is checked twice: ``has_table_privilege`` and the statement itself, run as the role
(``SET LOCAL ROLE`` in a transaction that is rolled back; ``WHERE false``, so that only
the privilege check decides). Row-level security is proved on rows: a member reads only
their own insurance rows.
"""

from __future__ import annotations

import asyncio
import fnmatch
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg
import pytest

from saga.participant.journey import discover_journeys
from saga.settings import to_plain_url
from saga.store import migrate, roles
from tests.integration.conftest import OwnedDatabase

pytestmark = pytest.mark.integration

SCHEMAS = ("shared", "health_journey", "care_journey", "plan_journey", "gamification")
OWNER = "owner"  # the migration owner: the database's owner, CREATEROLE, not a superuser
TABLE_OWNER = "austa_table_owner"
MEMBER = "austa_plan_member"
# The operators' views of the saga log (read only, by whoever may read them).
SAGA_VIEWS = (
    "shared.saga_failures",
    "shared.saga_step_durations",
    "shared.saga_step_retry_stats",
    "shared.saga_stuck",
    "shared.saga_waiting",
)

# Who may do what, as data: for each role, (pattern of schema.relation, privileges) rules,
# the first that matches wins; no rule matching means no privilege at all. S, I, U, D:
# SELECT, INSERT, UPDATE, DELETE.
MATRIX: dict[str, list[tuple[str, str]]] = {
    OWNER: [("*", "SIUD")],
    # The coordinator writes the saga log (views read only) and the console's tokens.
    roles.COORDINATOR_ROLE: [
        ("shared.saga_web_token", "SU"),
        *((view, "S") for view in SAGA_VIEWS),
        ("shared.saga_*", "SIUD"),
        ("shared.shared_*", "S"),
    ],
    # The worker: the saga log as the timeouts and retention drive it, the definitions and
    # the waiting view read only; shared's reference data read and purged (UPDATE of
    # deleted_at only: a column privilege, apart below); the journeys' tables read, changed
    # and purged but never inserted into, except the partitioned ones it owns through
    # austa_table_owner; nothing of the plan audit log nor of the two materialized views.
    roles.WORKER_ROLE: [
        ("shared.saga_definition", "S"),
        ("shared.saga_waiting", "S"),
        ("shared.saga_web_token", ""),
        *((view, "") for view in SAGA_VIEWS),
        ("shared.saga_*", "SIUD"),
        ("shared.shared_*", "SD"),
        ("plan_journey.plan_audit_log", ""),
        ("gamification.gamification_leaderboard", ""),
        ("health_journey.health_metric_daily", ""),
        ("gamification.gamification_event*", "SIUD"),
        ("health_journey.health_metric*", "SIUD"),
        ("*_journey.*", "SUD"),
        ("gamification.*", "SUD"),
    ],
    TABLE_OWNER: [
        ("health_journey.health_metric_daily", ""),
        ("gamification.gamification_event*", "SIUD"),
        ("health_journey.health_metric*", "SIUD"),
    ],
    # Each journey: its own schema, shared's reference data read; never another journey's
    # tables, never the saga log.
    "austa_health_journey": [
        ("health_journey.health_metric_daily", "S"),  # refreshed by its function
        ("health_journey.*", "SIUD"),
        ("shared.shared_*", "S"),
    ],
    "austa_care_journey": [("care_journey.*", "SIUD"), ("shared.shared_*", "S")],
    "austa_plan_journey": [
        ("plan_journey.plan_audit_log", "S"),  # written by its trigger alone
        ("plan_journey.*", "SIUD"),
        ("shared.shared_*", "S"),
    ],
    "austa_gamification": [
        ("gamification.gamification_leaderboard", "S"),  # refreshed by its function
        ("gamification.*", "SIUD"),
        ("shared.shared_*", "S"),
    ],
    # A member reads the insurance tables (their own rows: row-level security) and the
    # reference data; writes nothing.
    MEMBER: [
        ("plan_journey.plan_inbox", ""),
        ("plan_journey.plan_outbox", ""),
        ("plan_journey.*", "S"),
        ("shared.shared_*", "S"),
    ],
}

PRIVILEGES = {"S": "SELECT", "I": "INSERT", "U": "UPDATE", "D": "DELETE"}
REFERENCE_TABLES = (
    "shared.shared_user",
    "shared.shared_role",
    "shared.shared_permission",
    "shared.shared_user_role",
    "shared.shared_role_permission",
)
PLAN_MEMBER_TABLES = (
    "plan_member_coverage",
    "plan_pre_authorization",
    "plan_claim",
    "plan_wellness_credit",
)

RELATIONS = """
SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS kind,
       format('%I.%I', n.nspname, c.relname) AS qualified,
       (SELECT quote_ident(a.attname) FROM pg_attribute a
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          AND a.attgenerated = '' ORDER BY a.attnum LIMIT 1) AS first_column
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY($1::text[]) AND c.relkind IN ('r', 'p', 'v', 'm')
ORDER BY 1, 2
"""


@dataclass(frozen=True)
class Relation:
    schema: str
    name: str
    kind: str
    qualified: str
    first_column: str

    @property
    def writable(self) -> bool:
        return self.kind in ("r", "p")


def expected(role: str, relation: Relation) -> str:
    for pattern, privileges in MATRIX[role]:
        if fnmatch.fnmatchcase(f"{relation.schema}.{relation.name}", pattern):
            # A view is only read.
            return "".join(p for p in privileges if relation.writable or p == "S")
    return ""


def statements(relation: Relation) -> dict[str, str]:
    """One statement per privilege that touches no row: only the privilege check (and,
    for a table under row-level security, no policy) decides whether it runs."""
    table, column = relation.qualified, relation.first_column
    found = {"S": f"SELECT FROM {table} LIMIT 0"}
    if relation.writable:
        found |= {
            "I": f"INSERT INTO {table} ({column}) SELECT {column} FROM {table} WHERE false",
            "U": f"UPDATE {table} SET {column} = {column} WHERE false",
            "D": f"DELETE FROM {table} WHERE false",
        }
    return found


def role_names(owner: str) -> dict[str, str]:
    """The matrix's names to the server's: the owner is this test's own login."""
    return {name: owner if name == OWNER else name for name in MATRIX}


async def migrated_as_owner(owned: OwnedDatabase) -> None:
    await asyncio.to_thread(migrate.upgrade, owned.owner_url)


async def relations(conn: asyncpg.Connection) -> list[Relation]:
    return [Relation(**row) for row in await conn.fetch(RELATIONS, list(SCHEMAS))]


async def granted(conn: asyncpg.Connection, role: str, relation: Relation) -> str:
    """The privileges ``has_table_privilege`` says ``role`` has on ``relation``."""
    row = await conn.fetchrow(
        "SELECT has_table_privilege($1, $2, 'SELECT') AS s, "
        "has_table_privilege($1, $2, 'INSERT') AS i, "
        "has_table_privilege($1, $2, 'UPDATE') AS u, "
        "has_table_privilege($1, $2, 'DELETE') AS d",
        role,
        relation.qualified,
    )
    assert row is not None
    return "".join(
        letter for letter in "SIUD" if row[letter.lower()] and (relation.writable or letter == "S")
    )


async def allowed(conn: asyncpg.Connection, role: str, relation: Relation) -> str:
    """The privileges whose statement ``role`` may run on ``relation``."""
    runs = ""
    for letter, statement in statements(relation).items():
        async with conn.transaction():
            await conn.execute(f'SET LOCAL ROLE "{role}"')
            try:
                await conn.execute(statement)
            except asyncpg.InsufficientPrivilegeError:
                continue
            runs += letter
    return runs


def test_every_role_of_the_matrix_exists_in_the_deployment() -> None:
    journey_roles = {journey.database_role for journey in discover_journeys().values()}
    login_roles = set(roles.service_roles(journey_roles))
    assert set(MATRIX) == {OWNER, TABLE_OWNER, MEMBER, *login_roles}


async def test_each_role_reads_and_changes_exactly_what_the_matrix_says(
    owned_database: OwnedDatabase,
) -> None:
    await migrated_as_owner(owned_database)
    names = role_names(owned_database.owner)
    conn = await asyncpg.connect(to_plain_url(owned_database.admin_url))
    try:
        found = await relations(conn)
        assert {r.schema for r in found} == set(SCHEMAS)
        wrong: list[str] = []
        for role, server_role in names.items():
            for relation in found:
                want = expected(role, relation)
                has = await granted(conn, server_role, relation)
                runs = await allowed(conn, server_role, relation)
                if not want == has == runs:
                    wrong.append(
                        f"{role} on {relation.qualified}: matrix {want or '-'}, "
                        f"granted {has or '-'}, statements ran {runs or '-'}"
                    )
        assert not wrong, "\n".join(wrong)
    finally:
        await conn.close()


async def test_no_role_is_a_superuser_and_only_the_owner_makes_roles(
    owned_database: OwnedDatabase,
) -> None:
    await migrated_as_owner(owned_database)
    conn = await asyncpg.connect(to_plain_url(owned_database.admin_url))
    try:
        for role, server_role in role_names(owned_database.owner).items():
            attributes = await conn.fetchrow(
                "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolcanlogin "
                "FROM pg_roles WHERE rolname = $1",
                server_role,
            )
            assert attributes is not None, role
            assert dict(attributes) == {
                "rolsuper": False,
                "rolbypassrls": False,
                "rolcreaterole": role == OWNER,
                "rolcreatedb": False,
                "rolcanlogin": role not in (TABLE_OWNER, MEMBER),
            }, role
        # The worker holds the table owner's rights, and no other role's.
        memberships = await conn.fetch(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = $1)",
            roles.WORKER_ROLE,
        )
        assert [row["rolname"] for row in memberships] == [TABLE_OWNER]
    finally:
        await conn.close()


async def test_schemas_are_reached_only_by_the_roles_that_use_them(
    owned_database: OwnedDatabase,
) -> None:
    await migrated_as_owner(owned_database)
    journeys = {journey.schema: journey.database_role for journey in discover_journeys().values()}
    conn = await asyncpg.connect(to_plain_url(owned_database.admin_url))
    try:
        for role, server_role in role_names(owned_database.owner).items():
            for schema in SCHEMAS:
                usage = await conn.fetchval(
                    "SELECT has_schema_privilege($1, $2, 'USAGE')", server_role, schema
                )
                create = await conn.fetchval(
                    "SELECT has_schema_privilege($1, $2, 'CREATE')", server_role, schema
                )
                # Usage wherever the matrix gives a right; CREATE for the owner, and for
                # the table owner (and so the worker) where it makes partitions.
                assert usage == any(
                    fnmatch.fnmatchcase(schema, pattern.split(".")[0])
                    for pattern, privileges in MATRIX[role]
                    if privileges
                ), (role, schema)
                partitioned = schema in ("gamification", "health_journey")
                may_create = role == OWNER or (
                    role in (TABLE_OWNER, roles.WORKER_ROLE) and partitioned
                )
                assert create == may_create, (role, schema)
        # No journey role reaches another journey's schema at all.
        for role in journeys.values():
            for other_schema, other_role in journeys.items():
                if other_role != role:
                    assert not await conn.fetchval(
                        "SELECT has_schema_privilege($1, $2, 'USAGE')", role, other_schema
                    ), (role, other_schema)
    finally:
        await conn.close()


async def test_the_worker_may_change_only_deleted_at_of_the_reference_data(
    owned_database: OwnedDatabase,
) -> None:
    await migrated_as_owner(owned_database)
    conn = await asyncpg.connect(to_plain_url(owned_database.admin_url))
    try:
        for table in REFERENCE_TABLES:
            columns = await conn.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass "
                "AND attnum > 0 AND NOT attisdropped",
                table,
            )
            for (column,) in columns:
                may = await conn.fetchval(
                    "SELECT has_column_privilege($1, $2, $3, 'UPDATE')",
                    roles.WORKER_ROLE,
                    table,
                    column,
                )
                assert may == (column == "deleted_at"), (table, column)
            async with conn.transaction():
                await conn.execute(f"SET LOCAL ROLE {roles.WORKER_ROLE}")
                await conn.execute(f"UPDATE {table} SET deleted_at = deleted_at WHERE false")
                await conn.execute(f"SELECT FROM {table} FOR UPDATE SKIP LOCKED")
    finally:
        await conn.close()


async def two_members_with_insurance_rows(conn: asyncpg.Connection) -> Sequence[uuid.UUID]:
    """Two members, each with a coverage, a pre-authorization, a claim and a wellness
    credit (and so audit rows), made by the owner."""
    plan_id = await conn.fetchval(
        "INSERT INTO plan_journey.plan_insurance_plan (code, name, plan_type, "
        "annual_limit_cents) VALUES ($1, 'Plano', 'basic', 1000000) RETURNING id",
        f"TEST-{uuid.uuid4().hex[:8]}",
    )
    members = []
    for n in range(2):
        user_id = await conn.fetchval(
            "INSERT INTO shared.shared_user (email, full_name) VALUES ($1, $2) RETURNING id",
            f"member{n}-{uuid.uuid4().hex[:8]}@example.com",
            f"Member {n}",
        )
        coverage_id = await conn.fetchval(
            "INSERT INTO plan_journey.plan_member_coverage (user_id, insurance_plan_id, "
            "policy_number, period_start, period_end, annual_limit_cents, reserved_cents) "
            "VALUES ($1, $2, $3, current_date, current_date + 365, 1000000, 5000) "
            "RETURNING id",
            user_id,
            plan_id,
            f"POL-{uuid.uuid4().hex[:10]}",
        )
        await conn.execute(
            "INSERT INTO plan_journey.plan_pre_authorization (member_coverage_id, user_id, "
            "amount_cents, status, decided_at) VALUES ($1, $2, 5000, 'approved', now())",
            coverage_id,
            user_id,
        )
        await conn.execute(
            "INSERT INTO plan_journey.plan_claim (member_coverage_id, user_id, amount_cents, "
            "service_date, procedure_code) VALUES ($1, $2, 5000, current_date, '10101012')",
            coverage_id,
            user_id,
        )
        await conn.execute(
            "INSERT INTO plan_journey.plan_wellness_credit (member_coverage_id, user_id, "
            "amount_cents, reason) VALUES ($1, $2, 100, 'meta cumprida')",
            coverage_id,
            user_id,
        )
        members.append(user_id)
    return members


async def visible_members(
    conn: asyncpg.Connection, role: str, acting: uuid.UUID | None, *, audit_log: bool = True
) -> Mapping[str, frozenset[uuid.UUID]]:
    """Whose rows ``role`` sees in each insurance table (and the audit log), acting for
    ``acting``."""
    columns = {table: "user_id" for table in PLAN_MEMBER_TABLES}
    if audit_log:
        columns["plan_audit_log"] = "member_id"
    seen: dict[str, frozenset[uuid.UUID]] = {}
    async with conn.transaction():
        await conn.execute(f"SET LOCAL ROLE {role}")
        await conn.execute(
            "SELECT set_config('app.current_member_id', $1, true)",
            "" if acting is None else str(acting),
        )
        for table, column in columns.items():
            rows = await conn.fetch(f"SELECT {column} FROM plan_journey.{table}")
            seen[table] = frozenset(row[column] for row in rows)
    return seen


async def test_a_member_sees_only_their_own_insurance_rows(
    owned_database: OwnedDatabase,
) -> None:
    await migrated_as_owner(owned_database)
    conn = await asyncpg.connect(to_plain_url(owned_database.admin_url))
    try:
        first, second = await two_members_with_insurance_rows(conn)
        everyone = frozenset({first, second})
        tables = [*PLAN_MEMBER_TABLES, "plan_audit_log"]
        for acting, other in ((first, second), (second, first)):
            seen = await visible_members(conn, MEMBER, acting)
            assert seen == dict.fromkeys(tables, frozenset({acting})), (acting, other)
        assert await visible_members(conn, MEMBER, None) == dict.fromkeys(tables, frozenset())
        # A member writes nothing, not even their own rows.
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {MEMBER}")
            await conn.execute("SELECT set_config('app.current_member_id', $1, true)", str(first))
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(
                    "UPDATE plan_journey.plan_claim SET amount_cents = 1 WHERE user_id = $1",
                    first,
                )
        # The plan service and the worker see every member's rows (the worker voids
        # pre-authorizations and purges for all of them); the other journeys see none.
        # (The audit log's entry for the insurance plan names no member.)
        assert await visible_members(conn, "austa_plan_journey", first) == {
            **dict.fromkeys(PLAN_MEMBER_TABLES, everyone),
            "plan_audit_log": everyone | {None},
        }
        # The audit log is closed to the worker (the matrix checks it).
        assert await visible_members(
            conn, roles.WORKER_ROLE, first, audit_log=False
        ) == dict.fromkeys(PLAN_MEMBER_TABLES, everyone)
        for role in ("austa_care_journey", "austa_health_journey", "austa_gamification"):
            async with conn.transaction():
                await conn.execute(f"SET LOCAL ROLE {role}")
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.fetch("SELECT user_id FROM plan_journey.plan_member_coverage")
    finally:
        await conn.close()
