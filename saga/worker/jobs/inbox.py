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
from saga.worker.jobs.deletion import delete_oldest

# Statuses from which a saga may still (re-)send commands.
LIVE_STATUSES = ["running", "compensating", "parked"]


async def inbox_retention(ctx: JobContext) -> BatchResult:
    keep_seconds = ctx.settings.retention_inbox_days * 86400
    inboxes = [check_table(t) for t in dict.fromkeys(j.tables.inbox for j in ctx.journeys)]

    async def delete(conn: DriverConnection) -> int:
        return await delete_oldest(
            conn,
            inboxes,
            age_column="processed_at",
            keep_seconds=keep_seconds,
            limit=ctx.batch,
            also="""NOT EXISTS (
                SELECT FROM shared.saga_instance AS s
                WHERE s.id = t.saga_id AND s.status = ANY($3::text[])
            )""",
            args=[LIVE_STATUSES],
        )

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
