"""Partition maintenance: monthly partitions made ahead, old ones detached or dropped.

Each journey names its monthly range-partitioned tables with a
:class:`~saga.worker.policies.PartitionPolicy`. The partitions for this month and
PARTITIONS_MONTHS_AHEAD months ahead are created (``shared.create_monthly_partitions``),
so rows land in their month, not in the ``_default`` partition. With ``retention_months``,
a partition ``<parent>_pYYYYMM`` whose whole month ended at least that many months ago
is detached (the table stays, for an operator to archive or drop) or, when the policy's
expiry is DROP, dropped.

Where TimescaleDB made the table a hypertable, its chunks are TimescaleDB's: nothing is
created ahead, and retention drops the chunks wholly before the same cut-off month
(``drop_chunks``), but only when the expiry is DROP, since a chunk cannot be detached
and kept. The worker applies the setting at each run rather than leaving a TimescaleDB
retention policy in the database, so the setting stays the one place that decides.

This is not row-shaped work, so one worker does it at a time (``try_job_lock``). Creating
or detaching a partition takes an exclusive lock on the parent: a short ``lock_timeout``
makes a busy table wait for the next run instead of queueing its readers behind us.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import structlog

from saga.errors import DatabaseError
from saga.settings import PartitionExpiry, Settings
from saga.store.connection import Row
from saga.store.driver import DriverConnection
from saga.worker.job import BatchResult, Job, JobContext, try_job_lock
from saga.worker.policies import PartitionPolicy

log = structlog.get_logger("saga.worker")

JOB_NAME = "partition_maintenance"
LOCK_TIMEOUT = "5s"
# Conflicts PostgreSQL resolves by retrying the whole transaction: let the runner do it.
_RETRIED = {"40001", "40P01"}

_PARENT = """
SELECT c.oid, c.relkind::text AS relkind, c.relname, n.nspname,
       format('%I.%I', n.nspname, c.relname) AS qualified,
       extract(year FROM now())::int * 12 + extract(month FROM now())::int - 1 AS this_month
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1)
"""

_IS_HYPERTABLE = """
SELECT EXISTS (
    SELECT FROM _timescaledb_catalog.hypertable WHERE schema_name = $1 AND table_name = $2
)
"""

# The chunks wholly before the month that began `months` months before this one: the
# cut-off the native partitions have.
_DROP_CHUNKS = """
SELECT count(*) FROM drop_chunks(
    $1::oid::regclass,
    older_than => date_trunc('month', now()) - make_interval(months => $2::int)
)
"""

_PARTITIONS = """
SELECT format('%I.%I', n.nspname, c.relname) AS qualified, c.relname
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.inhparent = $1
ORDER BY c.relname
"""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one table's maintenance did."""

    created: int = 0
    detached: int = 0
    dropped: int = 0


async def _is_hypertable(conn: DriverConnection, parent: Row) -> bool:
    # Two statements: the catalog table cannot be named in a query where it may not exist.
    if not await conn.fetchval("SELECT to_regclass('_timescaledb_catalog.hypertable') IS NOT NULL"):
        return False
    return bool(await conn.fetchval(_IS_HYPERTABLE, parent["nspname"], parent["relname"]))


async def _expire_chunks(
    conn: DriverConnection, parent: Row, months: int, expiry: PartitionExpiry
) -> Outcome:
    if expiry is not PartitionExpiry.DROP:
        log.warning(
            "partition_retention_skipped",
            table=parent["qualified"],
            reason="a TimescaleDB hypertable's chunks cannot be detached and kept; "
            "set the retention mode to drop to let the worker drop them",
        )
        return Outcome()
    dropped = await conn.fetchval(_DROP_CHUNKS, parent["oid"], months)
    return Outcome(dropped=int(dropped))


async def _expire_partitions(
    conn: DriverConnection, parent: Row, months: int, expiry: PartitionExpiry
) -> Outcome:
    # A month is counted as year * 12 + month - 1; the partition of month m ends when
    # month m + 1 begins, which is at least `months` ago once m + 1 + months <= this month.
    monthly = re.compile(rf"^{re.escape(parent['relname'])}_p(\d{{4}})(\d{{2}})$")
    detached = dropped = 0
    for row in await conn.fetch(_PARTITIONS, parent["oid"]):
        match = monthly.match(row["relname"])
        if match is None:
            continue
        month = int(match[1]) * 12 + int(match[2]) - 1
        if month + 1 + months > parent["this_month"]:
            continue
        if expiry is PartitionExpiry.DROP:
            # Dropping a partition takes the same lock on the parent as detaching it.
            await conn.execute(f"DROP TABLE {row['qualified']}")
            dropped += 1
        else:
            # Not CONCURRENTLY: a table with a default partition does not allow it,
            # and it could not run inside this transaction anyway.
            await conn.execute(
                f"ALTER TABLE {parent['qualified']} DETACH PARTITION {row['qualified']}"
            )
            detached += 1
    return Outcome(detached=detached, dropped=dropped)


async def _maintain(
    conn: DriverConnection, policy: PartitionPolicy, settings: Settings
) -> Outcome | None:
    """What was done to one table; None when it is neither natively partitioned nor a
    TimescaleDB hypertable."""
    parent = await conn.fetchrow(_PARENT, policy.table)
    if parent is None:
        return None
    months = policy.months_kept(settings)
    expiry = policy.expiry_under(settings)
    if parent["relkind"] != "p":
        if parent["relkind"] != "r" or not await _is_hypertable(conn, parent):
            return None
        if months is None:
            return Outcome()
        return await _expire_chunks(conn, parent, months, expiry)
    created = int(
        await conn.fetchval(
            "SELECT shared.create_monthly_partitions($1::oid::regclass, 0, $2)",
            parent["oid"],
            settings.partitions_months_ahead,
        )
    )
    if months is None:
        return Outcome(created=created)
    expired = await _expire_partitions(conn, parent, months, expiry)
    return dataclasses.replace(expired, created=created)


async def partition_maintenance(ctx: JobContext) -> BatchResult:
    policies = [policy for journey in ctx.journeys for policy in journey.partitions]
    if not policies:
        return BatchResult.nothing()

    async def maintain(conn: DriverConnection) -> BatchResult | None:
        if not await try_job_lock(conn, JOB_NAME):
            return None
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        total = Outcome()
        failed = 0
        for policy in policies:
            # One table's trouble (its lock not granted in time, rows in the default
            # partition that a new partition would have to take) must not keep the
            # other tables from getting their partitions.
            await conn.execute("SAVEPOINT partition_policy")
            try:
                outcome = await _maintain(conn, policy, ctx.settings)
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
                    reason="neither a natively partitioned table nor a TimescaleDB "
                    "hypertable (missing, or a plain table)",
                )
                continue
            total = Outcome(
                created=total.created + outcome.created,
                detached=total.detached + outcome.detached,
                dropped=total.dropped + outcome.dropped,
            )
        counts = {"created": total.created, "detached": total.detached}
        if total.dropped:
            counts["dropped"] = total.dropped
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
        "partitioned tables and detaches (or drops) those past their retention; drops "
        "a hypertable's chunks past retention when its retention mode is drop"
    ),
)
