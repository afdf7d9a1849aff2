"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

from alembic import op

revision = "${up_revision}"
down_revision: str | None = ${'"%s"' % down_revision if down_revision else None}
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Write plain SQL with op.execute; follow migrations/_ddl.py for the guide's columns,
    # triggers and grants. A DBA reviews it with `saga db sql`.
    raise NotImplementedError("write this migration's upgrade")


def downgrade() -> None:
    # Undo exactly what upgrade() did, leaving no object behind.
    raise NotImplementedError("write this migration's downgrade")
