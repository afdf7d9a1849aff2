"""Inbox retention: forgetting the commands of sagas that can send no more.

An inbox row is what makes a redelivered command answer from its stored reply instead of
running again. A saga still running, compensating or parked may have any of its commands
re-sent (a step timeout, an operator's retry), so its rows are kept however old they are;
once the saga has finished, or is gone from the log, nothing will send them again.
"""

from __future__ import annotations

from saga.store.driver import DriverConnection
from saga.store.outbox import check_table
from saga.worker.job import BatchResult, Job, JobContext

# Statuses from which a saga may still (re-)send commands.
LIVE_STATUSES = ["running", "compensating", "parked"]


def _affected(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


async def inbox_retention(ctx: JobContext) -> BatchResult:
    keep_seconds = ctx.settings.retention_inbox_days * 86400
    inboxes = [check_table(t) for t in dict.fromkeys(j.tables.inbox for j in ctx.journeys)]

    async def delete(conn: DriverConnection) -> int:
        deleted = 0
        for table in inboxes:
            if deleted >= ctx.batch:
                break
            status = await conn.execute(
                f"""
                WITH doomed AS MATERIALIZED (
                    SELECT b.id FROM {table} AS b
                    WHERE b.processed_at < now() - make_interval(secs => $1)
                      AND NOT EXISTS (
                          SELECT FROM shared.saga_instance AS s
                          WHERE s.id = b.saga_id AND s.status = ANY($3::text[])
                      )
                    ORDER BY b.processed_at
                    LIMIT $2
                    FOR UPDATE OF b SKIP LOCKED
                )
                DELETE FROM {table} AS b USING doomed WHERE b.id = doomed.id
                """,
                keep_seconds,
                ctx.batch - deleted,
                LIVE_STATUSES,
            )
            deleted += _affected(status)
        return deleted

    deleted = await ctx.database.run_driver(delete, name="worker.inbox_retention")
    return BatchResult(claimed=deleted, counts={"deleted": deleted})


INBOX_RETENTION = Job(
    name="inbox_retention",
    run=inbox_retention,
    interval=300.0,
    batch=1000,
    description=(
        "deletes journey inbox rows processed more than RETENTION_INBOX_DAYS ago whose "
        "saga has finished or is gone; rows of running, compensating or parked sagas stay"
    ),
)
