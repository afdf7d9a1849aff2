"""The health journey's background job: keeping the daily rollup of the metrics current.

``health_journey.health_metric_daily`` (migration 20261203120000, add_health_metric_rollup)
holds a row per member, metric type and day. Where the metrics are a TimescaleDB
hypertable it is a continuous aggregate that TimescaleDB's own policy refreshes, and this
job has nothing to do. Otherwise it is a materialized view: :data:`REFRESH_METRIC_DAILY`
refreshes it (``REFRESH MATERIALIZED VIEW CONCURRENTLY``, so readers are never blocked,
through ``health_journey.refresh_health_metric_daily()``, which has the owner's rights)
under the job's advisory lock, so that with several workers one refreshes and the others
skip their turn instead of queueing behind it for a second, identical refresh.
"""

from __future__ import annotations

from saga import BatchResult, Connection, Job, JobContext, try_job_lock

# Runs with the view owner's rights (the worker's role does not own it); true when it
# refreshed a materialized view, false where the rollup is a continuous aggregate.
REFRESH = "SELECT health_journey.refresh_health_metric_daily()"


async def refresh_metric_daily(ctx: JobContext) -> BatchResult:
    async def batch(conn: Connection) -> bool:
        if not await try_job_lock(conn, REFRESH_METRIC_DAILY.name):
            return False
        return bool(await conn.fetchval(REFRESH))

    if not await ctx.database.run_driver(batch, name=f"worker.{REFRESH_METRIC_DAILY.name}"):
        return BatchResult.nothing()
    return BatchResult(1, {"refreshed": 1})


REFRESH_METRIC_DAILY = Job(
    name="refresh_health_metric_daily",
    run=refresh_metric_daily,
    interval=900.0,
    batch=1,
    description=(
        "the health metrics' daily rollup refreshed (concurrently) where it is a "
        "materialized view; a TimescaleDB continuous aggregate refreshes itself"
    ),
    repeat_when_full=False,
)
