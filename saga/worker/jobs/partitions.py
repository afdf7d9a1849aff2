"""Partition maintenance: monthly partitions made ahead, old ones detached.

Each journey names its monthly range-partitioned tables with a
:class:`~saga.worker.policies.PartitionPolicy`. The partitions for this month and
PARTITIONS_MONTHS_AHEAD months ahead are created (``shared.create_monthly_partitions``),
so rows land in their month, not in the ``_default`` partition. With ``retention_months``,
a partition ``<parent>_pYYYYMM`` whose whole month ended at least that many months ago
is detached; the table stays, for an operator to archive or drop.

This is not row-shaped work, so one worker does it at a time (``try_job_lock``). Creating
or detaching a partition takes an exclusive lock on the parent: a short ``lock_timeout``
makes a busy table wait for the next run instead of queueing its readers behind us.
"""

from __future__ import annotations

import re

import structlog

from saga.errors import DatabaseError
from saga.store.driver import DriverConnection
from saga.worker.job import BatchResult, Job, JobContext, try_job_lock
from saga.worker.policies import PartitionPolicy

log = structlog.get_logger("saga.worker")

JOB_NAME = "partition_maintenance"
LOCK_TIMEOUT = "5s"
# Conflicts PostgreSQL resolves by retrying the whole transaction: let the runner do it.
_RETRIED = {"40001", "40P01"}

_PARENT = """
SELECT c.oid, c.relkind::text AS relkind, c.relname,
       format('%I.%I', n.nspname, c.relname) AS qualified,
       extract(year FROM now())::int * 12 + extract(month FROM now())::int - 1 AS this_month
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1)
"""

_PARTITIONS = """
SELECT format('%I.%I', n.nspname, c.relname) AS qualified, c.relname
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.inhparent = $1
ORDER BY c.relname
"""


async def _maintain(
    conn: DriverConnection, policy: PartitionPolicy, months_ahead: int
) -> tuple[int, int] | None:
    """(created, detached) for one table, or None when it is not natively partitioned."""
    parent = await conn.fetchrow(_PARENT, policy.table)
    if parent is None or parent["relkind"] != "p":
        return None
    created = int(
        await conn.fetchval(
            "SELECT shared.create_monthly_partitions($1::oid::regclass, 0, $2)",
            parent["oid"],
            months_ahead,
        )
    )
    detached = 0
    if policy.retention_months is not None:
        # A month is counted as year * 12 + month - 1; the partition of month m ends when
        # month m + 1 begins, which is at least retention_months ago once
        # m + 1 + retention_months <= this month.
        monthly = re.compile(rf"^{re.escape(parent['relname'])}_p(\d{{4}})(\d{{2}})$")
        for row in await conn.fetch(_PARTITIONS, parent["oid"]):
            match = monthly.match(row["relname"])
            if match is None:
                continue
            month = int(match[1]) * 12 + int(match[2]) - 1
            if month + 1 + policy.retention_months <= parent["this_month"]:
                # Not CONCURRENTLY: a table with a default partition does not allow it,
                # and it could not run inside this transaction anyway.
                await conn.execute(
                    f"ALTER TABLE {parent['qualified']} DETACH PARTITION {row['qualified']}"
                )
                detached += 1
    return created, detached


async def partition_maintenance(ctx: JobContext) -> BatchResult:
    policies = [policy for journey in ctx.journeys for policy in journey.partitions]
    if not policies:
        return BatchResult.nothing()
    months_ahead = ctx.settings.partitions_months_ahead

    async def maintain(conn: DriverConnection) -> BatchResult | None:
        if not await try_job_lock(conn, JOB_NAME):
            return None
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        created = detached = failed = 0
        for policy in policies:
            # One table's trouble (its lock not granted in time, rows in the default
            # partition that a new partition would have to take) must not keep the
            # other tables from getting their partitions.
            await conn.execute("SAVEPOINT partition_policy")
            try:
                outcome = await _maintain(conn, policy, months_ahead)
            except DatabaseError as exc:
                # A conflict re-runs the whole transaction; a lost connection has no
                # savepoint left to roll back to.
                if exc.retriable or exc.sqlstate in _RETRIED:
                    raise
                await conn.execute("ROLLBACK TO SAVEPOINT partition_policy")
                failed += 1
                log.warning(
                    "partition_maintenance_failed",
                    table=policy.table,
                    error=str(exc),
                    sqlstate=exc.sqlstate,
                )
                continue
            await conn.execute("RELEASE SAVEPOINT partition_policy")
            if outcome is None:
                log.warning(
                    "partition_maintenance_skipped",
                    table=policy.table,
                    reason="not a natively partitioned table (missing, or e.g. a "
                    "TimescaleDB hypertable, whose chunks TimescaleDB manages)",
                )
                continue
            created += outcome[0]
            detached += outcome[1]
        counts = {"created": created, "detached": detached}
        if failed:
            counts["failed"] = failed
        return BatchResult(claimed=1, counts=counts)

    result = await ctx.database.run_driver(maintain, name=f"worker.{JOB_NAME}")
    return result or BatchResult.nothing()


PARTITION_MAINTENANCE = Job(
    name=JOB_NAME,
    run=partition_maintenance,
    interval=3600.0,
    batch=1,
    repeat_when_full=False,
    description=(
        "creates monthly partitions PARTITIONS_MONTHS_AHEAD ahead for each journey's "
        "partitioned tables and detaches those past their retention_months"
    ),
)
