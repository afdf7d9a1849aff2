"""The coordinator's writes to the saga log: instances, step-log rows, outbox commands.

These functions run on a connection the caller's transaction owns. The coordinator and
the timeout jobs reach them through the port (:class:`~saga.store.port.SagaLog`, adapter
:class:`~saga.store.postgres_log.PostgresSagaLog`); operators' actions call them directly,
several under one row lock in one transaction.

Each write is ONE statement (data-modifying CTEs), which PostgreSQL runs as one atomic
transaction: no ``BEGIN``/``COMMIT`` round trips on the hot path. Concurrency control is
optimistic: a transition is written only if the instance's ``version`` is still the one
the decision was made on, so two coordinators that raced on one saga cannot both move it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from saga.machine import InstanceState, Phase, SagaStatus
from saga.store.driver import DriverConnection, document, rows_affected
from saga.store.records import InstanceRow, LogRow, OutboxRow, SagaSummary, StepPosition

__all__ = [
    "InstanceRow",
    "LogRow",
    "OutboxRow",
    "SagaSummary",
    "StepPosition",
    "claim_expired_sagas",
    "claim_overdue_steps",
    "insert_start",
    "load_instance",
    "lock_instance",
    "record_ignored",
    "step_position",
    "summary",
    "withdraw_commands",
    "write_transition",
]


_LOG_COLUMNS = """
    saga_instance_id, step_index, step_name, journey, action, status, attempt,
    message_id, request, response, error, started_at, finished_at,
    serialization_retries, deadlock_retries, actor
"""

# The engine's time: the database's now() plus the clock's skew (saga.clock), so that a
# test clock moved forward sees the deadlines it wrote come due, and nothing else does.
_NOW = "(now() + make_interval(secs => $SKEW))"

# The log rows arrive as parallel arrays; a dispatched row is open (no finished_at) and
# starts when its command becomes available, every other row is an outcome ending now.
_LOG_FROM_ARRAYS = f"""
    INSERT INTO shared.saga_step_log ({_LOG_COLUMNS})
    SELECT i.id, e.step_index, e.step_name, e.journey, e.action, e.status, e.attempt,
           e.message_id, e.request::jsonb, e.response::jsonb, e.error,
           COALESCE(e.started_at, {_NOW} + make_interval(secs => $DELAY)),
           CASE WHEN e.status = 'dispatched' THEN NULL ELSE {_NOW} END,
           e.serialization_retries, e.deadlock_retries, e.actor
    FROM {{source}} i,
         unnest($LOG1::integer[], $LOG2::text[], $LOG3::text[], $LOG4::text[], $LOG5::text[],
                $LOG6::integer[], $LOG7::uuid[], $LOG8::text[], $LOG9::text[], $LOG10::text[],
                $LOG11::timestamptz[], $LOG12::integer[], $LOG13::integer[], $LOG14::text[])
         AS e(step_index, step_name, journey, action, status, attempt, message_id,
              request, response, error, started_at, serialization_retries, deadlock_retries,
              actor)
"""

_OUTBOX_FROM = f"""
    INSERT INTO shared.saga_outbox
        (message_id, saga_instance_id, topic, message_key, payload, headers, available_at)
    SELECT $OB1, i.id, $OB2, $OB3, $OB4::jsonb, $OB5::jsonb,
           {_NOW} + make_interval(secs => $DELAY)
    FROM {{source}} i WHERE $OB1::uuid IS NOT NULL
"""


def _numbered(sql: str, names: Sequence[str], first: int) -> str:
    """Give each named placeholder its ``$n`` (longest names first: $LOG10 before $LOG1)."""
    for offset, name in sorted(enumerate(names), key=lambda item: -len(item[1])):
        sql = sql.replace(f"${name}", f"${first + offset}")
    return sql


_SHARED_PARAMS = [
    "DELAY",
    *(f"LOG{n}" for n in range(1, 15)),
    *(f"OB{n}" for n in range(1, 6)),
    "SKEW",
]


def _shared_args(
    log: Sequence[LogRow], outbox: OutboxRow | None, delay: float, skew: float
) -> list[Any]:
    return [
        delay,
        [r.entry.step_index for r in log],
        [r.step_name for r in log],
        [r.journey for r in log],
        [r.entry.phase.value for r in log],
        [r.entry.status.value for r in log],
        [r.entry.attempt for r in log],
        [r.message_id for r in log],
        [_json_or_none(r.request) for r in log],
        [_json_or_none(r.entry.response) for r in log],
        [r.entry.error for r in log],
        [r.started_at for r in log],
        [r.serialization_retries for r in log],
        [r.deadlock_retries for r in log],
        [r.actor for r in log],
        outbox.message_id if outbox else None,
        outbox.topic if outbox else None,
        outbox.key if outbox else None,
        outbox.payload.decode() if outbox else None,
        json.dumps(dict(outbox.headers)) if outbox else None,
        skew,
    ]


_START = _numbered(
    f"""
    WITH inserted AS (
        INSERT INTO shared.saga_instance
            (id, saga_definition_id, definition_name, definition_version, status,
             current_step, step_attempt, started_at, step_started_at, step_deadline, payload,
             context, idempotency_key, deadline)
        VALUES ($1, $2, $3, $4, 'running', 0, 1, {_NOW}, {_NOW},
                {_NOW} + make_interval(secs => $5), $6::jsonb, '{{}}'::jsonb, $7,
                {_NOW} + make_interval(secs => $8))
        ON CONFLICT (definition_name, idempotency_key) WHERE idempotency_key IS NOT NULL
        DO NOTHING
        RETURNING id
    ),
    log AS ({_LOG_FROM_ARRAYS.format(source="inserted")}),
    box AS ({_OUTBOX_FROM.format(source="inserted")})
    SELECT id FROM inserted
    """,
    _SHARED_PARAMS,
    9,
)


async def insert_start(
    conn: DriverConnection,
    *,
    saga_id: uuid.UUID,
    definition_id: uuid.UUID,
    definition_name: str,
    definition_version: int,
    payload: Mapping[str, Any],
    idempotency_key: str | None,
    step_timeout: float,
    saga_timeout: float | None,
    log: Sequence[LogRow],
    outbox: OutboxRow,
    skew: float = 0.0,
) -> uuid.UUID:
    """Insert a new running instance with its first log row and command; with an
    idempotency key already used, insert nothing and return the first instance's id.
    ``skew`` is the clock's (:mod:`saga.clock`), as in every write of a deadline."""
    inserted = await conn.fetchval(
        _START,
        saga_id,
        definition_id,
        definition_name,
        definition_version,
        step_timeout,
        json.dumps(dict(payload)),
        idempotency_key,
        saga_timeout,
        *_shared_args(log, outbox, 0.0, skew),
    )
    if inserted is not None:
        return uuid.UUID(str(inserted))
    existing = await conn.fetchval(
        "SELECT id FROM shared.saga_instance WHERE definition_name = $1 AND idempotency_key = $2",
        definition_name,
        idempotency_key,
    )
    return uuid.UUID(str(existing))


_INSTANCE_COLUMNS = """
    id, definition_name, definition_version, status, current_step, step_attempt,
    context, error, payload, version, step_started_at
"""


async def load_instance(conn: DriverConnection, saga_id: uuid.UUID) -> InstanceRow | None:
    row = await conn.fetchrow(
        f"SELECT {_INSTANCE_COLUMNS} FROM shared.saga_instance WHERE id = $1", saga_id
    )
    return None if row is None else _instance_from(row)


async def lock_instance(conn: DriverConnection, saga_id: uuid.UUID) -> InstanceRow | None:
    """The instance, locked until the transaction ends (an operator's action holds it
    while it decides, as a worker's claim does)."""
    row = await conn.fetchrow(
        f"SELECT {_INSTANCE_COLUMNS} FROM shared.saga_instance WHERE id = $1 FOR UPDATE",
        saga_id,
    )
    return None if row is None else _instance_from(row)


async def step_position(conn: DriverConnection, instance: InstanceRow) -> StepPosition | None:
    """The latest row the coordinator logged for the instance's current step (replies it
    ignored do not count): its phase tells whether a parked saga stopped in the step
    or in its compensation."""
    row = await conn.fetchrow(
        """
        SELECT action, step_name, journey FROM shared.saga_step_log
        WHERE saga_instance_id = $1 AND step_index = $2 AND status <> 'ignored'
        ORDER BY created_at DESC, started_at DESC
        LIMIT 1
        """,
        instance.id,
        instance.state.current_step,
    )
    if row is None:
        return None
    return StepPosition(Phase(row["action"]), row["step_name"], row["journey"])


async def withdraw_commands(conn: DriverConnection, saga_id: uuid.UUID) -> int:
    """Delete the saga's commands not yet recorded as published (a retry waiting out its
    backoff, or one sent a moment ago), so the relay never sends one an operator's action
    has overtaken. Returns how many."""
    status = await conn.execute(
        "DELETE FROM shared.saga_outbox WHERE saga_instance_id = $1 AND published_at IS NULL",
        saga_id,
    )
    return rows_affected(status)


async def claim_overdue_steps(
    conn: DriverConnection, limit: int, *, skew: float = 0.0
) -> list[InstanceRow]:
    """Lock up to ``limit`` in-flight sagas whose current attempt is past its deadline
    (by the clock ``skew`` ahead of the database's), oldest first, skipping any another
    worker (or a coordinator's write) holds. Only meaningful inside a transaction, which
    then owns them until it ends."""
    rows = await conn.fetch(
        f"""
        SELECT {_INSTANCE_COLUMNS} FROM shared.saga_instance
        WHERE status IN ('running', 'compensating')
          AND step_deadline <= now() + make_interval(secs => $2)
        ORDER BY step_deadline
        LIMIT $1
        FOR UPDATE SKIP LOCKED
        """,
        limit,
        skew,
    )
    return [_instance_from(row) for row in rows]


async def claim_expired_sagas(
    conn: DriverConnection, limit: int, *, skew: float = 0.0
) -> list[InstanceRow]:
    """Like :func:`claim_overdue_steps`, for running sagas past their overall deadline."""
    rows = await conn.fetch(
        f"""
        SELECT {_INSTANCE_COLUMNS} FROM shared.saga_instance
        WHERE status = 'running' AND deadline IS NOT NULL
          AND deadline <= now() + make_interval(secs => $2)
        ORDER BY deadline
        LIMIT $1
        FOR UPDATE SKIP LOCKED
        """,
        limit,
        skew,
    )
    return [_instance_from(row) for row in rows]


def _instance_from(row: Any) -> InstanceRow:
    return InstanceRow(
        id=row["id"],
        definition_name=row["definition_name"],
        definition_version=row["definition_version"],
        state=InstanceState(
            SagaStatus(row["status"]),
            row["current_step"],
            row["step_attempt"],
            document(row["context"]),
            row["error"],
        ),
        payload=document(row["payload"]),
        version=row["version"],
        step_started_at=row["step_started_at"],
    )


_TRANSITION = _numbered(
    f"""
    WITH updated AS (
        UPDATE shared.saga_instance SET
            status = $3, current_step = $4, step_attempt = $5, context = $6::jsonb,
            error = $7, version = version + 1,
            step_started_at = CASE WHEN $8::boolean
                THEN {_NOW} + make_interval(secs => $DELAY) ELSE step_started_at END,
            step_deadline = CASE WHEN $8::boolean
                THEN {_NOW} + make_interval(secs => $DELAY + $9) ELSE NULL END,
            finished_at = CASE WHEN $3 IN ('completed', 'compensated', 'aborted')
                THEN {_NOW} END
        WHERE id = $1 AND version = $2
        RETURNING id, step_started_at
    ),
    log AS ({_LOG_FROM_ARRAYS.format(source="updated")}),
    box AS ({_OUTBOX_FROM.format(source="updated")})
    SELECT step_started_at FROM updated
    """,
    _SHARED_PARAMS,
    10,
)


async def write_transition(
    conn: DriverConnection,
    instance: InstanceRow,
    state: InstanceState,
    *,
    log: Sequence[LogRow],
    outbox: OutboxRow | None,
    step_timeout: float,
    skew: float = 0.0,
) -> InstanceRow | None:
    """Persist one transition and return the instance as now stored; None when another
    process moved the instance first. ``skew`` is the clock's (:mod:`saga.clock`)."""
    delay = outbox.delay if outbox else 0.0
    written = await conn.fetchrow(
        _TRANSITION,
        instance.id,
        instance.version,
        state.status.value,
        state.current_step,
        state.step_attempt,
        json.dumps(dict(state.context)),
        state.error,
        outbox is not None,
        step_timeout,
        *_shared_args(log, outbox, delay, skew),
    )
    if written is None:
        return None
    return replace(
        instance,
        state=state,
        version=instance.version + 1,
        step_started_at=written["step_started_at"],
    )


async def record_ignored(
    conn: DriverConnection, saga_id: uuid.UUID, row: LogRow, *, skew: float = 0.0
) -> None:
    """Note a stale or duplicate reply in the log without touching the instance."""
    await conn.execute(
        f"""
        INSERT INTO shared.saga_step_log ({_LOG_COLUMNS})
        VALUES ($1, $2, $3, $4, $5, 'ignored', $6, $7, NULL, $8::jsonb, $9,
                now() + make_interval(secs => $10), now() + make_interval(secs => $10),
                0, 0, NULL)
        """,
        saga_id,
        row.entry.step_index,
        row.step_name,
        row.journey,
        row.entry.phase.value,
        row.entry.attempt,
        row.message_id,
        _json_or_none(row.entry.response),
        row.entry.error,
        skew,
    )


async def summary(conn: DriverConnection, saga_id: uuid.UUID) -> SagaSummary | None:
    row = await conn.fetchrow(
        "SELECT id, status, context, error, started_at, finished_at "
        "FROM shared.saga_instance WHERE id = $1",
        saga_id,
    )
    if row is None:
        return None
    return SagaSummary(
        row["id"],
        SagaStatus(row["status"]),
        document(row["context"]),
        row["error"],
        row["started_at"],
        row["finished_at"],
    )


def _json_or_none(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(dict(value))
