"""add shared schema: reference data, the saga log, service roles, common functions

Revision ID: 20261125150000
Revises:
Create Date: 2026-11-25 15:00:00
"""

from __future__ import annotations

from migrations._ddl import (
    AUDIT_COLUMNS,
    ID_COLUMN,
    append_only_trigger,
    execute,
    updated_at_trigger,
)

revision = "20261125150000"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# One LOGIN role per journey service plus the coordinator, and a NOLOGIN role for
# member-facing reads under row-level security. Roles are cluster-wide: they are created
# if missing and dropped on downgrade only when no other database still uses them.
SERVICE_ROLES = (
    "austa_health_journey",
    "austa_care_journey",
    "austa_plan_journey",
    "austa_gamification",
    "austa_saga_coordinator",
)
MEMBER_ROLES = ("austa_plan_member",)

FUNCTIONS = [
    """
    CREATE FUNCTION shared.set_updated_at() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        NEW.updated_at := now();
        RETURN NEW;
    END $$""",
    """
    CREATE FUNCTION shared.forbid_mutation() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '%.% is append-only: % is not allowed',
                        TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
            USING ERRCODE = 'restrict_violation',
                  HINT = 'write a new, compensating row instead';
    END $$""",
    # Monthly range partitions named <parent>_pYYYYMM, created ahead of time; the
    # maintenance worker calls it on a schedule. Returns how many partitions it created.
    """
    CREATE FUNCTION shared.create_monthly_partitions(
        parent regclass, months_back integer, months_ahead integer
    ) RETURNS integer
    LANGUAGE plpgsql AS $$
    DECLARE
        parent_schema text;
        parent_name text;
        month_start date;
        partition_name text;
        created integer := 0;
    BEGIN
        SELECT n.nspname, c.relname INTO parent_schema, parent_name
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
                );
                created := created + 1;
            END IF;
        END LOOP;
        RETURN created;
    END $$""",
]

REFERENCE_TABLES = [
    f"""
    CREATE TABLE shared.shared_user (
        {ID_COLUMN},
        email text NOT NULL,
        full_name text NOT NULL,
        cpf text,
        phone text,
        birth_date date,
        locale text NOT NULL DEFAULT 'pt-BR',
        status text NOT NULL DEFAULT 'active',
        {AUDIT_COLUMNS},
        CONSTRAINT shared_user_pkey PRIMARY KEY (id),
        CONSTRAINT shared_user_email_check CHECK (email ~ '^[^@[:space:]]+@[^@[:space:]]+$'),
        CONSTRAINT shared_user_cpf_check CHECK (cpf IS NULL OR cpf ~ '^[0-9]{{11}}$'),
        CONSTRAINT shared_user_status_check CHECK (status IN ('active', 'suspended', 'closed'))
    )""",
    "CREATE UNIQUE INDEX shared_user_email_key ON shared.shared_user (lower(email)) "
    "WHERE deleted_at IS NULL",
    "CREATE UNIQUE INDEX shared_user_cpf_key ON shared.shared_user (cpf) "
    "WHERE cpf IS NOT NULL AND deleted_at IS NULL",
    f"""
    CREATE TABLE shared.shared_role (
        {ID_COLUMN},
        name text NOT NULL,
        journey text,
        description text NOT NULL DEFAULT '',
        {AUDIT_COLUMNS},
        CONSTRAINT shared_role_pkey PRIMARY KEY (id),
        CONSTRAINT shared_role_name_key UNIQUE (name),
        CONSTRAINT shared_role_journey_check
            CHECK (journey IS NULL OR journey IN ('health', 'care', 'plan', 'gamification'))
    )""",
    f"""
    CREATE TABLE shared.shared_permission (
        {ID_COLUMN},
        code text NOT NULL,
        journey text,
        description text NOT NULL DEFAULT '',
        {AUDIT_COLUMNS},
        CONSTRAINT shared_permission_pkey PRIMARY KEY (id),
        CONSTRAINT shared_permission_code_key UNIQUE (code),
        CONSTRAINT shared_permission_code_check CHECK (code ~ '^[a-z_]+(:[a-z_]+)+$'),
        CONSTRAINT shared_permission_journey_check
            CHECK (journey IS NULL OR journey IN ('health', 'care', 'plan', 'gamification'))
    )""",
    f"""
    CREATE TABLE shared.shared_user_role (
        {ID_COLUMN},
        user_id uuid NOT NULL,
        role_id uuid NOT NULL,
        {AUDIT_COLUMNS},
        CONSTRAINT shared_user_role_pkey PRIMARY KEY (id),
        CONSTRAINT shared_user_role_user_id_role_id_key UNIQUE (user_id, role_id),
        CONSTRAINT shared_user_role_shared_user_fk FOREIGN KEY (user_id)
            REFERENCES shared.shared_user (id) ON DELETE CASCADE,
        CONSTRAINT shared_user_role_shared_role_fk FOREIGN KEY (role_id)
            REFERENCES shared.shared_role (id) ON DELETE CASCADE
    )""",
    "CREATE INDEX shared_user_role_role_id_idx ON shared.shared_user_role (role_id)",
    f"""
    CREATE TABLE shared.shared_role_permission (
        {ID_COLUMN},
        role_id uuid NOT NULL,
        permission_id uuid NOT NULL,
        {AUDIT_COLUMNS},
        CONSTRAINT shared_role_permission_pkey PRIMARY KEY (id),
        CONSTRAINT shared_role_permission_role_id_permission_id_key UNIQUE (role_id, permission_id),
        CONSTRAINT shared_role_permission_shared_role_fk FOREIGN KEY (role_id)
            REFERENCES shared.shared_role (id) ON DELETE CASCADE,
        CONSTRAINT shared_role_permission_shared_permission_fk FOREIGN KEY (permission_id)
            REFERENCES shared.shared_permission (id) ON DELETE CASCADE
    )""",
    "CREATE INDEX shared_role_permission_permission_id_idx "
    "ON shared.shared_role_permission (permission_id)",
]

SAGA_TABLES = [
    f"""
    CREATE TABLE shared.saga_definition (
        {ID_COLUMN},
        name text NOT NULL,
        version integer NOT NULL,
        content_hash text NOT NULL,
        steps jsonb NOT NULL,
        {AUDIT_COLUMNS},
        CONSTRAINT saga_definition_pkey PRIMARY KEY (id),
        CONSTRAINT saga_definition_name_version_key UNIQUE (name, version),
        CONSTRAINT saga_definition_version_check CHECK (version >= 1),
        CONSTRAINT saga_definition_steps_check CHECK (jsonb_typeof(steps) = 'array')
    )""",
    f"""
    CREATE TABLE shared.saga_instance (
        {ID_COLUMN},
        saga_definition_id uuid NOT NULL,
        definition_name text NOT NULL,
        definition_version integer NOT NULL,
        status text NOT NULL DEFAULT 'running',
        current_step integer NOT NULL DEFAULT 0,
        step_attempt integer NOT NULL DEFAULT 1,
        step_deadline timestamptz,
        payload jsonb NOT NULL DEFAULT '{{}}'::jsonb,
        context jsonb NOT NULL DEFAULT '{{}}'::jsonb,
        idempotency_key text,
        deadline timestamptz,
        error text,
        version integer NOT NULL DEFAULT 1,
        started_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        {AUDIT_COLUMNS},
        CONSTRAINT saga_instance_pkey PRIMARY KEY (id),
        CONSTRAINT saga_instance_saga_definition_fk FOREIGN KEY (saga_definition_id)
            REFERENCES shared.saga_definition (id) ON DELETE RESTRICT,
        CONSTRAINT saga_instance_status_check CHECK (
            status IN ('running', 'compensating', 'completed', 'compensated', 'parked')
        ),
        CONSTRAINT saga_instance_current_step_check CHECK (current_step >= 0),
        CONSTRAINT saga_instance_step_attempt_check CHECK (step_attempt >= 1),
        CONSTRAINT saga_instance_version_check CHECK (version >= 1),
        CONSTRAINT saga_instance_parked_reason_check
            CHECK (status <> 'parked' OR error IS NOT NULL),
        CONSTRAINT saga_instance_finished_check CHECK (
            (status IN ('completed', 'compensated')) = (finished_at IS NOT NULL)
        )
    )""",
    "CREATE INDEX saga_instance_saga_definition_id_idx "
    "ON shared.saga_instance (saga_definition_id)",
    "CREATE UNIQUE INDEX saga_instance_idempotency_key "
    "ON shared.saga_instance (definition_name, idempotency_key) "
    "WHERE idempotency_key IS NOT NULL",
    # What is in flight, by when it must next be looked at: the timeout worker's scan.
    "CREATE INDEX saga_instance_in_flight_idx ON shared.saga_instance (step_deadline) "
    "WHERE status IN ('running', 'compensating')",
    "CREATE INDEX saga_instance_status_created_at_idx ON shared.saga_instance (status, created_at)",
    "CREATE INDEX saga_instance_definition_created_at_idx "
    "ON shared.saga_instance (definition_name, created_at)",
    "CREATE INDEX saga_instance_context_idx ON shared.saga_instance "
    "USING gin (context jsonb_path_ops)",
    f"""
    CREATE TABLE shared.saga_step_log (
        {ID_COLUMN},
        saga_instance_id uuid NOT NULL,
        step_index integer NOT NULL,
        step_name text NOT NULL,
        journey text NOT NULL,
        action text NOT NULL,
        status text NOT NULL,
        attempt integer NOT NULL DEFAULT 1,
        message_id uuid,
        request jsonb,
        response jsonb,
        error text,
        actor text,
        started_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        duration_ms double precision GENERATED ALWAYS AS (
            extract(epoch FROM (finished_at - started_at)) * 1000
        ) STORED,
        {AUDIT_COLUMNS},
        CONSTRAINT saga_step_log_pkey PRIMARY KEY (id),
        CONSTRAINT saga_step_log_saga_instance_fk FOREIGN KEY (saga_instance_id)
            REFERENCES shared.saga_instance (id) ON DELETE CASCADE,
        CONSTRAINT saga_step_log_action_check CHECK (action IN ('execute', 'compensate')),
        CONSTRAINT saga_step_log_status_check CHECK (
            status IN ('dispatched', 'succeeded', 'failed', 'timed_out', 'ignored',
                       'skipped', 'retried', 'aborted')
        ),
        CONSTRAINT saga_step_log_attempt_check CHECK (attempt >= 1),
        CONSTRAINT saga_step_log_step_index_check CHECK (step_index >= 0)
    )""",
    "CREATE INDEX saga_step_log_saga_instance_id_idx "
    "ON shared.saga_step_log (saga_instance_id, created_at)",
    "CREATE INDEX saga_step_log_step_created_at_idx "
    "ON shared.saga_step_log (step_name, created_at) WHERE finished_at IS NOT NULL",
    "CREATE INDEX saga_step_log_failures_idx ON shared.saga_step_log (created_at) "
    "WHERE status IN ('failed', 'timed_out')",
]

SAGA_OUTBOX = [
    f"""
    CREATE TABLE shared.saga_outbox (
        {ID_COLUMN},
        message_id uuid NOT NULL,
        saga_instance_id uuid NOT NULL,
        topic text NOT NULL,
        message_key text NOT NULL,
        payload jsonb NOT NULL,
        headers jsonb NOT NULL DEFAULT '{{}}'::jsonb,
        published_at timestamptz,
        publish_attempts integer NOT NULL DEFAULT 0,
        last_error text,
        {AUDIT_COLUMNS},
        CONSTRAINT saga_outbox_pkey PRIMARY KEY (id),
        CONSTRAINT saga_outbox_message_id_key UNIQUE (message_id),
        CONSTRAINT saga_outbox_saga_instance_fk FOREIGN KEY (saga_instance_id)
            REFERENCES shared.saga_instance (id) ON DELETE CASCADE,
        CONSTRAINT saga_outbox_publish_attempts_check CHECK (publish_attempts >= 0)
    )""",
    "CREATE INDEX saga_outbox_saga_instance_id_idx ON shared.saga_outbox (saga_instance_id)",
    "CREATE INDEX saga_outbox_unpublished_idx ON shared.saga_outbox (created_at) "
    "WHERE published_at IS NULL",
    "CREATE INDEX saga_outbox_published_at_idx ON shared.saga_outbox (published_at) "
    "WHERE published_at IS NOT NULL",
]

TRIGGERS = [
    *(
        updated_at_trigger("shared", table)
        for table in (
            "shared_user",
            "shared_role",
            "shared_permission",
            "shared_user_role",
            "shared_role_permission",
            "saga_definition",
            "saga_instance",
            "saga_step_log",
            "saga_outbox",
        )
    ),
    # The step log is history: rows are appended, never edited; retention may delete.
    append_only_trigger("shared", "saga_step_log", allow_delete=True),
]


def _create_roles() -> list[str]:
    statements = []
    for role in SERVICE_ROLES + MEMBER_ROLES:
        login = "LOGIN" if role in SERVICE_ROLES else "NOLOGIN"
        statements.append(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') "
            f"THEN CREATE ROLE {role} {login}; END IF; END $$"
        )
    return statements


GRANTS = [
    "GRANT USAGE ON SCHEMA shared TO " + ", ".join(SERVICE_ROLES + MEMBER_ROLES),
    # Every service reads the reference data it validates against.
    "GRANT SELECT ON shared.shared_user, shared.shared_role, shared.shared_permission, "
    "shared.shared_user_role, shared.shared_role_permission TO "
    + ", ".join(SERVICE_ROLES + MEMBER_ROLES),
    "GRANT EXECUTE ON FUNCTION shared.set_updated_at(), shared.forbid_mutation() TO "
    + ", ".join(SERVICE_ROLES),
    # The coordinator owns the saga log; journey services never write it.
    "GRANT SELECT, INSERT, UPDATE, DELETE ON shared.saga_definition, shared.saga_instance, "
    "shared.saga_step_log, shared.saga_outbox TO austa_saga_coordinator",
]


def upgrade() -> None:
    execute(
        [
            "CREATE SCHEMA shared",
            *FUNCTIONS,
            *REFERENCE_TABLES,
            *SAGA_TABLES,
            *SAGA_OUTBOX,
            *TRIGGERS,
            *_create_roles(),
            *GRANTS,
        ]
    )


def downgrade() -> None:
    execute(
        ["DROP SCHEMA shared CASCADE", *map(_drop_role_if_unused, SERVICE_ROLES + MEMBER_ROLES)]
    )


def _drop_role_if_unused(role: str) -> str:
    # DROP OWNED removes this database's grants and default privileges to the role; the
    # role itself goes only when no other database still refers to it.
    return f"""
            DO $$
            BEGIN
                IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                    EXECUTE 'DROP OWNED BY {role}';
                    IF NOT EXISTS (
                        SELECT FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid
                        WHERE r.rolname = '{role}'
                          AND d.dbid <> (SELECT oid FROM pg_database
                                         WHERE datname = current_database())
                    ) THEN
                        EXECUTE 'DROP ROLE {role}';
                    END IF;
                END IF;
            END $$"""
