"""update operator views for shapes: waiting sagas, signals, branches

Revision ID: 20261202090000
Revises: 20261126090000
Create Date: 2026-12-02 09:00:00

The operator views (``20261125181000_add_operator_views``) learn parallel groups and
waits. Every column they had keeps its name, type and place (``CREATE OR REPLACE VIEW``
only appends), so a query written against them still runs:

- ``shared.saga_stuck`` lists a waiting saga only once it is overdue: its wait's
  deadline (``step_deadline``) or the saga's own deadline has passed. Until then it is
  waiting as designed, not stuck. For a waiting saga ``step_started_at`` and
  ``stuck_for`` count from when it reached its wait. New columns: ``waiting_for`` (the
  event), ``position_kind`` (``step``, ``parallel``, ``await_event``, ``sub_saga``).
- ``shared.saga_failures``: a step row names its ``branch`` (NULL off a group).
- ``shared.saga_step_durations``: one row per branch of a group (``branch``), so a slow
  branch is not averaged with its siblings. A wait's rows (journey ``saga``) measure how
  long the signal took to come and are kept; rows a person wrote (``actor`` set: an
  operator's action, a signal's sender) are not attempts and are left out, as before.
- ``shared.saga_waiting`` (new): every waiting saga with its event, since when, until
  when, whether it is overdue and how many signals are kept for it.
"""

from __future__ import annotations

import importlib

from migrations._ddl import execute

revision = "20261202090000"
down_revision: str | None = "20261126090000"
branch_labels: str | None = None
depends_on: str | None = None

_WAITING_SINCE = """
    (SELECT max(w.started_at) FROM shared.saga_step_log w
     WHERE w.saga_instance_id = i.id AND w.step_index = i.current_step
       AND w.status = 'waiting')"""

STUCK_VIEW = f"""
    CREATE OR REPLACE VIEW shared.saga_stuck AS
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
               WHEN 'waiting' THEN 'execute'
               ELSE coalesce(
                   (SELECT l.action FROM shared.saga_step_log l
                    WHERE l.saga_instance_id = i.id
                      AND l.step_index = i.current_step
                      AND l.status <> 'ignored'
                    ORDER BY l.created_at DESC, l.started_at DESC
                    LIMIT 1),
                   'execute')
           END AS phase,
           s.since AS step_started_at,
           now() - s.since AS stuck_for,
           i.step_deadline,
           coalesce(i.step_deadline < now(), false)
               OR (i.status = 'waiting' AND coalesce(i.deadline < now(), false)) AS overdue,
           i.error,
           i.started_at,
           CASE WHEN i.status = 'waiting' THEN i.shape_state ->> 'waiting_for' END
               AS waiting_for,
           coalesce(d.steps -> i.current_step ->> 'kind', 'step') AS position_kind
    FROM shared.saga_instance i
    JOIN shared.saga_definition d ON d.id = i.saga_definition_id
    CROSS JOIN LATERAL (
        SELECT CASE WHEN i.status = 'waiting' THEN {_WAITING_SINCE}
                    ELSE i.step_started_at END AS since
    ) s
    WHERE i.status IN ('running', 'compensating', 'parked')
       OR (i.status = 'waiting' AND (i.step_deadline < now() OR i.deadline < now()))
"""

FAILURES_VIEW = """
    CREATE OR REPLACE VIEW shared.saga_failures AS
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
           l.created_at AS at,
           l.branch
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
           coalesce(i.finished_at, i.updated_at),
           NULL::integer
    FROM shared.saga_instance i
    JOIN shared.saga_definition d ON d.id = i.saga_definition_id
    WHERE i.status IN ('parked', 'compensated', 'aborted')
"""

DURATIONS_VIEW = """
    CREATE OR REPLACE VIEW shared.saga_step_durations AS
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
           count(*) FILTER (WHERE l.status = 'timed_out') AS timeouts,
           l.branch
    FROM shared.saga_step_log l
    JOIN shared.saga_instance i ON i.id = l.saga_instance_id
    WHERE l.finished_at IS NOT NULL
      AND l.status IN ('succeeded', 'failed', 'timed_out', 'retried')
      AND l.actor IS NULL
    GROUP BY 1, 2, 3, 4, 5, l.branch
"""

WAITING_VIEW = f"""
    CREATE VIEW shared.saga_waiting AS
    SELECT i.id AS saga_id,
           i.definition_name,
           i.definition_version,
           i.current_step,
           d.steps -> i.current_step ->> 'name' AS wait_name,
           i.shape_state ->> 'waiting_for' AS event,
           {_WAITING_SINCE} AS since,
           i.step_deadline AS until,
           i.deadline AS saga_deadline,
           coalesce(i.step_deadline < now(), false)
               OR coalesce(i.deadline < now(), false) AS overdue,
           (SELECT count(*) FROM shared.saga_signal g
            WHERE g.saga_instance_id = i.id AND g.consumed_at IS NULL) AS kept_signals,
           i.started_at
    FROM shared.saga_instance i
    JOIN shared.saga_definition d ON d.id = i.saga_definition_id
    WHERE i.status = 'waiting'
"""


def upgrade() -> None:
    execute(
        [
            STUCK_VIEW,
            FAILURES_VIEW,
            DURATIONS_VIEW,
            WAITING_VIEW,
            "GRANT SELECT ON shared.saga_waiting TO austa_saga_coordinator",
        ]
    )


def downgrade() -> None:
    # A view cannot lose columns in place: the earlier revision's views are made again.
    earlier = importlib.import_module("migrations.versions.20261125181000_add_operator_views")
    execute(
        [
            "DROP VIEW shared.saga_waiting",
            *(f"DROP VIEW shared.{view}" for view in reversed(earlier.VIEWS)),
            earlier.STUCK_VIEW,
            earlier.FAILURES_VIEW,
            earlier.DURATIONS_VIEW,
            "GRANT SELECT ON "
            + ", ".join(f"shared.{view}" for view in earlier.VIEWS)
            + " TO austa_saga_coordinator",
        ]
    )
