"""Saga retention: moving (or deleting) sagas finished long ago out of the live log.

Only completed, compensated and aborted sagas qualify, by ``finished_at`` (the partial index
``saga_instance_finished_at_idx`` holds exactly those). Running, compensating and parked
sagas are never read, let alone locked; a finished saga some other transaction holds is
skipped and taken by a later batch. Each batch copies, deletes and commits a bounded
number of sagas, so the coordinator never waits behind it.
"""

from __future__ import annotations

import uuid

from saga.settings import RetentionMode
from saga.store.driver import DriverConnection, rows_affected
from saga.worker.job import BatchResult, Job, JobContext

_CLAIM = """
SELECT id FROM shared.saga_instance
WHERE finished_at < now() - make_interval(secs => $1)
  AND status IN ('completed', 'compensated', 'aborted')
ORDER BY finished_at
LIMIT $2
FOR UPDATE SKIP LOCKED
"""

# The archive keeps every column a reader of the log sees. ``step_deadline`` and
# ``step_started_at`` only drive a saga in flight, so they are left behind.
_ARCHIVE_INSTANCES = """
INSERT INTO shared.saga_instance_archive (
    id, saga_definition_id, definition_name, definition_version, status, current_step,
    step_attempt, payload, context, idempotency_key, deadline, error, version,
    started_at, finished_at, created_at, updated_at, deleted_at
)
SELECT id, saga_definition_id, definition_name, definition_version, status, current_step,
       step_attempt, payload, context, idempotency_key, deadline, error, version,
       started_at, finished_at, created_at, updated_at, deleted_at
FROM shared.saga_instance
WHERE id = ANY($1::uuid[])
"""

_ARCHIVE_STEP_LOG = """
INSERT INTO shared.saga_step_log_archive (
    id, saga_instance_id, step_index, step_name, journey, action, status, attempt,
    message_id, request, response, error, actor, started_at, finished_at, duration_ms,
    serialization_retries, deadlock_retries, branch, logged_at, created_at, updated_at,
    deleted_at
)
SELECT id, saga_instance_id, step_index, step_name, journey, action, status, attempt,
       message_id, request, response, error, actor, started_at, finished_at, duration_ms,
       serialization_retries, deadlock_retries, branch, created_at, created_at, updated_at,
       deleted_at
FROM shared.saga_step_log
WHERE saga_instance_id = ANY($1::uuid[])
"""


async def saga_retention(ctx: JobContext) -> BatchResult:
    keep_seconds = ctx.settings.retention_saga_days * 86400
    archive = ctx.settings.retention_saga_mode is RetentionMode.ARCHIVE

    async def retire(conn: DriverConnection) -> tuple[int, int]:
        ids: list[uuid.UUID] = [
            row["id"] for row in await conn.fetch(_CLAIM, keep_seconds, ctx.batch)
        ]
        if not ids:
            return 0, 0
        # The instances are locked FOR UPDATE, so no step-log row can be added for them
        # (its foreign key check would wait for this transaction): what is copied is all
        # there is, and deleting them explicitly counts exactly the rows copied.
        if archive:
            await conn.execute(_ARCHIVE_INSTANCES, ids)
            await conn.execute(_ARCHIVE_STEP_LOG, ids)
        step_log_rows = rows_affected(
            await conn.execute(
                "DELETE FROM shared.saga_step_log WHERE saga_instance_id = ANY($1::uuid[])", ids
            )
        )
        # The coordinator's outbox rows and the saga's signals go with it by ON DELETE
        # CASCADE (a consumed signal is in the step log, with its actor).
        sagas = rows_affected(
            await conn.execute("DELETE FROM shared.saga_instance WHERE id = ANY($1::uuid[])", ids)
        )
        return sagas, step_log_rows

    sagas, step_log_rows = await ctx.database.run_driver(retire, name="worker.saga_retention")
    return BatchResult(
        claimed=sagas,
        counts={"archived" if archive else "deleted": sagas, "step_log_rows": step_log_rows},
    )


SAGA_RETENTION = Job(
    name="saga_retention",
    run=saga_retention,
    interval=300.0,
    batch=200,
    description=(
        "archives (RETENTION_SAGA_MODE=archive) or deletes sagas completed or compensated "
        "more than RETENTION_SAGA_DAYS ago, with their step logs"
    ),
)
