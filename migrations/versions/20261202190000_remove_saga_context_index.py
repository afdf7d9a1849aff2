"""remove saga context index: no query reads the context by its contents

Revision ID: 20261202190000
Revises: 20261202110000
Create Date: 2026-12-02 19:00:00

``saga_instance_context_idx`` (GIN, ``jsonb_path_ops``) was made in the first shared
schema for containment queries on a saga's context that nothing ever ran: ``saga ls``
filters by status, definition, times, parent and ids, the views read columns, and the
console's searches will go through declared search attributes. Every transition rewrites
the context, so the index cost a GIN insertion per transition for no reader; the guide
asks for GIN indexes on JSONB fields *that are queried*. Downgrading makes it again.
"""

from __future__ import annotations

from migrations._ddl import execute

revision = "20261202190000"
down_revision: str | None = "20261202110000"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    execute(["DROP INDEX shared.saga_instance_context_idx"])


def downgrade() -> None:
    execute(
        [
            "CREATE INDEX saga_instance_context_idx ON shared.saga_instance "
            "USING gin (context jsonb_path_ops)"
        ]
    )
