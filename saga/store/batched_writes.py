"""Many straight-line transitions, many starts, or many ignored replies, in one statement:
the group commit's writes (:mod:`saga.store.group_commit`). Those of sagas with shapes
(groups, waits), whose statements carry per-saga documents, go as one statement each,
all of a batch pipelined in one round trip and one commit.

The same rows as :func:`saga.store.saga_log.write_transition` writes for each saga (the
instance moved on, its log rows, its next command), for a whole batch of sagas at once:
the instances are updated from arrays, each only at the version its decision was made
on, and the log rows and commands are inserted only for the instances that were. A saga
another process moved first is left out, alone; the others commit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from saga.machine import InstanceState
from saga.store.driver import DriverConnection
from saga.store.records import (
    InstanceRow,
    LogRow,
    OutboxRow,
    ShapedStart,
    ShapeWrite,
    start_key,
)
from saga.store.saga_log import (
    LOG_COLUMNS,
    SHAPED_START,
    SHAPED_TRANSITION_IN_BATCH,
    log_arrays,
    shaped_start_args,
    shaped_transition_args,
    shaped_written,
    started_with_key,
)

__all__ = [
    "SagaHeld",
    "ShapedWrite",
    "StartWrite",
    "TransitionWrite",
    "insert_shaped_starts",
    "insert_starts",
    "record_ignored_rows",
    "write_shaped_transitions",
    "write_transitions",
]


@dataclass(frozen=True, slots=True)
class TransitionWrite:
    """One saga's transition, as :func:`saga.store.saga_log.write_transition` takes it."""

    instance: InstanceRow
    state: InstanceState
    log: Sequence[LogRow]
    outbox: OutboxRow | None
    step_timeout: float

    @property
    def delay(self) -> float:
        return self.outbox.delay if self.outbox else 0.0

    @property
    def starts_attempt(self) -> bool:
        # A finished saga's one message (a child's end to its parent) starts no attempt.
        return self.outbox is not None and not self.state.status.finished


_NOW = "(now() + make_interval(secs => $1))"


def _log_rows(first: int, source: str | None) -> str:
    """Insert the log rows given as arrays from ``$first`` on, of the sagas in ``source``
    (of every saga named, with none)."""
    n = [f"${first + i}" for i in range(17)]
    return f"""
    INSERT INTO shared.saga_step_log ({LOG_COLUMNS})
    SELECT e.saga_id, e.step_index, e.step_name, e.journey, e.action, e.status, e.attempt,
           e.message_id, e.request::jsonb, e.response::jsonb, e.error,
           COALESCE(e.started_at, {_NOW} + make_interval(secs => e.delay)),
           CASE WHEN e.status = 'dispatched' THEN NULL ELSE {_NOW} END,
           e.serialization_retries, e.deadlock_retries, e.actor, e.branch
    FROM unnest({n[0]}::uuid[], {n[1]}::integer[], {n[2]}::text[], {n[3]}::text[],
                {n[4]}::text[], {n[5]}::text[], {n[6]}::integer[], {n[7]}::uuid[],
                {n[8]}::text[], {n[9]}::text[], {n[10]}::text[], {n[11]}::timestamptz[],
                {n[12]}::integer[], {n[13]}::integer[], {n[14]}::text[], {n[15]}::integer[],
                {n[16]}::float8[])
        AS e(saga_id, step_index, step_name, journey, action, status, attempt, message_id,
             request, response, error, started_at, serialization_retries, deadlock_retries,
             actor, branch, delay)
    {"" if source is None else f"WHERE e.saga_id IN (SELECT id FROM {source})"}
    """


def _commands(first: int, source: str) -> str:
    """Insert the commands given as arrays from ``$first`` on, of the sagas in ``source``."""
    n = [f"${first + i}" for i in range(7)]
    return f"""
    INSERT INTO shared.saga_outbox
        (message_id, saga_instance_id, topic, message_key, payload, headers, available_at)
    SELECT o.message_id, o.saga_id, o.topic, o.message_key, o.payload::jsonb,
           o.headers::jsonb, {_NOW} + make_interval(secs => o.delay)
    FROM unnest({n[0]}::uuid[], {n[1]}::uuid[], {n[2]}::text[], {n[3]}::text[],
                {n[4]}::text[], {n[5]}::text[], {n[6]}::float8[])
        AS o(saga_id, message_id, topic, message_key, payload, headers, delay)
    WHERE o.saga_id IN (SELECT id FROM {source})
    """


_TRANSITIONS = f"""
WITH moved AS (
    SELECT * FROM unnest($2::uuid[], $3::integer[], $4::text[], $5::integer[], $6::integer[],
                         $7::text[], $8::text[], $9::boolean[], $10::float8[], $11::float8[])
        AS t(id, version, status, current_step, step_attempt, context, error, starts,
             timeout, delay)
),
free AS (
    -- A row another transaction holds (a worker's claim, an operator's action) is not
    -- waited for here: the whole batch would wait with it. Its write goes alone.
    SELECT s.id FROM shared.saga_instance s
    WHERE s.id = ANY($2::uuid[])
    FOR UPDATE SKIP LOCKED
),
updated AS (
    UPDATE shared.saga_instance s SET
        status = t.status, current_step = t.current_step, step_attempt = t.step_attempt,
        context = t.context::jsonb, error = t.error, version = s.version + 1,
        step_started_at = CASE WHEN t.starts
            THEN {_NOW} + make_interval(secs => t.delay) ELSE s.step_started_at END,
        step_deadline = CASE WHEN t.starts
            THEN {_NOW} + make_interval(secs => t.delay + t.timeout) ELSE NULL END,
        finished_at = CASE WHEN t.status IN ('completed', 'compensated', 'aborted')
            THEN {_NOW} END
    FROM moved t
    WHERE s.id = t.id AND s.version = t.version AND s.id IN (SELECT id FROM free)
    RETURNING s.id, s.step_started_at
),
log AS ({_log_rows(12, "updated")}),
box AS ({_commands(29, "updated")})
SELECT id, step_started_at, false AS held FROM updated
UNION ALL
SELECT id, NULL, true FROM moved WHERE id NOT IN (SELECT id FROM free)
"""

_STARTS = f"""
WITH inserted AS (
    INSERT INTO shared.saga_instance
        (id, saga_definition_id, definition_name, definition_version, status,
         current_step, step_attempt, started_at, step_started_at, step_deadline, payload,
         context, idempotency_key, deadline)
    SELECT n.id, n.definition_id, n.name, n.version, 'running', 0, 1, {_NOW}, {_NOW},
           {_NOW} + make_interval(secs => n.step_timeout), n.payload::jsonb, '{{}}'::jsonb,
           n.idempotency_key, {_NOW} + make_interval(secs => n.saga_timeout)
    FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::integer[], $6::float8[], $7::text[],
                $8::text[], $9::float8[])
        AS n(id, definition_id, name, version, step_timeout, payload, idempotency_key,
             saga_timeout)
    ON CONFLICT (definition_name, idempotency_key) WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING id
),
log AS ({_log_rows(10, "inserted")}),
box AS ({_commands(27, "inserted")})
SELECT id FROM inserted
"""


async def write_transitions(
    conn: DriverConnection, writes: Sequence[TransitionWrite], *, skew: float = 0.0
) -> list[InstanceRow | SagaHeld | None]:
    """Persist every write's transition in one statement; per write, the instance as now
    stored, None when another process moved that instance first, or :class:`SagaHeld`
    when another transaction holds its row (nothing of it was written). At most one
    write per saga (the statement updates each row once)."""
    _check_distinct([w.instance.id for w in writes], "transitions of one saga")
    rows = await conn.fetch(
        _TRANSITIONS,
        skew,
        *_instance_args(writes),
        *_log_args([(w.instance.id, w.delay, w.log) for w in writes]),
        *_outbox_args([(w.instance.id, w.outbox) for w in writes]),
    )
    stored = {r["id"]: r["step_started_at"] for r in rows if not r["held"]}
    held = {r["id"] for r in rows if r["held"]}
    return [
        SagaHeld(w.instance.id)
        if w.instance.id in held
        else replace(
            w.instance,
            state=w.state,
            version=w.instance.version + 1,
            step_started_at=stored[w.instance.id],
        )
        if w.instance.id in stored
        else None
        for w in writes
    ]


@dataclass(frozen=True, slots=True)
class ShapedWrite:
    """One transition of a saga with parallel groups or waits, as
    :func:`saga.store.saga_log.write_shaped_transition` takes it."""

    instance: InstanceRow
    state: InstanceState
    log: Sequence[LogRow]
    shape: ShapeWrite


async def write_shaped_transitions(
    conn: DriverConnection,
    writes: Sequence[ShapedWrite],
    *,
    skew: float = 0.0,
) -> list[InstanceRow | SagaHeld | None]:
    """Many shaped transitions, none starting a child, sent together and committed at
    once (one round trip, one commit; asyncpg runs them in one implicit transaction).
    Per write, as :func:`write_shaped_transition` returns it, or :class:`SagaHeld` when
    another transaction holds its row (nothing of it was written). At most one write per
    saga."""
    _check_distinct([w.instance.id for w in writes], "transitions of one saga")
    if any(w.shape.child is not None for w in writes):
        raise ValueError("a transition that starts a child saga is written alone")
    rows = await conn.fetchmany(
        SHAPED_TRANSITION_IN_BATCH,
        [shaped_transition_args(w.instance, w.state, w.log, w.shape, skew) for w in writes],
    )
    by_id = {row["id"]: row for row in rows}
    results: list[InstanceRow | SagaHeld | None] = []
    for w in writes:
        row = by_id.get(w.instance.id)
        if row is None:
            results.append(None)
        elif row["held"]:
            results.append(SagaHeld(w.instance.id))
        else:
            results.append(shaped_written(w.instance, w.state, row))
    return results


class SagaHeld(Exception):
    """Another transaction holds the saga's row: its transition was left out of the
    batch, to be written alone (waiting for the row as a lone write does)."""

    def __init__(self, saga_id: uuid.UUID) -> None:
        super().__init__(f"saga {saga_id} is held by another transaction")
        self.saga_id = saga_id


@dataclass(frozen=True, slots=True)
class StartWrite:
    """One saga's start, as :func:`saga.store.saga_log.insert_start` takes it."""

    saga_id: uuid.UUID
    definition_id: uuid.UUID
    definition_name: str
    definition_version: int
    payload: Mapping[str, Any]
    idempotency_key: str | None
    step_timeout: float
    saga_timeout: float | None
    log: Sequence[LogRow]
    outbox: OutboxRow

    @property
    def key(self) -> Hashable:
        return start_key(self.saga_id, self.definition_name, self.idempotency_key)


async def insert_starts(
    conn: DriverConnection, starts: Sequence[StartWrite], *, skew: float = 0.0
) -> list[uuid.UUID]:
    """Insert every start in one statement; per start, the id of its saga: its own, or
    that of the saga started before with the same idempotency key (then nothing of this
    one is written). At most one start per key."""
    _check_distinct([s.key for s in starts], "starts with one key")
    rows = await conn.fetch(
        _STARTS,
        skew,
        [s.saga_id for s in starts],
        [s.definition_id for s in starts],
        [s.definition_name for s in starts],
        [s.definition_version for s in starts],
        [s.step_timeout for s in starts],
        [json.dumps(dict(s.payload)) for s in starts],
        [s.idempotency_key for s in starts],
        [s.saga_timeout for s in starts],
        *_log_args([(s.saga_id, 0.0, s.log) for s in starts]),
        *_outbox_args([(s.saga_id, s.outbox) for s in starts]),
    )
    return await _saga_ids(conn, starts, {r["id"] for r in rows})


async def insert_shaped_starts(
    conn: DriverConnection, starts: Sequence[ShapedStart], *, skew: float = 0.0
) -> list[uuid.UUID]:
    """Many shaped starts, none starting a child, sent together and committed at once;
    per start, as :func:`insert_starts` returns it. At most one start per key."""
    _check_distinct([s.key for s in starts], "starts with one key")
    if any(s.shape.child is not None for s in starts):
        raise ValueError("a start that starts a child saga is written alone")
    rows = await conn.fetchmany(SHAPED_START, [shaped_start_args(s, skew) for s in starts])
    return await _saga_ids(conn, starts, {r["id"] for r in rows})


async def _saga_ids(
    conn: DriverConnection, starts: Sequence[StartWrite | ShapedStart], inserted: set[uuid.UUID]
) -> list[uuid.UUID]:
    """Per start, its own saga if it was inserted, else the one an earlier start with its
    key inserted."""
    return [
        start.saga_id
        if start.saga_id in inserted
        else await started_with_key(conn, start.definition_name, start.idempotency_key)
        for start in starts
    ]


async def record_ignored_rows(
    conn: DriverConnection, rows: Sequence[tuple[uuid.UUID, LogRow]], *, skew: float = 0.0
) -> list[None]:
    """Note each (saga, row), a reply the coordinator ignored as stale or a duplicate, in
    the saga's log, all in one statement; the instances are not touched."""
    await conn.execute(
        _log_rows(2, None), skew, *_log_args([(saga_id, 0.0, [row]) for saga_id, row in rows])
    )
    return [None] * len(rows)


def _check_distinct(keys: Sequence[Hashable], what: str) -> None:
    if len(set(keys)) != len(keys):
        raise ValueError(f"two {what} in one batch: the statement would write a row twice")


def _instance_args(writes: Sequence[TransitionWrite]) -> list[list[Any]]:
    return [
        [w.instance.id for w in writes],
        [w.instance.version for w in writes],
        [w.state.status.value for w in writes],
        [w.state.current_step for w in writes],
        [w.state.step_attempt for w in writes],
        [json.dumps(dict(w.state.context)) for w in writes],
        [w.state.error for w in writes],
        [w.starts_attempt for w in writes],
        [w.step_timeout for w in writes],
        [w.delay for w in writes],
    ]


def _log_args(
    sagas: Sequence[tuple[uuid.UUID, float, Sequence[LogRow]]],
) -> list[list[Any]]:
    """The log rows of each (saga, delay of its command, rows), as the arrays of
    :func:`_log_rows`: the saga's id, the rows' own arrays, the delay."""
    rows = [(saga_id, delay, r) for saga_id, delay, log in sagas for r in log]
    return [
        [saga_id for saga_id, _, _ in rows],
        *log_arrays([r for _, _, r in rows]),
        [delay for _, delay, _ in rows],
    ]


def _outbox_args(sagas: Sequence[tuple[uuid.UUID, OutboxRow | None]]) -> list[list[Any]]:
    """The command of each (saga, command or none), as the arrays of :func:`_commands`."""
    sent = [(saga_id, o) for saga_id, o in sagas if o is not None]
    return [
        [saga_id for saga_id, _ in sent],
        [o.message_id for _, o in sent],
        [o.topic for _, o in sent],
        [o.key for _, o in sent],
        [o.payload.decode() for _, o in sent],
        [json.dumps(dict(o.headers)) for _, o in sent],
        [o.delay for _, o in sent],
    ]
