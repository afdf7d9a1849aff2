"""update saga log for the background workers: deadlines, retry counts, archive tables

Revision ID: 20261125170000
Revises: 20261125160000
Create Date: 2026-11-25 17:00:00

- ``saga_instance_deadline_idx``: the deadline job's scan of running sagas that have an
  overall deadline.
- ``saga_step_log.serialization_retries`` / ``deadlock_retries``: how often the
  participant re-ran the step's transaction (SQLSTATE 40001 / 40P01) before it answered;
  ``shared.saga_step_retry_stats`` sums them per step and hour for alerting.
- ``shared.saga_instance_archive`` / ``shared.saga_step_log_archive``: where saga
  retention moves finished sagas and their step logs when RETENTION_SAGA_MODE=archive.
- ``shared.saga_instance`` and ``saga_step_log`` finished-saga indexes for retention.
"""

from __future__ import annotations

from migrations._ddl import AUDIT_COLUMNS, ID_COLUMN, execute, updated_at_trigger

revision = "20261125170000"
down_revision: str | None = "20261125160000"
branch_labels: str | None = None
depends_on: str | None = None

ARCHIVE_TABLES = [
    f"""
    CREATE TABLE shared.saga_instance_archive (
        {ID_COLUMN},
        saga_definition_id uuid NOT NULL,
        definition_name text NOT NULL,
        definition_version integer NOT NULL,
        status text NOT NULL,
        current_step integer NOT NULL,
        step_attempt integer NOT NULL,
        payload jsonb NOT NULL,
        context jsonb NOT NULL,
        idempotency_key text,
        deadline timestamptz,
        error text,
        version integer NOT NULL,
        started_at timestamptz NOT NULL,
        finished_at timestamptz NOT NULL,
        archived_at timestamptz NOT NULL DEFAULT now(),
        {AUDIT_COLUMNS},
        CONSTRAINT saga_instance_archive_pkey PRIMARY KEY (id),
        CONSTRAINT saga_instance_archive_saga_definition_fk FOREIGN KEY (saga_definition_id)
            REFERENCES shared.saga_definition (id) ON DELETE RESTRICT,
        CONSTRAINT saga_instance_archive_status_check
            CHECK (status IN ('completed', 'compensated'))
    )""",
    "CREATE INDEX saga_instance_archive_saga_definition_id_idx "
    "ON shared.saga_instance_archive (saga_definition_id)",
    "CREATE INDEX saga_instance_archive_definition_finished_at_idx "
    "ON shared.saga_instance_archive (definition_name, finished_at)",
    "CREATE INDEX saga_instance_archive_archived_at_idx "
    "ON shared.saga_instance_archive (archived_at)",
    f"""
    CREATE TABLE shared.saga_step_log_archive (
        {ID_COLUMN},
        saga_instance_id uuid NOT NULL,
        step_index integer NOT NULL,
        step_name text NOT NULL,
        journey text NOT NULL,
        action text NOT NULL,
        status text NOT NULL,
        attempt integer NOT NULL,
        message_id uuid,
        request jsonb,
        response jsonb,
        error text,
        actor text,
        started_at timestamptz NOT NULL,
        finished_at timestamptz,
        duration_ms double precision,
        serialization_retries integer NOT NULL DEFAULT 0,
        deadlock_retries integer NOT NULL DEFAULT 0,
        logged_at timestamptz NOT NULL,
        {AUDIT_COLUMNS},
        CONSTRAINT saga_step_log_archive_pkey PRIMARY KEY (id),
        CONSTRAINT saga_step_log_archive_saga_instance_archive_fk
            FOREIGN KEY (saga_instance_id)
            REFERENCES shared.saga_instance_archive (id) ON DELETE CASCADE
    )""",
    "CREATE INDEX saga_step_log_archive_saga_instance_id_idx "
    "ON shared.saga_step_log_archive (saga_instance_id, logged_at)",
    updated_at_trigger("shared", "saga_instance_archive"),
    updated_at_trigger("shared", "saga_step_log_archive"),
]

RETRY_STATS_VIEW = """
    CREATE VIEW shared.saga_step_retry_stats AS
    SELECT date_trunc('hour', l.finished_at) AS hour,
           i.definition_name,
           l.step_name,
           l.journey,
           l.action,
           count(*) AS answers,
           sum(l.serialization_retries) AS serialization_retries,
           sum(l.deadlock_retries) AS deadlock_retries,
           max(l.serialization_retries + l.deadlock_retries) AS most_in_one_answer
    FROM shared.saga_step_log l
    JOIN shared.saga_instance i ON i.id = l.saga_instance_id
    WHERE l.finished_at IS NOT NULL
      AND l.status IN ('succeeded', 'failed', 'retried')
    GROUP BY 1, 2, 3, 4, 5
"""


def upgrade() -> None:
    execute(
        [
            "CREATE INDEX saga_instance_deadline_idx ON shared.saga_instance (deadline) "
            "WHERE status = 'running' AND deadline IS NOT NULL",
            # Retention's scan: finished sagas, oldest first.
            "CREATE INDEX saga_instance_finished_at_idx ON shared.saga_instance (finished_at) "
            "WHERE finished_at IS NOT NULL",
            "ALTER TABLE shared.saga_step_log "
            "ADD COLUMN serialization_retries integer NOT NULL DEFAULT 0, "
            "ADD COLUMN deadlock_retries integer NOT NULL DEFAULT 0, "
            "ADD CONSTRAINT saga_step_log_retries_check "
            "CHECK (serialization_retries >= 0 AND deadlock_retries >= 0)",
            # The retry monitor reads recent answers by when they finished.
            "CREATE INDEX saga_step_log_finished_at_idx ON shared.saga_step_log (finished_at) "
            "WHERE serialization_retries > 0 OR deadlock_retries > 0",
            *ARCHIVE_TABLES,
            RETRY_STATS_VIEW,
            "GRANT SELECT, INSERT, UPDATE, DELETE ON shared.saga_instance_archive, "
            "shared.saga_step_log_archive TO austa_saga_coordinator",
            "GRANT SELECT ON shared.saga_step_retry_stats TO austa_saga_coordinator",
        ]
    )


def downgrade() -> None:
    execute(
        [
            "DROP VIEW shared.saga_step_retry_stats",
            "DROP TABLE shared.saga_step_log_archive",
            "DROP TABLE shared.saga_instance_archive",
            "DROP INDEX shared.saga_step_log_finished_at_idx",
            "ALTER TABLE shared.saga_step_log DROP CONSTRAINT saga_step_log_retries_check, "
            "DROP COLUMN serialization_retries, DROP COLUMN deadlock_retries",
            "DROP INDEX shared.saga_instance_finished_at_idx",
            "DROP INDEX shared.saga_instance_deadline_idx",
        ]
    )
