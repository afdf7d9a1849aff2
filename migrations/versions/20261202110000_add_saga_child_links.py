"""add saga child links: a child saga knows its parent

Revision ID: 20261202110000
Revises: 20261202090000
Create Date: 2026-12-02 11:00:00

- ``saga_instance.parent_id``, ``parent_step``, ``parent_attempt``: a child saga started
  by a parent's ``SubSaga`` position names its parent, the position and the attempt that
  started it (all NULL for a saga started by a caller). The child's end is delivered to
  that parent position. ``parent_id`` is indexed (``saga ls --children-of`` and the
  parent's view of its children read it) and ``ON DELETE SET NULL (parent_id)``: retention
  deleting a finished parent never takes a child's history with it; the child keeps its
  position and attempt as a record of where it came from.
- The parent's side of the link is its shape state (``child_id`` while it waits on the
  child) and the child's idempotency key, ``child-of:<parent>/<position>/<attempt>``.
"""

from __future__ import annotations

from migrations._ddl import execute

revision = "20261202110000"
down_revision: str | None = "20261202090000"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    execute(
        [
            "ALTER TABLE shared.saga_instance "
            "ADD COLUMN parent_id uuid, "
            "ADD COLUMN parent_step integer, "
            "ADD COLUMN parent_attempt integer, "
            "ADD CONSTRAINT saga_instance_saga_instance_parent_fk FOREIGN KEY (parent_id) "
            "REFERENCES shared.saga_instance (id) ON DELETE SET NULL (parent_id), "
            "ADD CONSTRAINT saga_instance_parent_check CHECK ("
            "(parent_step IS NULL) = (parent_attempt IS NULL) "
            "AND (parent_id IS NULL OR parent_step IS NOT NULL) "
            "AND (parent_step IS NULL OR (parent_step >= 0 AND parent_attempt >= 1)))",
            "CREATE INDEX saga_instance_parent_id_idx ON shared.saga_instance (parent_id)",
        ]
    )


def downgrade() -> None:
    execute(
        [
            # The older engine cannot deliver a child's end to its parent: a parent waiting
            # on a child is handed to a person.
            "UPDATE shared.saga_instance SET status = 'parked', "
            "error = coalesce(error, 'waiting on a child saga when the schema was downgraded') "
            "WHERE status IN ('running', 'compensating') AND shape_state ? 'child'",
            "DROP INDEX shared.saga_instance_parent_id_idx",
            "ALTER TABLE shared.saga_instance DROP CONSTRAINT saga_instance_parent_check, "
            "DROP CONSTRAINT saga_instance_saga_instance_parent_fk, DROP COLUMN parent_attempt, "
            "DROP COLUMN parent_step, DROP COLUMN parent_id",
        ]
    )
