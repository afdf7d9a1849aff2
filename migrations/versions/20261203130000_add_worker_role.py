"""add worker role: the maintenance worker logs in as a role with only its jobs' rights

Revision ID: 20261203130000
Revises: 20261203120000
Create Date: 2026-12-03 13:00:00

- ``austa_saga_worker`` (LOGIN): what ``saga run worker``'s jobs, the engine's and the
  journeys', read and change, and nothing else. It drives overdue sagas as the
  coordinator does (the saga log, its archive, the waiting view; the stored definitions
  read only), republishes and prunes every outbox and inbox, runs the journeys' clean-up
  jobs (releasing holds, voiding pre-authorizations, refreshing the leaderboard) and purges
  soft-deleted rows: SELECT, UPDATE and DELETE on the journeys' tables, never INSERT; on
  shared's reference data SELECT and DELETE, and UPDATE of ``deleted_at`` only (the
  purge's ``FOR UPDATE`` needs an UPDATE privilege). The plan journey's insurance tables
  are under row-level security, so it gets a policy there; the audit log stays closed to it
  (it is written by ``plan_journey.record_audit()`` alone, and never purged).
- ``austa_table_owner`` (NOLOGIN), granted to the worker: owns the natively partitioned
  tables and their partitions, with CREATE on their schemas. Creating a partition needs
  the parent's ownership, detaching one too; ownership through this role keeps the worker
  from owning (and being able to drop) anything else. ``shared.create_monthly_partitions``
  now hands each partition it makes to its parent's owner, so one the worker creates is
  owned as the migrations' are. A partitioned table added later must be given to this
  role too (``ALTER TABLE ... OWNER TO austa_table_owner``), or the worker's partition
  maintenance reports it as failed. A migration owner that is not a superuser is made a
  member, so that it may still alter the tables it gave away.

Neither role needs a superuser to make: a migration owner with CREATEROLE runs this. One
without it (the roles made beforehand by a DBA) gets the grants, but the partitioned
tables stay its own, with a notice, since it may not grant the memberships.
"""

from __future__ import annotations

from migrations._ddl import execute

revision = "20261203130000"
down_revision: str | None = "20261203120000"
branch_labels: str | None = None
depends_on: str | None = None

WORKER_ROLE = "austa_saga_worker"
TABLE_OWNER_ROLE = "austa_table_owner"

JOURNEY_SCHEMAS = ("health_journey", "care_journey", "plan_journey", "gamification")
ENGINE_SCHEMAS = ("shared", *JOURNEY_SCHEMAS)

# The saga log as the worker's step and deadline timeouts drive it (as the coordinator
# would), retention moves it to the archive, and the outbox job republishes it.
SAGA_LOG_TABLES = (
    "shared.saga_instance",
    "shared.saga_step_log",
    "shared.saga_outbox",
    "shared.saga_signal",
    "shared.saga_instance_archive",
    "shared.saga_step_log_archive",
)
REFERENCE_TABLES = (
    "shared.shared_user",
    "shared.shared_role",
    "shared.shared_permission",
    "shared.shared_user_role",
    "shared.shared_role_permission",
)
# Relations of a journey's schema the worker has no business in: the plan audit log is
# append-only and written by its trigger; the leaderboard is refreshed by its function.
# The materialized views are refreshed through their functions, never read by the worker.
CLOSED_TO_WORKER = (
    "plan_journey.plan_audit_log",
    "gamification.gamification_leaderboard",
    "health_journey.health_metric_daily",
)
# plan_journey's tables under row-level security that hold a member's insurance data.
PLAN_MEMBER_TABLES = (
    "plan_member_coverage",
    "plan_pre_authorization",
    "plan_claim",
    "plan_wellness_credit",
)

_SCHEMA_LIST = ", ".join(f"'{schema}'" for schema in ENGINE_SCHEMAS)


def _create_role(role: str, login: str) -> str:
    return (
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') "
        f"THEN CREATE ROLE {role} {login}; END IF; END $$"
    )


ROLES = [_create_role(TABLE_OWNER_ROLE, "NOLOGIN"), _create_role(WORKER_ROLE, "LOGIN")]

# The worker into the table owner, the migration owner too (a non-superuser may give a
# table only to a role it is a member of, and alters it later only through that
# membership), then every natively partitioned table of the engine's schemas, and its
# partitions, to the table owner. A TimescaleDB hypertable is a plain table to the
# catalog: it stays. Granting a membership needs CREATEROLE: an owner without it (the
# roles made beforehand by a DBA) leaves the tables as they are, with a notice, and the
# worker's partition maintenance reports them until a DBA grants the memberships and the
# tables are handed over. USAGE, not MEMBER: from PostgreSQL 16 a CREATEROLE owner is a
# member of the roles it made with ADMIN OPTION alone (createrole_self_grant), which
# neither passes their rights on nor lets it give them a table, so it grants itself the
# membership that does.
OWN_PARTITIONED_TABLES = f"""
    DO $$
    DECLARE
        relation record;
    BEGIN
        IF NOT pg_has_role('{WORKER_ROLE}', '{TABLE_OWNER_ROLE}', 'USAGE') THEN
            GRANT {TABLE_OWNER_ROLE} TO {WORKER_ROLE};
        END IF;
        IF NOT pg_has_role(current_user, '{TABLE_OWNER_ROLE}', 'USAGE') THEN
            EXECUTE format('GRANT {TABLE_OWNER_ROLE} TO %I', current_user);
        END IF;
        FOR relation IN
            SELECT DISTINCT n.nspname, format('%I.%I', n.nspname, c.relname) AS qualified
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
            LEFT JOIN pg_class parent ON parent.oid = i.inhparent
            WHERE n.nspname IN ({_SCHEMA_LIST})
              AND (c.relkind = 'p' OR parent.relkind = 'p')
            ORDER BY 2
        LOOP
            EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO {TABLE_OWNER_ROLE}',
                           relation.nspname);
            EXECUTE format('ALTER TABLE %s OWNER TO {TABLE_OWNER_ROLE}', relation.qualified);
        END LOOP;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'the partitioned tables stay with %: %', current_user, SQLERRM;
    END $$"""

# Back to the owner of each table's schema (who made it), for the downgrade.
RETURN_PARTITIONED_TABLES = f"""
    DO $$
    DECLARE
        relation record;
    BEGIN
        FOR relation IN
            SELECT format('%I.%I', n.nspname, c.relname) AS qualified,
                   pg_get_userbyid(n.nspowner) AS schema_owner
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname IN ({_SCHEMA_LIST})
              AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = '{TABLE_OWNER_ROLE}')
              AND c.relkind IN ('r', 'p')
            ORDER BY 1
        LOOP
            EXECUTE format('ALTER TABLE %s OWNER TO %I', relation.qualified,
                           relation.schema_owner);
        END LOOP;
    END $$"""


def _create_monthly_partitions(hand_over: bool) -> str:
    """``shared.create_monthly_partitions`` as the first revision made it, or (with
    ``hand_over``) giving each partition it makes to the parent's owner."""
    owner_select = ", pg_get_userbyid(c.relowner)" if hand_over else ""
    owner_into = ", parent_owner" if hand_over else ""
    owner_declare = "parent_owner text;" if hand_over else ""
    hand_over_statement = (
        """
                EXECUTE format('ALTER TABLE %I.%I OWNER TO %I',
                               parent_schema, partition_name, parent_owner);"""
        if hand_over
        else ""
    )
    return f"""
    CREATE OR REPLACE FUNCTION shared.create_monthly_partitions(
        parent regclass, months_back integer, months_ahead integer
    ) RETURNS integer
    LANGUAGE plpgsql AS $$
    DECLARE
        parent_schema text;
        parent_name text;
        {owner_declare}
        month_start date;
        partition_name text;
        created integer := 0;
    BEGIN
        SELECT n.nspname, c.relname{owner_select} INTO parent_schema, parent_name{owner_into}
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = parent;
        FOR i IN -months_back..months_ahead LOOP
            month_start := (date_trunc('month', now()) + make_interval(months => i))::date;
            partition_name := format('%s_p%s', parent_name, to_char(month_start, 'YYYYMM'));
            IF to_regclass(format('%I.%I', parent_schema, partition_name)) IS NULL THEN
                EXECUTE format(
                    'CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
                    parent_schema, partition_name, parent_schema, parent_name,
                    month_start, (month_start + interval '1 month')::date
                );{hand_over_statement}
                created := created + 1;
            END IF;
        END LOOP;
        RETURN created;
    END $$"""


def _worker_grants(action: str) -> list[str]:
    """The worker's privileges: ``action`` is "GRANT" or "REVOKE"."""
    to = "TO" if action == "GRANT" else "FROM"
    statements = [
        f"{action} USAGE ON SCHEMA {', '.join(ENGINE_SCHEMAS)} {to} {WORKER_ROLE}",
        f"{action} SELECT, INSERT, UPDATE, DELETE ON {', '.join(SAGA_LOG_TABLES)} "
        f"{to} {WORKER_ROLE}",
        f"{action} SELECT ON shared.saga_definition, shared.saga_waiting {to} {WORKER_ROLE}",
        f"{action} SELECT, DELETE ON {', '.join(REFERENCE_TABLES)} {to} {WORKER_ROLE}",
        *(
            f"{action} UPDATE (deleted_at) ON {table} {to} {WORKER_ROLE}"
            for table in REFERENCE_TABLES
        ),
        f"{action} EXECUTE ON FUNCTION gamification.refresh_leaderboard(), "
        f"health_journey.refresh_health_metric_daily() {to} {WORKER_ROLE}",
    ]
    for schema in JOURNEY_SCHEMAS:
        statements += [
            f"{action} SELECT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} {to} {WORKER_ROLE}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} "
            f"{action} SELECT, UPDATE, DELETE ON TABLES {to} {WORKER_ROLE}",
        ]
    if action == "GRANT":
        statements.append(f"REVOKE ALL ON {', '.join(CLOSED_TO_WORKER)} FROM {WORKER_ROLE}")
    return statements


WORKER_POLICIES = [
    f"CREATE POLICY {table}_worker_all ON plan_journey.{table} "
    f"FOR ALL TO {WORKER_ROLE} USING (true) WITH CHECK (true)"
    for table in PLAN_MEMBER_TABLES
]


def _drop_role_if_unused(role: str) -> str:
    # Its grants here are revoked by then; another database may still use the role, and
    # an owner without CREATEROLE may not drop it.
    return f"""
    DO $$
    BEGIN
        DROP ROLE IF EXISTS {role};
    EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
        RAISE NOTICE '{role} is kept: %', SQLERRM;
    END $$"""


def upgrade() -> None:
    execute(
        [
            *ROLES,
            OWN_PARTITIONED_TABLES,
            _create_monthly_partitions(hand_over=True),
            *_worker_grants("GRANT"),
            *WORKER_POLICIES,
        ]
    )


def downgrade() -> None:
    execute(
        [
            *(
                f"DROP POLICY {table}_worker_all ON plan_journey.{table}"
                for table in PLAN_MEMBER_TABLES
            ),
            *_worker_grants("REVOKE"),
            _create_monthly_partitions(hand_over=False),
            RETURN_PARTITIONED_TABLES,
            f"REVOKE ALL ON SCHEMA {', '.join(ENGINE_SCHEMAS)} FROM {TABLE_OWNER_ROLE}",
            _drop_role_if_unused(WORKER_ROLE),
            _drop_role_if_unused(TABLE_OWNER_ROLE),
        ]
    )
