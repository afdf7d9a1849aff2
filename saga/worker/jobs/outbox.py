"""Outbox jobs: re-sending rows nobody published, deleting rows published long ago.

Every process publishes what it commits right away and runs a relay for its own outbox,
so a row still unpublished after OUTBOX_REPUBLISH_AFTER_SECONDS means its writer died or
the broker was away for longer than that: the worker sends it for whoever is missing.
Receivers deduplicate by message id, so a row sent twice does no harm.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from saga import metrics
from saga.coordinator.service import COORDINATOR_OUTBOX
from saga.outbox import seconds_since
from saga.store import outbox as store
from saga.store.driver import DriverConnection
from saga.store.outbox import PendingMessage
from saga.transport.producer import OutgoingMessage
from saga.worker.job import BatchResult, Job, JobContext
from saga.worker.jobs.deletion import delete_oldest

# Longer than a send can take (aiokafka gives up on a request after 40 s), so no other
# worker re-sends a row while this one still waits for the broker's answer. A row whose
# send failed comes due again this long plus the republish threshold later.
REPUBLISH_LEASE_SECONDS = 60.0


def outbox_tables(ctx: JobContext) -> list[str]:
    """The coordinator's outbox and every journey's, each once."""
    tables = [COORDINATOR_OUTBOX, *(journey.tables.outbox for journey in ctx.journeys)]
    return [store.check_table(table) for table in dict.fromkeys(tables)]


async def republish(ctx: JobContext) -> BatchResult:
    threshold = ctx.settings.outbox_republish_after_seconds

    async def claim(conn: DriverConnection) -> list[tuple[str, list[PendingMessage]]]:
        claimed: list[tuple[str, list[PendingMessage]]] = []
        room = ctx.batch
        for table in outbox_tables(ctx):
            if room <= 0:
                break
            due = await store.claim_due(
                conn,
                table,
                older_than=threshold,
                lease=REPUBLISH_LEASE_SECONDS,
                limit=room,
                skew=ctx.database.clock.skew,
            )
            if due:
                claimed.append((table, due))
                room -= len(due)
        return claimed

    # The claim commits before anything is sent: no transaction stays open across the
    # network, and the lease keeps the rows this worker's until it has an answer.
    claimed = await ctx.database.run_driver(claim, name="worker.outbox_republish")
    if not claimed:
        return BatchResult.nothing()
    messages = [message for _, due in claimed for message in due]
    _, producer = ctx.broker()
    outcomes = iter(
        await producer.send_many(
            [
                OutgoingMessage(topic=m.topic, key=m.key, value=m.payload, headers=m.headers)
                for m in messages
            ]
        )
    )
    sent: list[tuple[str, list[uuid.UUID]]] = []
    failed: list[tuple[str, list[tuple[uuid.UUID, str]]]] = []
    for table, due in claimed:
        acknowledged: list[uuid.UUID] = []
        refused: list[tuple[uuid.UUID, str]] = []
        for message in due:
            error = next(outcomes)
            if error is None:
                acknowledged.append(message.message_id)
                if message.due_at is not None:
                    lag = seconds_since(message.due_at)
                    metrics.OUTBOX_PUBLISH_LAG.labels(table).observe(lag)
            else:
                refused.append((message.message_id, f"{type(error).__name__}: {error}"))
        sent.append((table, acknowledged))
        failed.append((table, refused))

    async def record(conn: DriverConnection) -> None:
        for table, ids in sent:
            if ids:
                await store.mark_published(conn, table, ids)
        for table, errors in failed:
            if errors:
                await _record_errors(conn, table, errors)

    # If this commit is lost the rows are simply sent again after the lease.
    await ctx.database.run_driver(record, name="worker.outbox_republish.mark")
    republished = sum(len(ids) for _, ids in sent)
    return BatchResult(
        claimed=len(messages),
        counts={"republished": republished, "failed": len(messages) - republished},
    )


async def _record_errors(
    conn: DriverConnection, table: str, errors: Sequence[tuple[uuid.UUID, str]]
) -> None:
    await conn.execute(
        f"""
        UPDATE {store.check_table(table)} AS o SET last_error = e.error
        FROM unnest($1::uuid[], $2::text[]) AS e (message_id, error)
        WHERE o.message_id = e.message_id AND o.published_at IS NULL
        """,
        [message_id for message_id, _ in errors],
        [error for _, error in errors],
    )


async def outbox_retention(ctx: JobContext) -> BatchResult:
    keep_seconds = ctx.settings.retention_outbox_days * 86400

    async def delete(conn: DriverConnection) -> int:
        return await delete_oldest(
            conn,
            outbox_tables(ctx),
            age_column="published_at",
            keep_seconds=keep_seconds,
            limit=ctx.batch,
        )

    deleted = await ctx.database.run_driver(delete, name="worker.outbox_retention")
    return BatchResult(claimed=deleted, counts={"deleted": deleted})


OUTBOX_REPUBLISH = Job(
    name="outbox_republish",
    run=republish,
    interval=10.0,
    batch=500,
    sends=True,
    description=(
        "sends outbox rows (the coordinator's and every journey's) left unpublished for "
        "OUTBOX_REPUBLISH_AFTER_SECONDS and marks the acknowledged ones published"
    ),
)

OUTBOX_RETENTION = Job(
    name="outbox_retention",
    run=outbox_retention,
    interval=300.0,
    batch=1000,
    description="deletes outbox rows published more than RETENTION_OUTBOX_DAYS ago",
)
