"""update saga log for shapes: parallel groups, waits and signals

Revision ID: 20261126090000
Revises: 20261125181000
Create Date: 2026-11-26 09:00:00

- ``saga_instance.status`` may be ``waiting``: the saga is paused at an ``AwaitEvent``
  until its signal or its timeout (``step_deadline`` is the wait's deadline). The
  timeout worker's scans (``saga_instance_in_flight_idx``, ``saga_instance_deadline_idx``)
  cover waiting sagas too.
- ``saga_instance.shape_state``: the state machine's fields beyond a straight line (a
  parallel group's branches, the event a saga waits for) and the clock of each branch in
  flight (``clock``: branch → when its attempt started and its deadline); NULL for a
  straight-line saga, whose row is exactly what it was. At a group, ``step_deadline`` is
  the earliest deadline of a branch in flight, so the timeout worker's claim is unchanged.
- ``saga_step_log.branch`` (and the archive's): which branch of a parallel group a row is
  about; NULL for every other row. The step log's status may be ``waiting``.
- ``shared.saga_signal``: every signal sent to a saga (``Coordinator.signal``, ``saga
  signal``), idempotent by ``signal_id``. Written once; the only change a row may see is
  being consumed (``consumed_at``, ``consumed_by_transition``: the instance version that
  consumed it), once. Its rows go with their saga (ON DELETE CASCADE), as its step log
  does when retention deletes or archives it.
"""

from __future__ import annotations

from migrations._ddl import AUDIT_COLUMNS, ID_COLUMN, execute, updated_at_trigger

revision = "20261126090000"
down_revision: str | None = "20261125181000"
branch_labels: str | None = None
depends_on: str | None = None

_INSTANCE_STATUSES = "'running', 'compensating', 'completed', 'compensated', 'parked', 'aborted'"
_LOG_STATUSES = (
    "'dispatched', 'succeeded', 'failed', 'timed_out', 'ignored', 'skipped', 'retried', 'aborted'"
)


def _checks(instance_statuses: str, log_statuses: str) -> list[str]:
    return [
        "ALTER TABLE shared.saga_instance DROP CONSTRAINT saga_instance_status_check, "
        f"ADD CONSTRAINT saga_instance_status_check CHECK (status IN ({instance_statuses}))",
        "ALTER TABLE shared.saga_step_log DROP CONSTRAINT saga_step_log_status_check, "
        f"ADD CONSTRAINT saga_step_log_status_check CHECK (status IN ({log_statuses}))",
    ]


def _scan_indexes(in_flight: str, running: str) -> list[str]:
    return [
        "DROP INDEX shared.saga_instance_in_flight_idx",
        "CREATE INDEX saga_instance_in_flight_idx ON shared.saga_instance (step_deadline) "
        f"WHERE status IN ({in_flight})",
        "DROP INDEX shared.saga_instance_deadline_idx",
        "CREATE INDEX saga_instance_deadline_idx ON shared.saga_instance (deadline) "
        f"WHERE status IN ({running}) AND deadline IS NOT NULL",
    ]


SIGNAL_FUNCTION = """
    CREATE FUNCTION shared.saga_signal_consume_once() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE'
           AND OLD.consumed_at IS NULL AND NEW.consumed_at IS NOT NULL
           AND (NEW.id, NEW.saga_instance_id, NEW.event, NEW.signal_id, NEW.payload,
                NEW.actor, NEW.reason, NEW.received_at, NEW.created_at)
               IS NOT DISTINCT FROM
               (OLD.id, OLD.saga_instance_id, OLD.event, OLD.signal_id, OLD.payload,
                OLD.actor, OLD.reason, OLD.received_at, OLD.created_at)
        THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'shared.saga_signal is append-only: a signal may only be consumed, once'
            USING ERRCODE = 'restrict_violation',
                  HINT = 'send a new signal with a new signal_id instead';
    END $$"""

SIGNAL_TABLE = [
    SIGNAL_FUNCTION,
    f"""
    CREATE TABLE shared.saga_signal (
        {ID_COLUMN},
        saga_instance_id uuid NOT NULL,
        event text NOT NULL,
        signal_id text NOT NULL,
        payload jsonb NOT NULL DEFAULT '{{}}'::jsonb,
        actor text,
        reason text,
        received_at timestamptz NOT NULL DEFAULT now(),
        consumed_at timestamptz,
        consumed_by_transition integer,
        {AUDIT_COLUMNS},
        CONSTRAINT saga_signal_pkey PRIMARY KEY (id),
        CONSTRAINT saga_signal_signal_id_key UNIQUE (signal_id),
        CONSTRAINT saga_signal_saga_instance_fk FOREIGN KEY (saga_instance_id)
            REFERENCES shared.saga_instance (id) ON DELETE CASCADE,
        CONSTRAINT saga_signal_payload_check CHECK (jsonb_typeof(payload) = 'object'),
        CONSTRAINT saga_signal_consumed_check
            CHECK ((consumed_at IS NULL) = (consumed_by_transition IS NULL))
    )""",
    "CREATE INDEX saga_signal_saga_instance_id_idx "
    "ON shared.saga_signal (saga_instance_id, event, received_at)",
    updated_at_trigger("shared", "saga_signal"),
    # Runs after the updated_at trigger (triggers fire in name order), which it allows.
    "CREATE TRIGGER saga_signal_z_consume_once BEFORE UPDATE ON shared.saga_signal "
    "FOR EACH ROW EXECUTE FUNCTION shared.saga_signal_consume_once()",
    "GRANT EXECUTE ON FUNCTION shared.saga_signal_consume_once() TO austa_saga_coordinator",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON shared.saga_signal TO austa_saga_coordinator",
]


def upgrade() -> None:
    execute(
        [
            *_checks(f"{_INSTANCE_STATUSES}, 'waiting'", f"{_LOG_STATUSES}, 'waiting'"),
            "ALTER TABLE shared.saga_instance ADD COLUMN shape_state jsonb, "
            "ADD CONSTRAINT saga_instance_shape_state_check "
            "CHECK (shape_state IS NULL OR jsonb_typeof(shape_state) = 'object')",
            "ALTER TABLE shared.saga_step_log ADD COLUMN branch integer, "
            "ADD CONSTRAINT saga_step_log_branch_check CHECK (branch >= 0)",
            "ALTER TABLE shared.saga_step_log_archive ADD COLUMN branch integer",
            *_scan_indexes("'running', 'compensating', 'waiting'", "'running', 'waiting'"),
            *SIGNAL_TABLE,
        ]
    )


def downgrade() -> None:
    execute(
        [
            "DROP TABLE shared.saga_signal",
            "DROP FUNCTION shared.saga_signal_consume_once()",
            *_scan_indexes("'running', 'compensating'", "'running'"),
            # The older schema has no waiting saga, and its engine could not drive one
            # (nor a parallel group): a person takes each over.
            "UPDATE shared.saga_instance SET status = 'parked', "
            "error = coalesce(error, 'paused at a wait or a parallel group when the schema "
            "was downgraded') WHERE status = 'waiting' "
            "OR (shape_state IS NOT NULL AND status IN ('running', 'compensating'))",
            # The step log refuses UPDATE: the rows the older schema cannot hold go.
            "DELETE FROM shared.saga_step_log WHERE status = 'waiting'",
            "ALTER TABLE shared.saga_step_log_archive DROP COLUMN branch",
            "ALTER TABLE shared.saga_step_log DROP COLUMN branch",
            "ALTER TABLE shared.saga_instance DROP COLUMN shape_state",
            *_checks(_INSTANCE_STATUSES, _LOG_STATUSES),
        ]
    )
