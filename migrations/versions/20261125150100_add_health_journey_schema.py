"""add health journey schema: metrics (hypertable or partitioned), goals, devices, templates

Revision ID: 20261125150100
Revises: 20261125150000
Create Date: 2026-11-25 15:01:00
"""

from __future__ import annotations

from collections.abc import Iterable

from migrations._ddl import (
    AUDIT_COLUMNS,
    ID_COLUMN,
    drop_journey_schema,
    execute,
    grant_schema_to,
    inbox_and_outbox,
    updated_at_trigger,
)

revision = "20261125150100"
down_revision: str | None = "20261125150000"
branch_labels: str | None = None
depends_on: str | None = None

SCHEMA = "health_journey"
SERVICE_ROLE = "austa_health_journey"

# metric_type -> (unit, lowest plausible value, highest plausible value). Values outside the
# range are input errors (a typo, a device glitch), refused by the database, not stored.
METRIC_TYPES: dict[str, tuple[str, str, str]] = {
    "heart_rate": ("bpm", "20", "300"),
    "blood_pressure_systolic": ("mmHg", "50", "300"),
    "blood_pressure_diastolic": ("mmHg", "20", "200"),
    "blood_glucose": ("mg/dL", "10", "1000"),
    "weight": ("kg", "0.5", "500"),
    "steps": ("steps", "0", "200000"),
    "sleep_hours": ("h", "0", "24"),
    "oxygen_saturation": ("%", "50", "100"),
    "body_temperature": ("°C", "30", "45"),
}

# goal_type -> unit. Shared by goals and the templates they are made from.
GOAL_TYPES: dict[str, str] = {
    "daily_steps": "steps",
    "weekly_exercise_minutes": "min",
    "daily_active_minutes": "min",
    "sleep_hours": "h",
    "weight_target": "kg",
    "blood_pressure_control": "mmHg",
    "blood_glucose_control": "mg/dL",
}


def _in_list(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _case(column: str, arms: dict[str, str]) -> str:
    """``CASE column WHEN 'k' THEN <expr> ... END``: NULL (passes) for unknown keys, which
    the column's own IN-list check refuses."""
    whens = "".join(f"\n            WHEN '{key}' THEN {expr}" for key, expr in arms.items())
    return f"CASE {column}{whens}\n        END"


METRIC_TYPE_LIST = _in_list(METRIC_TYPES)
METRIC_UNIT_CASE = _case(
    "metric_type", {t: f"unit = '{u}'" for t, (u, _, _) in METRIC_TYPES.items()}
)
METRIC_RANGE_CASE = _case(
    "metric_type", {t: f"value BETWEEN {lo} AND {hi}" for t, (_, lo, hi) in METRIC_TYPES.items()}
)
GOAL_TYPE_LIST = _in_list(GOAL_TYPES)
GOAL_UNIT_CASE = _case("goal_type", {t: f"unit = '{u}'" for t, u in GOAL_TYPES.items()})

REFERENCE_TABLES = [
    f"""
    CREATE TABLE health_journey.health_goal_template (
        {ID_COLUMN},
        code text NOT NULL,
        goal_type text NOT NULL,
        default_target_value numeric(12, 2) NOT NULL,
        unit text NOT NULL,
        default_period_days integer NOT NULL DEFAULT 7,
        points_reward integer NOT NULL DEFAULT 0,
        description text NOT NULL DEFAULT '',
        {AUDIT_COLUMNS},
        CONSTRAINT health_goal_template_pkey PRIMARY KEY (id),
        CONSTRAINT health_goal_template_code_key UNIQUE (code),
        CONSTRAINT health_goal_template_goal_type_check CHECK (goal_type IN ({GOAL_TYPE_LIST})),
        CONSTRAINT health_goal_template_unit_check CHECK ({GOAL_UNIT_CASE}),
        CONSTRAINT health_goal_template_default_target_value_check
            CHECK (default_target_value > 0),
        CONSTRAINT health_goal_template_default_period_days_check CHECK (default_period_days > 0),
        CONSTRAINT health_goal_template_points_reward_check CHECK (points_reward >= 0)
    )""",
    updated_at_trigger(SCHEMA, "health_goal_template"),
]

DEVICE_TABLES = [
    f"""
    CREATE TABLE health_journey.health_device_connection (
        {ID_COLUMN},
        user_id uuid NOT NULL,
        device_type text NOT NULL,
        provider_name text NOT NULL,
        external_device_id text NOT NULL,
        status text NOT NULL DEFAULT 'connected',
        connected_at timestamptz NOT NULL DEFAULT now(),
        last_synced_at timestamptz,
        {AUDIT_COLUMNS},
        CONSTRAINT health_device_connection_pkey PRIMARY KEY (id),
        CONSTRAINT health_device_connection_shared_user_fk FOREIGN KEY (user_id)
            REFERENCES shared.shared_user (id) ON DELETE CASCADE,
        CONSTRAINT health_device_connection_device_type_check CHECK (
            device_type IN ('smartwatch', 'fitness_tracker', 'blood_pressure_monitor',
                            'glucose_monitor', 'smart_scale')
        ),
        CONSTRAINT health_device_connection_status_check
            CHECK (status IN ('connected', 'disconnected', 'revoked')),
        CONSTRAINT health_device_connection_external_device_id_check
            CHECK (btrim(external_device_id) <> '')
    )""",
    "CREATE INDEX health_device_connection_user_id_status_idx "
    "ON health_journey.health_device_connection (user_id, status)",
    # One live connection per physical device; a soft-deleted one may be connected again.
    "CREATE UNIQUE INDEX health_device_connection_device_key "
    "ON health_journey.health_device_connection (user_id, device_type, external_device_id) "
    "WHERE deleted_at IS NULL",
    # The sync worker's scan: connected devices, least recently synced first.
    "CREATE INDEX health_device_connection_sync_idx "
    "ON health_journey.health_device_connection (last_synced_at NULLS FIRST) "
    "WHERE status = 'connected' AND deleted_at IS NULL",
    updated_at_trigger(SCHEMA, "health_device_connection"),
]

# The metric table's body, the same in both storage branches below.
METRIC_BODY = f"""
        {ID_COLUMN},
        user_id uuid NOT NULL,
        metric_type text NOT NULL,
        value numeric(10, 2) NOT NULL,
        unit text NOT NULL,
        recorded_at timestamptz NOT NULL,
        source text NOT NULL DEFAULT 'manual',
        device_connection_id uuid,
        notes text,
        {AUDIT_COLUMNS},
        CONSTRAINT health_metric_pkey PRIMARY KEY (id, recorded_at),
        CONSTRAINT health_metric_shared_user_fk FOREIGN KEY (user_id)
            REFERENCES shared.shared_user (id) ON DELETE CASCADE,
        CONSTRAINT health_metric_health_device_connection_fk FOREIGN KEY (device_connection_id)
            REFERENCES health_journey.health_device_connection (id) ON DELETE SET NULL,
        CONSTRAINT health_metric_metric_type_check CHECK (metric_type IN ({METRIC_TYPE_LIST})),
        CONSTRAINT health_metric_unit_check CHECK ({METRIC_UNIT_CASE}),
        CONSTRAINT health_metric_value_range_check CHECK ({METRIC_RANGE_CASE}),
        CONSTRAINT health_metric_source_check
            CHECK (source IN ('manual', 'device', 'integration', 'clinical'))
"""

# One statement decides the storage, so `alembic upgrade --sql` emits the same choice the
# online upgrade makes, on the server that runs it. It reads nothing a non-superuser owner
# may not read (``shared_preload_libraries`` needs pg_read_all_settings):
#
# - TimescaleDB already created in the database (by a DBA, say): a hypertable.
# - Its loader preloaded, so its own setting ``timescaledb.disable_load`` exists in this
#   session: the migration creates the extension and a hypertable. That needs a superuser,
#   or CREATE on the database (the extension is trusted); refused for want of either
#   (insufficient_privilege), the sub-block rolls back and native partitions are made.
# - Otherwise native partitions. CREATE EXTENSION is never tried without the loader: it
#   ends the connection (FATAL "must be preloaded"), which no handler can catch.
#
# Every branch runs in the migration's transaction, so a failure leaves no table behind.
# Native: monthly range partitions made ahead of time, and a DEFAULT partition so that no
# insert is ever refused for want of a partition; the maintenance worker keeps creating
# partitions ahead. The extension is not dropped on downgrade: other schemas may use it.
METRIC_TABLE = [
    f"""
    DO $$
    BEGIN
        IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb')
           AND current_setting('timescaledb.disable_load', true) IS NOT NULL
        THEN
            BEGIN
                CREATE EXTENSION IF NOT EXISTS timescaledb;
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE NOTICE 'native partitions: % may not create TimescaleDB (%)',
                    current_user, SQLERRM;
            END;
        END IF;
        IF EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN
            CREATE TABLE health_journey.health_metric ({METRIC_BODY});
            PERFORM create_hypertable(
                'health_journey.health_metric', 'recorded_at',
                chunk_time_interval => interval '7 days'
            );
        ELSE
            CREATE TABLE health_journey.health_metric ({METRIC_BODY})
            PARTITION BY RANGE (recorded_at);
            PERFORM shared.create_monthly_partitions('health_journey.health_metric', 1, 3);
            CREATE TABLE health_journey.health_metric_default
                PARTITION OF health_journey.health_metric DEFAULT;
        END IF;
    END $$""",
    # Time-range queries per user and type (charts, goal progress); also covers user_id.
    "CREATE INDEX health_metric_user_id_metric_type_recorded_at_idx "
    "ON health_journey.health_metric (user_id, metric_type, recorded_at DESC)",
    "CREATE INDEX health_metric_device_connection_id_idx "
    "ON health_journey.health_metric (device_connection_id)",
    # Created on the parent: PostgreSQL clones it to every partition (or chunk).
    updated_at_trigger(SCHEMA, "health_metric"),
]

GOAL_TABLES = [
    f"""
    CREATE TABLE health_journey.health_goal (
        {ID_COLUMN},
        user_id uuid NOT NULL,
        goal_template_id uuid,
        goal_type text NOT NULL,
        target_value numeric(12, 2) NOT NULL,
        unit text NOT NULL,
        period_start date NOT NULL,
        period_end date NOT NULL,
        status text NOT NULL DEFAULT 'active',
        completed_at timestamptz,
        completion_value numeric(12, 2),
        points_reward integer NOT NULL DEFAULT 0,
        saga_id uuid,
        {AUDIT_COLUMNS},
        CONSTRAINT health_goal_pkey PRIMARY KEY (id),
        CONSTRAINT health_goal_shared_user_fk FOREIGN KEY (user_id)
            REFERENCES shared.shared_user (id) ON DELETE CASCADE,
        CONSTRAINT health_goal_health_goal_template_fk FOREIGN KEY (goal_template_id)
            REFERENCES health_journey.health_goal_template (id) ON DELETE SET NULL,
        CONSTRAINT health_goal_goal_type_check CHECK (goal_type IN ({GOAL_TYPE_LIST})),
        CONSTRAINT health_goal_unit_check CHECK ({GOAL_UNIT_CASE}),
        CONSTRAINT health_goal_target_value_check CHECK (target_value > 0),
        CONSTRAINT health_goal_period_check CHECK (period_end >= period_start),
        CONSTRAINT health_goal_status_check
            CHECK (status IN ('active', 'completed', 'abandoned')),
        CONSTRAINT health_goal_completed_check
            CHECK ((status = 'completed') = (completed_at IS NOT NULL)),
        CONSTRAINT health_goal_completion_value_check
            CHECK (status <> 'completed' OR completion_value IS NOT NULL),
        CONSTRAINT health_goal_points_reward_check CHECK (points_reward >= 0)
    )""",
    "CREATE INDEX health_goal_user_id_period_start_idx "
    "ON health_journey.health_goal (user_id, period_start)",
    "CREATE INDEX health_goal_goal_template_id_idx "
    "ON health_journey.health_goal (goal_template_id)",
    # A member's current goals: the home screen's query.
    "CREATE INDEX health_goal_active_idx ON health_journey.health_goal (user_id, period_end) "
    "WHERE status = 'active' AND deleted_at IS NULL",
    # The cleanup worker looks for completions whose saga is gone.
    "CREATE INDEX health_goal_saga_id_idx ON health_journey.health_goal (saga_id) "
    "WHERE saga_id IS NOT NULL",
    updated_at_trigger(SCHEMA, "health_goal"),
]


def upgrade() -> None:
    execute(
        [
            f"CREATE SCHEMA {SCHEMA}",
            *REFERENCE_TABLES,
            *DEVICE_TABLES,
            *METRIC_TABLE,
            *GOAL_TABLES,
            *inbox_and_outbox(SCHEMA, "health"),
            *grant_schema_to(SCHEMA, SERVICE_ROLE),
        ]
    )


def downgrade() -> None:
    execute(drop_journey_schema(SCHEMA, SERVICE_ROLE))
