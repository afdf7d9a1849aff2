"""update saga log for operators: the aborted status and who acted

Revision ID: 20261125180000
Revises: 20261125171000
Create Date: 2026-11-25 18:00:00

- ``saga_instance.status`` may be ``aborted``: an operator stopped the saga with
  ``saga abort`` and took over; nothing drives or compensates it any more. It is
  finished (``finished_at`` is set), so retention moves it like any finished saga.
- The archive accepts aborted sagas too.
- ``saga_step_log_actor_idx``: the rows operators wrote (``actor`` is set only by
  manual actions), for "what did people do by hand lately".
- ``saga_instance_started_at_idx``: ``saga ls`` lists newest first and ``saga stats``
  counts the sagas started in a window. ``started_at`` never changes after the insert, so
  the index costs one entry per saga and does not stop HOT updates of transitions.
"""

from __future__ import annotations

from migrations._ddl import execute

revision = "20261125180000"
down_revision: str | None = "20261125171000"
branch_labels: str | None = None
depends_on: str | None = None


def _status_checks(statuses: str, finished: str) -> list[str]:
    return [
        "ALTER TABLE shared.saga_instance "
        "DROP CONSTRAINT saga_instance_status_check, "
        "DROP CONSTRAINT saga_instance_finished_check, "
        f"ADD CONSTRAINT saga_instance_status_check CHECK (status IN ({statuses})), "
        "ADD CONSTRAINT saga_instance_finished_check "
        f"CHECK ((status IN ({finished})) = (finished_at IS NOT NULL))",
        "ALTER TABLE shared.saga_instance_archive "
        "DROP CONSTRAINT saga_instance_archive_status_check, "
        f"ADD CONSTRAINT saga_instance_archive_status_check CHECK (status IN ({finished}))",
    ]


def upgrade() -> None:
    execute(
        [
            *_status_checks(
                "'running', 'compensating', 'completed', 'compensated', 'parked', 'aborted'",
                "'completed', 'compensated', 'aborted'",
            ),
            "CREATE INDEX saga_step_log_actor_idx ON shared.saga_step_log (created_at) "
            "WHERE actor IS NOT NULL",
            "CREATE INDEX saga_instance_started_at_idx "
            "ON shared.saga_instance (started_at DESC, id)",
        ]
    )


def downgrade() -> None:
    execute(
        [
            "DROP INDEX shared.saga_instance_started_at_idx",
            "DROP INDEX shared.saga_step_log_actor_idx",
            # An aborted saga has no place in the older schema: it was parked for a person.
            "UPDATE shared.saga_instance SET status = 'parked', finished_at = NULL, "
            "error = coalesce(error, 'aborted by an operator') WHERE status = 'aborted'",
            "DELETE FROM shared.saga_instance_archive WHERE status = 'aborted'",
            *_status_checks(
                "'running', 'compensating', 'completed', 'compensated', 'parked'",
                "'completed', 'compensated'",
            ),
        ]
    )
