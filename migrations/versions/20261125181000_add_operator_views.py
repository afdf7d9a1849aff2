"""add operator views: what is stuck, what failed and why, how long steps take

Revision ID: 20261125181000
Revises: 20261125180000
Create Date: 2026-11-25 18:10:00

Views in ``shared`` that answer an operator's first questions from psql, without the
``saga`` CLI (``saga ls``, ``show`` and ``stats`` read the same tables):

- ``shared.saga_stuck``: every saga in flight or parked, with its current step's name and
  journey (from the stored definition of its version), the attempt and phase, how long
  the current attempt has been going (``stuck_for``) and whether its deadline has passed
  (``overdue``). A parked saga's phase is that of the last row its current step logged
  (replies the coordinator ignored do not count), as the manual actions read it.
- ``shared.saga_failures``: every failed, timed-out, retried or aborted step-log row
  (``source = 'step'``, with the operator in ``actor`` for rows written by hand), and the
  reason of every parked, compensated or aborted saga (``source = 'saga'``). A
  compensated saga's row names no step: its current step is where compensation ended,
  while the step that failed is named in the reason.
- ``shared.saga_step_durations``: per hour (of the outcome), definition, step, journey and
  phase (``action``): how many attempts ended and the p50/p95/p99/max of ``duration_ms``,
  with how many failed, were retried or timed out. Rows operators wrote by hand are not
  attempts and are left out.

Sagas moved to the archive by retention are in none of them.
"""

from __future__ import annotations

from migrations._ddl import execute

revision = "20261125181000"
down_revision: str | None = "20261125180000"
branch_labels: str | None = None
depends_on: str | None = None

STUCK_VIEW = """
    CREATE VIEW shared.saga_stuck AS
    SELECT i.id AS saga_id,
           i.definition_name,
           i.definition_version,
           i.status,
           i.current_step,
           d.steps -> i.current_step ->> 'name' AS step_name,
           d.steps -> i.current_step ->> 'journey' AS journey,
           i.step_attempt AS attempt,
           CASE i.status
               WHEN 'running' THEN 'execute'
               WHEN 'compensating' THEN 'compensate'
               ELSE coalesce(
                   (SELECT l.action FROM shared.saga_step_log l
                    WHERE l.saga_instance_id = i.id
                      AND l.step_index = i.current_step
                      AND l.status <> 'ignored'
                    ORDER BY l.created_at DESC, l.started_at DESC
                    LIMIT 1),
                   'execute')
           END AS phase,
           i.step_started_at,
           now() - i.step_started_at AS stuck_for,
           i.step_deadline,
           coalesce(i.step_deadline < now(), false) AS overdue,
           i.error,
           i.started_at
    FROM shared.saga_instance i
    JOIN shared.saga_definition d ON d.id = i.saga_definition_id
    WHERE i.status IN ('running', 'compensating', 'parked')
"""

FAILURES_VIEW = """
    CREATE VIEW shared.saga_failures AS
    SELECT 'step'::text AS source,
           l.saga_instance_id AS saga_id,
           i.definition_name,
           l.step_index,
           l.step_name,
           l.journey,
           l.action,
           l.attempt,
           l.status,
           l.error,
           l.actor,
           l.created_at AS at
    FROM shared.saga_step_log l
    JOIN shared.saga_instance i ON i.id = l.saga_instance_id
    WHERE l.status IN ('failed', 'timed_out', 'retried', 'aborted')
    UNION ALL
    SELECT 'saga'::text,
           i.id,
           i.definition_name,
           CASE WHEN i.status <> 'compensated' THEN i.current_step END,
           CASE WHEN i.status <> 'compensated' THEN d.steps -> i.current_step ->> 'name' END,
           CASE WHEN i.status <> 'compensated' THEN d.steps -> i.current_step ->> 'journey' END,
           NULL::text,
           i.step_attempt,
           i.status,
           i.error,
           NULL::text,
           coalesce(i.finished_at, i.updated_at)
    FROM shared.saga_instance i
    JOIN shared.saga_definition d ON d.id = i.saga_definition_id
    WHERE i.status IN ('parked', 'compensated', 'aborted')
"""

DURATIONS_VIEW = """
    CREATE VIEW shared.saga_step_durations AS
    SELECT date_trunc('hour', l.finished_at) AS hour,
           i.definition_name,
           l.step_name,
           l.journey,
           l.action,
           count(*) AS answers,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY l.duration_ms) AS p50_ms,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY l.duration_ms) AS p95_ms,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY l.duration_ms) AS p99_ms,
           max(l.duration_ms) AS max_ms,
           count(*) FILTER (WHERE l.status = 'failed') AS failures,
           count(*) FILTER (WHERE l.status = 'retried') AS retries,
           count(*) FILTER (WHERE l.status = 'timed_out') AS timeouts
    FROM shared.saga_step_log l
    JOIN shared.saga_instance i ON i.id = l.saga_instance_id
    WHERE l.finished_at IS NOT NULL
      AND l.status IN ('succeeded', 'failed', 'timed_out', 'retried')
      AND l.actor IS NULL
    GROUP BY 1, 2, 3, 4, 5
"""

VIEWS = ("saga_stuck", "saga_failures", "saga_step_durations")


def upgrade() -> None:
    execute(
        [
            STUCK_VIEW,
            FAILURES_VIEW,
            DURATIONS_VIEW,
            "GRANT SELECT ON "
            + ", ".join(f"shared.{view}" for view in VIEWS)
            + " TO austa_saga_coordinator",
        ]
    )


def downgrade() -> None:
    execute(f"DROP VIEW shared.{view}" for view in reversed(VIEWS))
