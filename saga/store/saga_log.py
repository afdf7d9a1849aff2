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
from datetime import datetime
from typing import Any

from saga.machine import InstanceState, Phase, SagaStatus
from saga.store.driver import DriverConnection, document, rows_affected
from saga.store.records import (
    BranchClock,
    ChildStart,
    InstanceRow,
    LogRow,
    OutboxRow,
    ParentLink,
    SagaSummary,
    ShapedStart,
    ShapeWrite,
    StepPosition,
    StoredSignal,
)

__all__ = [
    "LOG_COLUMNS",
    "InstanceRow",
    "LogRow",
    "OutboxRow",
    "SagaSummary",
    "StepPosition",
    "claim_expired_sagas",
    "claim_overdue_steps",
    "insert_start",
    "log_arrays",
    "started_with_key",
    "load_instance",
    "load_instances",
    "lock_instance",
    "step_position",
    "summary",
    "find_signal",
    "insert_child_start",
    "insert_shaped_start",
    "insert_signal",
    "kept_signal",
    "touch_instance",
    "withdraw_commands",
    "write_shaped_transition",
    "write_transition",
]


LOG_COLUMNS = """
    saga_instance_id, step_index, step_name, journey, action, status, attempt,
    message_id, request, response, error, started_at, finished_at,
    serialization_retries, deadlock_retries, actor, branch
"""

# The engine's time: the database's now() plus the clock's skew (saga.clock), so that a
# test clock moved forward sees the deadlines it wrote come due, and nothing else does.
_NOW = "(now() + make_interval(secs => $SKEW))"

# The log rows arrive as parallel arrays; a dispatched row is open (no finished_at) and
# starts when its command becomes available, every other row is an outcome ending now.
_LOG_FROM_ARRAYS = f"""
    INSERT INTO shared.saga_step_log ({LOG_COLUMNS})
    SELECT i.id, e.step_index, e.step_name, e.journey, e.action, e.status, e.attempt,
           e.message_id, e.request::jsonb, e.response::jsonb, e.error,
           COALESCE(e.started_at, {_NOW} + make_interval(secs => $DELAY)),
           CASE WHEN e.status = 'dispatched' THEN NULL ELSE {_NOW} END,
           e.serialization_retries, e.deadlock_retries, e.actor, e.branch
    FROM {{source}} i,
         unnest($LOG1::integer[], $LOG2::text[], $LOG3::text[], $LOG4::text[], $LOG5::text[],
                $LOG6::integer[], $LOG7::uuid[], $LOG8::text[], $LOG9::text[], $LOG10::text[],
                $LOG11::timestamptz[], $LOG12::integer[], $LOG13::integer[], $LOG14::text[],
                $LOG15::integer[])
         AS e(step_index, step_name, journey, action, status, attempt, message_id,
              request, response, error, started_at, serialization_retries, deadlock_retries,
              actor, branch)
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


_LOG_PARAMS = [f"LOG{n}" for n in range(1, 16)]
_SHARED_PARAMS = ["DELAY", *_LOG_PARAMS, *(f"OB{n}" for n in range(1, 6)), "SKEW"]


def log_arrays(log: Sequence[LogRow]) -> list[list[Any]]:
    """The log rows as the parallel arrays the log inserts unnest, column by column
    (``LOG_COLUMNS`` without the saga, the times and ``finished_at``)."""
    return [
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
        [r.entry.branch for r in log],
    ]


def _shared_args(
    log: Sequence[LogRow], outbox: OutboxRow | None, delay: float, skew: float
) -> list[Any]:
    return [
        delay,
        *log_arrays(log),
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
    return await started_with_key(conn, definition_name, idempotency_key)


async def started_with_key(
    conn: DriverConnection, definition_name: str, idempotency_key: str | None
) -> uuid.UUID:
    """The saga of ``definition_name`` that an earlier start with this key inserted."""
    existing = await conn.fetchval(
        "SELECT id FROM shared.saga_instance WHERE definition_name = $1 AND idempotency_key = $2",
        definition_name,
        idempotency_key,
    )
    return uuid.UUID(str(existing))


_INSTANCE_COLUMNS = """
    id, definition_name, definition_version, status, current_step, step_attempt,
    context, error, payload, version, step_started_at, shape_state,
    parent_id, parent_step, parent_attempt
"""

# The branches of a claimed group whose attempt is past its deadline.
_OVERDUE_BRANCHES = """
    ARRAY(
        SELECT c.key::integer FROM jsonb_each(COALESCE(shape_state -> 'clock', '{}'::jsonb)) c
        WHERE (c.value ->> 'deadline')::timestamptz <= now() + make_interval(secs => $2)
        ORDER BY c.key::integer
    ) AS overdue_branches
"""


async def load_instance(conn: DriverConnection, saga_id: uuid.UUID) -> InstanceRow | None:
    row = await conn.fetchrow(
        f"SELECT {_INSTANCE_COLUMNS} FROM shared.saga_instance WHERE id = $1", saga_id
    )
    return None if row is None else _instance_from(row)


async def load_instances(
    conn: DriverConnection, saga_ids: Sequence[uuid.UUID]
) -> list[InstanceRow | None]:
    """:func:`load_instance` of each of ``saga_ids`` in one statement, in their order."""
    rows = await conn.fetch(
        f"SELECT {_INSTANCE_COLUMNS} FROM shared.saga_instance WHERE id = ANY($1::uuid[])",
        list(saga_ids),
    )
    found = {row["id"]: _instance_from(row) for row in rows}
    return [found.get(saga_id) for saga_id in saga_ids]


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
    """Lock up to ``limit`` in-flight or waiting sagas whose current attempt (or wait, or
    a branch's attempt) is past its deadline
    (by the clock ``skew`` ahead of the database's), oldest first, skipping any another
    worker (or a coordinator's write) holds. Only meaningful inside a transaction, which
    then owns them until it ends."""
    rows = await conn.fetch(
        f"""
        SELECT {_INSTANCE_COLUMNS}, {_OVERDUE_BRANCHES} FROM shared.saga_instance
        WHERE status IN ('running', 'compensating', 'waiting')
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
    """Like :func:`claim_overdue_steps`, for running or waiting sagas past their overall
    deadline."""
    rows = await conn.fetch(
        f"""
        SELECT {_INSTANCE_COLUMNS} FROM shared.saga_instance
        WHERE status IN ('running', 'waiting') AND deadline IS NOT NULL
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
    shape = row["shape_state"]
    state = InstanceState(
        SagaStatus(row["status"]),
        row["current_step"],
        row["step_attempt"],
        document(row["context"]),
        row["error"],
    )
    if shape is not None:
        shape = document(shape)
        state = InstanceState.from_document({**shape, **state.to_document()})
    overdue = row.get("overdue_branches")
    parent = None
    if row["parent_step"] is not None and row["parent_id"] is not None:
        parent = ParentLink(row["parent_id"], row["parent_step"], row["parent_attempt"])
    return InstanceRow(
        id=row["id"],
        definition_name=row["definition_name"],
        definition_version=row["definition_version"],
        state=state,
        payload=document(row["payload"]),
        version=row["version"],
        step_started_at=row["step_started_at"],
        clock=_clock_of(shape),
        overdue_branches=tuple(overdue or ()),
        parent=parent,
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
        # A finished saga's one message (a child's end to its parent) starts no attempt.
        outbox is not None and not state.status.finished,
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


# --- sagas with parallel groups and waits --------------------------------------------------
# Their own statements, so a straight-line saga's start and transition stay exactly as
# cheap as they were: one command, no shape state, no clocks.

# Every command of the transition, each with its own delay.
_OUTBOXES_FROM = f"""
    INSERT INTO shared.saga_outbox
        (message_id, saga_instance_id, topic, message_key, payload, headers, available_at)
    SELECT o.message_id, i.id, o.topic, o.message_key, o.payload::jsonb, o.headers::jsonb,
           {_NOW} + make_interval(secs => o.delay)
    FROM {{source}} i,
         unnest($OB1::uuid[], $OB2::text[], $OB3::text[], $OB4::text[], $OB5::text[],
                $OB6::float8[])
         AS o(message_id, topic, message_key, payload, headers, delay)
"""

# The shape state written: the document and the clock of each branch still in flight
# ($KEEP), those sent now ($NEWB, $NEWD, $NEWT) renewed. {old_clock} is the clock as
# stored before (an empty object for a saga being started).
_SHAPE_DOCUMENT = f"""
    CASE WHEN $SHAPE::jsonb IS NULL THEN NULL ELSE $SHAPE::jsonb || jsonb_build_object(
        'clock',
        (SELECT COALESCE(jsonb_object_agg(merged.branch, merged.timer), '{{{{}}}}'::jsonb)
         FROM (
             SELECT c.key AS branch, c.value AS timer FROM jsonb_each({{old_clock}}) c
             WHERE c.key::integer = ANY($KEEP::integer[])
               AND NOT c.key::integer = ANY($NEWB::integer[])
             UNION ALL
             SELECT n.branch::text, jsonb_build_object(
                 'started', {_NOW} + make_interval(secs => n.delay),
                 'deadline', {_NOW} + make_interval(secs => n.delay + n.timeout))
             FROM unnest($NEWB::integer[], $NEWD::float8[], $NEWT::float8[])
                  AS n(branch, delay, timeout)
         ) AS merged)
    ) END
"""

# With branches in flight, the step deadline is the earliest of theirs: the timeout
# worker's claim then finds the group when its first branch is due.
_SHAPED_DEADLINE = f"""
    CASE WHEN cardinality($KEEP::integer[]) > 0 THEN
        (SELECT min((c.value ->> 'deadline')::timestamptz)
         FROM jsonb_each({{document}} -> 'clock') c)
    WHEN $DEADLINE::float8 IS NOT NULL THEN {_NOW} + make_interval(secs => $DEADLINE)
    END
"""

# A start consumes no signal: its statement has no $SENDS nor $SIGNAL.
_SHAPED_START_PARAMS = [
    "SHAPE",
    "KEEP",
    "NEWB",
    "NEWD",
    "NEWT",
    "DEADLINE",
    "DELAY",
    *_LOG_PARAMS,
    *(f"OB{n}" for n in range(1, 7)),
    "SKEW",
]
_SHAPED_PARAMS = ["SENDS", "SIGNAL", *_SHAPED_START_PARAMS]


def _shaped_args(
    shape: ShapeWrite, log: Sequence[LogRow], skew: float, *, start: bool = False
) -> list[Any]:
    outbox = shape.outbox
    transition_only = [] if start else [bool(outbox), list(shape.consumed_signals)]
    return [
        *transition_only,
        None if shape.document is None else json.dumps(dict(shape.document)),
        list(shape.in_flight),
        [t.branch for t in shape.timers],
        [t.delay for t in shape.timers],
        [t.timeout for t in shape.timers],
        shape.deadline_in,
        # The dispatched rows of one transition share one delay (one retry's backoff).
        max((box.delay for box in outbox), default=0.0),
        *log_arrays(log),
        [box.message_id for box in outbox],
        [box.topic for box in outbox],
        [box.key for box in outbox],
        [box.payload.decode() for box in outbox],
        [json.dumps(dict(box.headers)) for box in outbox],
        [box.delay for box in outbox],
        skew,
    ]


def _shaped_transition(*, in_batch: bool) -> str:
    """The statement of one shaped transition. ``in_batch``: one of many on a connection
    in one transaction (:func:`write_shaped_transitions`), which must never wait for a
    row lock, or every transition behind it would: a row another transaction holds is
    left alone and reported ``held``."""
    free = (
        "free AS (SELECT s.id FROM shared.saga_instance s WHERE s.id = $1 FOR UPDATE SKIP LOCKED),"
        if in_batch
        else ""
    )
    only_free = "AND s.id IN (SELECT id FROM free)" if in_batch else ""
    held = (
        "UNION ALL SELECT $1, NULL, NULL, true WHERE NOT EXISTS (SELECT 1 FROM free)"
        if in_batch
        else ""
    )
    return _numbered(
        f"""
    WITH {free}
    shaped AS (
        SELECT {_SHAPE_DOCUMENT.format(old_clock="COALESCE(s.shape_state -> 'clock', '{}')")}
               AS document
        FROM shared.saga_instance s WHERE s.id = $1 AND s.version = $2 {only_free}
    ),
    updated AS (
        UPDATE shared.saga_instance SET
            status = $3, current_step = $4, step_attempt = $5, context = $6::jsonb,
            error = $7, version = version + 1, shape_state = shaped.document,
            step_started_at = CASE WHEN $SENDS::boolean
                THEN {_NOW} + make_interval(secs => $DELAY) ELSE step_started_at END,
            step_deadline = {_SHAPED_DEADLINE.format(document="shaped.document")},
            finished_at = CASE WHEN $3 IN ('completed', 'compensated', 'aborted')
                THEN {_NOW} END
        FROM shaped
        WHERE id = $1 AND version = $2
        RETURNING id, step_started_at, shape_state
    ),
    log AS ({_LOG_FROM_ARRAYS.format(source="updated")}),
    box AS ({_OUTBOXES_FROM.format(source="updated")}),
    consumed AS (
        UPDATE shared.saga_signal g SET consumed_at = {_NOW}, consumed_by_transition = $2 + 1
        FROM updated u
        WHERE g.signal_id = ANY($SIGNAL::text[]) AND g.saga_instance_id = u.id
          AND g.consumed_at IS NULL
    )
    SELECT id, step_started_at, shape_state, false AS held FROM updated
    {held}
    """,
        _SHAPED_PARAMS,
        8,
    )


_SHAPED_TRANSITION = _shaped_transition(in_batch=False)
SHAPED_TRANSITION_IN_BATCH = _shaped_transition(in_batch=True)


async def write_shaped_transition(
    conn: DriverConnection,
    instance: InstanceRow,
    state: InstanceState,
    *,
    log: Sequence[LogRow],
    shape: ShapeWrite,
    skew: float = 0.0,
) -> InstanceRow | None:
    """:func:`write_transition` for a saga that uses parallel groups or waits: every
    command of the transition, the shape state with its branches' clocks, and the kept
    signal it consumed, in one statement."""
    written = await conn.fetchrow(
        _SHAPED_TRANSITION, *shaped_transition_args(instance, state, log, shape, skew)
    )
    if written is None:
        return None
    if shape.child is not None:
        await insert_child_start(conn, shape.child, skew=skew)
    return shaped_written(instance, state, written)


def shaped_transition_args(
    instance: InstanceRow,
    state: InstanceState,
    log: Sequence[LogRow],
    shape: ShapeWrite,
    skew: float,
) -> list[Any]:
    """The arguments of the shaped transition statements, in their order."""
    return [
        instance.id,
        instance.version,
        state.status.value,
        state.current_step,
        state.step_attempt,
        json.dumps(dict(state.context)),
        state.error,
        *_shaped_args(shape, log, skew),
    ]


def shaped_written(instance: InstanceRow, state: InstanceState, written: Any) -> InstanceRow:
    """The instance as a shaped transition's returned row says it is now stored."""
    stored = written["shape_state"]
    return replace(
        instance,
        state=state,
        version=instance.version + 1,
        step_started_at=written["step_started_at"],
        clock=_clock_of(None if stored is None else document(stored)),
        overdue_branches=(),
    )


SHAPED_START = _numbered(
    f"""
    WITH shaped AS (
        SELECT {_SHAPE_DOCUMENT.format(old_clock="'{}'::jsonb")} AS document
    ),
    inserted AS (
        INSERT INTO shared.saga_instance
            (id, saga_definition_id, definition_name, definition_version, status,
             current_step, step_attempt, started_at, step_started_at, step_deadline, payload,
             context, idempotency_key, deadline, shape_state, error, finished_at)
        SELECT $1, $2, $3, $4, $5, $6, $7, {_NOW}, {_NOW},
               {_SHAPED_DEADLINE.format(document="shaped.document")}, $8::jsonb, $9::jsonb,
               $10, {_NOW} + make_interval(secs => $11), shaped.document, $12,
               CASE WHEN $5 IN ('completed', 'compensated', 'aborted') THEN {_NOW} END
        FROM shaped
        ON CONFLICT (definition_name, idempotency_key) WHERE idempotency_key IS NOT NULL
        DO NOTHING
        RETURNING id
    ),
    log AS ({_LOG_FROM_ARRAYS.format(source="inserted")}),
    box AS ({_OUTBOXES_FROM.format(source="inserted")})
    SELECT id FROM inserted
    """,
    _SHAPED_START_PARAMS,
    13,
)


async def insert_shaped_start(
    conn: DriverConnection, start: ShapedStart, *, skew: float = 0.0
) -> uuid.UUID:
    """:func:`insert_start` for a definition that uses parallel groups or waits: the
    first position may be a group (several commands) or a wait (none)."""
    inserted = await conn.fetchval(SHAPED_START, *shaped_start_args(start, skew))
    if inserted is not None:
        if start.shape.child is not None:
            await insert_child_start(conn, start.shape.child, skew=skew)
        return uuid.UUID(str(inserted))
    return await started_with_key(conn, start.definition_name, start.idempotency_key)


def shaped_start_args(start: ShapedStart, skew: float) -> list[Any]:
    """The arguments of :data:`SHAPED_START`, in its order."""
    state = start.state
    return [
        start.saga_id,
        start.definition_id,
        start.definition_name,
        start.definition_version,
        state.status.value,
        state.current_step,
        state.step_attempt,
        json.dumps(dict(start.payload)),
        json.dumps(dict(state.context)),
        start.idempotency_key,
        start.saga_timeout,
        state.error,
        *_shaped_args(start.shape, start.log, skew, start=True),
    ]


# A child saga's start: the shaped start's statement, its definition row found by name
# and version, its parent named. Run after the parent's write, in its transaction.
_CHILD_START = _numbered(
    f"""
    WITH shaped AS (
        SELECT {_SHAPE_DOCUMENT.format(old_clock="'{}'::jsonb")} AS document
    ),
    inserted AS (
        INSERT INTO shared.saga_instance
            (id, saga_definition_id, definition_name, definition_version, status,
             current_step, step_attempt, started_at, step_started_at, step_deadline, payload,
             context, idempotency_key, deadline, shape_state, error, finished_at,
             parent_id, parent_step, parent_attempt)
        SELECT $1, d.id, $3, $4, $5, $6, $7, {_NOW}, {_NOW},
               {_SHAPED_DEADLINE.format(document="shaped.document")}, $8::jsonb, $9::jsonb,
               $10, {_NOW} + make_interval(secs => $11), shaped.document, $12,
               CASE WHEN $5 IN ('completed', 'compensated', 'aborted') THEN {_NOW} END,
               $2, $PSTEP, $PATTEMPT
        FROM shaped, shared.saga_definition d
        WHERE d.name = $3 AND d.version = $4
        ON CONFLICT (definition_name, idempotency_key) WHERE idempotency_key IS NOT NULL
        DO NOTHING
        RETURNING id
    ),
    log AS ({_LOG_FROM_ARRAYS.format(source="inserted")}),
    box AS ({_OUTBOXES_FROM.format(source="inserted")})
    SELECT id FROM inserted
    """,
    ["PSTEP", "PATTEMPT", *_SHAPED_START_PARAMS],
    13,
)


async def insert_child_start(
    conn: DriverConnection, child: ChildStart, *, skew: float = 0.0
) -> uuid.UUID:
    """Insert the child saga a parent's transition starts (in the parent's transaction):
    with its idempotency key used already, nothing, and the first child's id."""
    inserted = await conn.fetchval(
        _CHILD_START,
        child.id,
        child.parent.parent_id,
        child.definition_name,
        child.definition_version,
        child.state.status.value,
        child.state.current_step,
        child.state.step_attempt,
        json.dumps(dict(child.payload)),
        json.dumps(dict(child.state.context)),
        child.idempotency_key,
        child.saga_timeout,
        child.state.error,
        child.parent.step_index,
        child.parent.attempt,
        *_shaped_args(child.shape, child.log, skew, start=True),
    )
    if inserted is not None:
        if child.shape.child is not None:  # the child's first position is a child saga
            await insert_child_start(conn, child.shape.child, skew=skew)
        return uuid.UUID(str(inserted))
    existing = await conn.fetchval(
        "SELECT id FROM shared.saga_instance WHERE definition_name = $1 AND idempotency_key = $2",
        child.definition_name,
        child.idempotency_key,
    )
    if existing is None:
        raise LookupError(
            f"child saga {child.definition_name} v{child.definition_version} is not "
            "registered: the parent's definition was registered without it"
        )
    return uuid.UUID(str(existing))


def _clock_of(shape: Mapping[str, Any] | None) -> dict[int, BranchClock]:
    if shape is None:
        return {}
    return {
        int(branch): BranchClock(
            datetime.fromisoformat(timer["started"]), datetime.fromisoformat(timer["deadline"])
        )
        for branch, timer in shape.get("clock", {}).items()
    }


# --- signals --------------------------------------------------------------------------------

_SIGNAL_COLUMNS = "saga_instance_id, event, signal_id, payload, actor, reason, consumed_at"


async def find_signal(conn: DriverConnection, signal_id: str) -> StoredSignal | None:
    row = await conn.fetchrow(
        f"SELECT {_SIGNAL_COLUMNS} FROM shared.saga_signal WHERE signal_id = $1", signal_id
    )
    return None if row is None else _signal_from(row)


async def kept_signal(
    conn: DriverConnection, saga_id: uuid.UUID, event: str, excluding: Sequence[str] = ()
) -> StoredSignal | None:
    """The oldest signal for ``event`` the saga has not consumed yet (nor applied in the
    transition being decided: ``excluding``)."""
    row = await conn.fetchrow(
        f"""
        SELECT {_SIGNAL_COLUMNS} FROM shared.saga_signal
        WHERE saga_instance_id = $1 AND event = $2 AND consumed_at IS NULL
          AND NOT signal_id = ANY($3::text[])
        ORDER BY received_at, id
        LIMIT 1
        """,
        saga_id,
        event,
        list(excluding),
    )
    return None if row is None else _signal_from(row)


async def insert_signal(
    conn: DriverConnection,
    signal: StoredSignal,
    *,
    consumed_by_transition: int | None,
    skew: float = 0.0,
) -> bool:
    """Store ``signal`` (consumed by that instance version, or kept); False when a signal
    with its id is stored already, and then nothing is written."""
    inserted = await conn.fetchval(
        f"""
        INSERT INTO shared.saga_signal
            (saga_instance_id, event, signal_id, payload, actor, reason, received_at,
             consumed_at, consumed_by_transition)
        VALUES ($1, $2, $3, $4::jsonb, $5, $6, {_NOW.replace("$SKEW", "$8")},
                CASE WHEN $7::integer IS NOT NULL THEN {_NOW.replace("$SKEW", "$8")} END, $7)
        ON CONFLICT (signal_id) DO NOTHING
        RETURNING true
        """,
        signal.saga_id,
        signal.event,
        signal.signal_id,
        json.dumps(dict(signal.payload)),
        signal.actor,
        signal.reason,
        consumed_by_transition,
        skew,
    )
    return bool(inserted)


async def touch_instance(conn: DriverConnection, instance: InstanceRow) -> InstanceRow | None:
    """Move the instance's version without changing it: a signal kept for later does
    this, so a transition decided before the signal was stored (which could enter the
    wait without seeing it) loses its write and is decided again."""
    status = await conn.execute(
        "UPDATE shared.saga_instance SET version = version + 1 WHERE id = $1 AND version = $2",
        instance.id,
        instance.version,
    )
    if rows_affected(status) != 1:
        return None
    return replace(instance, version=instance.version + 1)


def _signal_from(row: Any) -> StoredSignal:
    return StoredSignal(
        row["saga_instance_id"],
        row["event"],
        row["signal_id"],
        document(row["payload"]),
        row["actor"],
        row["reason"],
        row["consumed_at"] is not None,
    )
