"""add worker retention indexes: soft-deleted rows of the high-volume tables

Revision ID: 20261125171000
Revises: 20261125170000
Create Date: 2026-11-25 17:10:00

The soft-deleted purge looks for ``deleted_at < cutoff`` in every table that has the
column, every hour. On small tables a scan costs nothing; on the tables that grow with
every member's activity it would read the whole table to find the few rows soft-deleted,
so those get a partial index holding just them (it stays as small as the purge keeps it).
The partitioned parents' indexes are cloned to every partition, present and future.
"""

from __future__ import annotations

from migrations._ddl import execute

revision = "20261125171000"
down_revision: str | None = "20261125170000"
branch_labels: str | None = None
depends_on: str | None = None

TABLES = [
    ("shared", "shared_user"),
    ("health_journey", "health_metric"),
    ("care_journey", "care_slot"),
    ("care_journey", "care_appointment"),
    ("gamification", "gamification_event"),
]


def upgrade() -> None:
    execute(
        f"CREATE INDEX {table}_deleted_at_idx ON {schema}.{table} (deleted_at) "
        "WHERE deleted_at IS NOT NULL"
        for schema, table in TABLES
    )


def downgrade() -> None:
    execute(f"DROP INDEX {schema}.{table}_deleted_at_idx" for schema, table in reversed(TABLES))
