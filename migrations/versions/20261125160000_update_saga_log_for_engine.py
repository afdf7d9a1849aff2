"""update saga log for the engine: dispatch times, delayed outbox rows, definition timeouts

Revision ID: 20261125160000
Revises: 20261125150400
Create Date: 2026-11-25 16:00:00

- ``saga_instance.step_started_at``: when the current attempt was dispatched, so the step
  log can record each attempt's duration.
- ``available_at`` on every outbox: a retry dispatched with backoff is committed at once
  but published only from then; the relay sweeps rows by it.
- ``saga_definition.timeout_seconds``: the overall deadline of an instance.
"""

from __future__ import annotations

from migrations._ddl import execute

revision = "20261125160000"
down_revision: str | None = "20261125150400"
branch_labels: str | None = None
depends_on: str | None = None

OUTBOXES = [
    ("shared", "saga_outbox"),
    ("health_journey", "health_outbox"),
    ("care_journey", "care_outbox"),
    ("plan_journey", "plan_outbox"),
    ("gamification", "gamification_outbox"),
]


def upgrade() -> None:
    statements = [
        "ALTER TABLE shared.saga_definition ADD COLUMN timeout_seconds double precision, "
        "ADD CONSTRAINT saga_definition_timeout_seconds_check "
        "CHECK (timeout_seconds IS NULL OR timeout_seconds > 0)",
        "ALTER TABLE shared.saga_instance ADD COLUMN step_started_at timestamptz",
    ]
    for schema, table in OUTBOXES:
        statements += [
            f"ALTER TABLE {schema}.{table} "
            "ADD COLUMN available_at timestamptz NOT NULL DEFAULT now()",
            f"DROP INDEX {schema}.{table}_unpublished_idx",
            f"CREATE INDEX {table}_unpublished_idx ON {schema}.{table} (available_at) "
            "WHERE published_at IS NULL",
        ]
    execute(statements)


def downgrade() -> None:
    statements = []
    for schema, table in reversed(OUTBOXES):
        statements += [
            f"DROP INDEX {schema}.{table}_unpublished_idx",
            f"CREATE INDEX {table}_unpublished_idx ON {schema}.{table} (created_at) "
            "WHERE published_at IS NULL",
            f"ALTER TABLE {schema}.{table} DROP COLUMN available_at",
        ]
    statements += [
        "ALTER TABLE shared.saga_instance DROP COLUMN step_started_at",
        "ALTER TABLE shared.saga_definition DROP CONSTRAINT saga_definition_timeout_seconds_check, "
        "DROP COLUMN timeout_seconds",
    ]
    execute(statements)
