"""SQL fragments every revision uses, so the guide's conventions are written once.

Revisions are history: once a revision has been applied anywhere, do not change what a
function here returns for it. Add a new function (or a versioned one) instead.
"""

from __future__ import annotations

from collections.abc import Iterable

from alembic import op

# Columns every table carries, after its own: the guide's required fields.
AUDIT_COLUMNS = """
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
"""

ID_COLUMN = "id uuid NOT NULL DEFAULT gen_random_uuid()"


def updated_at_trigger(schema: str, table: str) -> str:
    """The trigger that keeps ``updated_at`` current on every UPDATE."""
    return (
        f"CREATE TRIGGER {table}_set_updated_at BEFORE UPDATE ON {schema}.{table} "
        f"FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at()"
    )


def append_only_trigger(schema: str, table: str, *, allow_delete: bool = False) -> str:
    """Refuse UPDATE (and DELETE unless ``allow_delete``) on a log or ledger table.

    ``allow_delete`` leaves room for retention jobs and cascades from a deleted parent.
    """
    events = "UPDATE" if allow_delete else "UPDATE OR DELETE"
    return (
        f"CREATE TRIGGER {table}_append_only BEFORE {events} ON {schema}.{table} "
        f"FOR EACH ROW EXECUTE FUNCTION shared.forbid_mutation()"
    )


def inbox_and_outbox(schema: str, prefix: str) -> list[str]:
    """A service's message inbox (dedup + stored reply) and transactional outbox, as the
    first revisions made them. Later revisions changed them; the current shape, for a new
    journey, is ``saga.journey_tables_sql``."""
    inbox, outbox = f"{prefix}_inbox", f"{prefix}_outbox"
    return [
        f"""
        CREATE TABLE {schema}.{inbox} (
            {ID_COLUMN},
            message_id uuid NOT NULL,
            saga_id uuid NOT NULL,
            step_name text NOT NULL,
            action text NOT NULL,
            attempt integer NOT NULL CHECK (attempt >= 1),
            reply jsonb NOT NULL,
            processed_at timestamptz NOT NULL DEFAULT now(),
            {AUDIT_COLUMNS},
            CONSTRAINT {inbox}_pkey PRIMARY KEY (id),
            CONSTRAINT {inbox}_message_id_key UNIQUE (message_id)
        )""",
        f"CREATE INDEX {inbox}_processed_at_idx ON {schema}.{inbox} (processed_at)",
        f"CREATE INDEX {inbox}_saga_id_idx ON {schema}.{inbox} (saga_id)",
        updated_at_trigger(schema, inbox),
        f"""
        CREATE TABLE {schema}.{outbox} (
            {ID_COLUMN},
            message_id uuid NOT NULL,
            topic text NOT NULL,
            message_key text NOT NULL,
            payload jsonb NOT NULL,
            headers jsonb NOT NULL DEFAULT '{{}}'::jsonb,
            published_at timestamptz,
            publish_attempts integer NOT NULL DEFAULT 0 CHECK (publish_attempts >= 0),
            last_error text,
            {AUDIT_COLUMNS},
            CONSTRAINT {outbox}_pkey PRIMARY KEY (id),
            CONSTRAINT {outbox}_message_id_key UNIQUE (message_id)
        )""",
        # The relay scans only what is still unpublished; retention scans what is published.
        f"CREATE INDEX {outbox}_unpublished_idx ON {schema}.{outbox} (created_at) "
        f"WHERE published_at IS NULL",
        f"CREATE INDEX {outbox}_published_at_idx ON {schema}.{outbox} (published_at) "
        f"WHERE published_at IS NOT NULL",
        updated_at_trigger(schema, outbox),
    ]


def grant_schema_to(schema: str, role: str) -> list[str]:
    """Give a service role the use of its own schema, now and for tables added later."""
    return [
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
        f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE, SELECT ON SEQUENCES TO {role}",
    ]


def revoke_default_privileges(schema: str, role: str) -> list[str]:
    """Undo :func:`grant_schema_to`'s default privileges (they outlive a dropped schema's
    tables only as catalog rows, which block dropping the role)."""
    return [
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} "
        f"REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} "
        f"REVOKE USAGE, SELECT ON SEQUENCES FROM {role}",
    ]


def drop_journey_schema(schema: str, role: str) -> list[str]:
    """A journey revision's whole downgrade: the default privileges go first, since they
    are catalog rows that would outlive the schema and keep its role from being dropped."""
    return [*revoke_default_privileges(schema, role), f"DROP SCHEMA {schema} CASCADE"]


def execute(statements: Iterable[str]) -> None:
    """Run each statement in order (one ``op.execute`` each, so offline SQL lists them)."""
    for statement in statements:
        op.execute(statement)
