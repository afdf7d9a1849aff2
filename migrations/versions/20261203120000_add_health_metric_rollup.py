"""add health metric rollup: a daily row per member and metric type; compression on TimescaleDB

Revision ID: 20261203120000
Revises: 20261203090000
Create Date: 2026-12-03 12:00:00

``health_journey.health_metric_daily`` holds, for each member, metric type and day, the
number of readings and their lowest, highest, mean and total value (soft-deleted readings
left out). A day is the member's day in Brazil's main time zone (America/Sao_Paulo), as
for the goals' periods; ``day`` is the timestamp at which it began.

The storage follows the metric table's, decided by one statement as in 20261125150100
(add_health_journey_schema), but on what that migration made rather than on the extension
alone: a table made natively partitioned before a DBA added TimescaleDB stays so.

- ``health_metric`` is a TimescaleDB hypertable: the rollup is a continuous aggregate
  (created empty, since one with data cannot be made inside the migration's transaction;
  its refresh policy fills it within the hour). It is real-time (``materialized_only =
  false``), so today's readings show before the policy has materialized them. The policy
  refreshes the last month every hour, so days older than that keep their rows when the
  worker drops their raw chunks (HEALTH_METRICS_RETENTION_MONTHS). Chunks older than a
  month are compressed, segmented by member and metric type, the way every query reads
  them.
- Otherwise a plain materialized view, with the unique index that ``REFRESH MATERIALIZED
  VIEW CONCURRENTLY`` needs; the worker job ``refresh_health_metric_daily`` refreshes it.
  It is computed from the rows still attached, so a month detached or dropped past
  retention leaves the rollup at its next refresh.

The health journey's role may read the rollup and nothing more. The downgrade drops it and,
on TimescaleDB, decompresses every chunk and turns compression off again (the policies go
with them).
"""

from __future__ import annotations

from migrations._ddl import execute

revision = "20261203120000"
down_revision: str | None = "20261203090000"
branch_labels: str | None = None
depends_on: str | None = None

SERVICE_ROLE = "austa_health_journey"
MEMBER_TIMEZONE = "America/Sao_Paulo"

# The columns both storages give the rollup, over the bucket expression of each.
ROLLUP_COLUMNS = """
        m.user_id,
        m.metric_type,
        {bucket} AS day,
        count(*) AS readings,
        min(m.value) AS min_value,
        max(m.value) AS max_value,
        avg(m.value) AS avg_value,
        sum(m.value) AS sum_value
    FROM health_journey.health_metric m
    WHERE m.deleted_at IS NULL
    GROUP BY m.user_id, m.metric_type, {bucket}"""

TIMESCALE_BUCKET = f"time_bucket('1 day', m.recorded_at, '{MEMBER_TIMEZONE}')"
PLAIN_BUCKET = f"date_trunc('day', m.recorded_at, '{MEMBER_TIMEZONE}')"

# Nested IFs: PL/pgSQL parses a statement only when it runs, so the TimescaleDB catalog is
# named only where it exists.
ROLLUP = f"""
    DO $$
    DECLARE
        hypertable boolean := false;
    BEGIN
        IF to_regclass('_timescaledb_catalog.hypertable') IS NOT NULL THEN
            hypertable := EXISTS (
                SELECT FROM _timescaledb_catalog.hypertable
                WHERE schema_name = 'health_journey' AND table_name = 'health_metric'
            );
        END IF;
        IF hypertable THEN
            CREATE MATERIALIZED VIEW health_journey.health_metric_daily
            WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
            SELECT {ROLLUP_COLUMNS.format(bucket=TIMESCALE_BUCKET)}
            WITH NO DATA;
            PERFORM add_continuous_aggregate_policy(
                'health_journey.health_metric_daily',
                start_offset => interval '1 month',
                end_offset => interval '1 hour',
                schedule_interval => interval '1 hour'
            );
            ALTER TABLE health_journey.health_metric SET (
                timescaledb.compress,
                timescaledb.compress_segmentby = 'user_id, metric_type',
                timescaledb.compress_orderby = 'recorded_at DESC, id'
            );
            PERFORM add_compression_policy(
                'health_journey.health_metric', compress_after => interval '1 month'
            );
        ELSE
            CREATE MATERIALIZED VIEW health_journey.health_metric_daily AS
            SELECT {ROLLUP_COLUMNS.format(bucket=PLAIN_BUCKET)}
            WITH DATA;
            CREATE UNIQUE INDEX health_metric_daily_user_id_metric_type_day_key
                ON health_journey.health_metric_daily (user_id, metric_type, day);
        END IF;
    END $$"""

# Refreshing needs ownership (before PostgreSQL 17), so the worker, which does not own
# the view, calls this function, which runs with the owner's rights (as the leaderboard's
# does). It refreshes only a materialized view: a continuous aggregate refreshes itself.
REFRESH_FUNCTION = [
    """
    CREATE FUNCTION health_journey.refresh_health_metric_daily() RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, health_journey AS $$
    BEGIN
        IF (SELECT relkind FROM pg_class
            WHERE oid = 'health_journey.health_metric_daily'::regclass) <> 'm' THEN
            RETURN false;
        END IF;
        REFRESH MATERIALIZED VIEW CONCURRENTLY health_journey.health_metric_daily;
        RETURN true;
    END $$""",
    "REVOKE EXECUTE ON FUNCTION health_journey.refresh_health_metric_daily() FROM PUBLIC",
]

GRANTS = [
    # The schema's default privileges gave the role write privileges; it only reads.
    f"REVOKE ALL ON health_journey.health_metric_daily FROM {SERVICE_ROLE}",
    f"GRANT SELECT ON health_journey.health_metric_daily TO {SERVICE_ROLE}",
]

UNDO_COMPRESSION = """
    DO $$
    BEGIN
        IF to_regclass('timescaledb_information.hypertables') IS NOT NULL THEN
            IF EXISTS (
                SELECT FROM timescaledb_information.hypertables
                WHERE hypertable_schema = 'health_journey'
                  AND hypertable_name = 'health_metric'
                  AND compression_enabled
            ) THEN
                PERFORM remove_compression_policy(
                    'health_journey.health_metric', if_exists => true
                );
                PERFORM decompress_chunk(chunk, if_compressed => true)
                FROM show_chunks('health_journey.health_metric') AS chunk;
                ALTER TABLE health_journey.health_metric SET (timescaledb.compress = false);
            END IF;
        END IF;
    END $$"""


def upgrade() -> None:
    execute([ROLLUP, *REFRESH_FUNCTION, *GRANTS])


def downgrade() -> None:
    # DROP MATERIALIZED VIEW drops a continuous aggregate too, with its refresh policy.
    execute(
        [
            "DROP FUNCTION health_journey.refresh_health_metric_daily()",
            "DROP MATERIALIZED VIEW health_journey.health_metric_daily",
            UNDO_COMPRESSION,
        ]
    )
