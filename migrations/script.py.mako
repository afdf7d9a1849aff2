"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

from migrations._ddl import execute

revision = "${up_revision}"
down_revision: str | None = ${'"%s"' % down_revision if down_revision else None}
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Plain SQL, one statement per string; migrations/_ddl.py has the guide's columns,
    # triggers and grants. A DBA reviews the result with `saga db sql`.
    execute([])
    raise NotImplementedError("write this migration's upgrade")


def downgrade() -> None:
    # Undo exactly what upgrade() did, leaving no object behind.
    execute([])
    raise NotImplementedError("write this migration's downgrade")
