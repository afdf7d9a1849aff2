"""The saga log's records as the engine sees them: plain data, no driver.

Both the port (:mod:`saga.store.port`) and its PostgreSQL adapter speak these types, so
whoever uses the port never imports a database driver to name what it reads or writes.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from saga.definition import SagaDefinition
from saga.machine import InstanceState, LogEntry, Phase, SagaStatus


@dataclass(frozen=True, slots=True)
class StoredDefinition:
    """A definition as stored: ``id`` is the row every instance of it refers to."""

    id: uuid.UUID
    definition: SagaDefinition


@dataclass(frozen=True, slots=True)
class InstanceRow:
    """One saga instance: the machine's state plus what the store keeps beside it."""

    id: uuid.UUID
    definition_name: str
    definition_version: int
    state: InstanceState
    payload: Mapping[str, Any]
    version: int
    """The optimistic version every write is conditional on."""
    step_started_at: datetime | None
    clock: Mapping[int, BranchClock] = field(default_factory=dict)
    """At a parallel group: when each branch's attempt (or compensation) in flight
    started, and its deadline; empty elsewhere."""
    overdue_branches: tuple[int, ...] = ()
    """The branches past their deadline, as a timeout claim judged them by the
    database's clock; empty when not read by a claim."""
    parent: ParentLink | None = None
    """For a child saga: the parent position that started it (None for any other)."""


@dataclass(frozen=True, slots=True)
class ParentLink:
    """The parent saga, its ``SubSaga`` position and the attempt that started a child."""

    parent_id: uuid.UUID
    step_index: int
    attempt: int


@dataclass(frozen=True, slots=True)
class BranchClock:
    """One branch's attempt in flight: when it started and when it times out."""

    started_at: datetime
    deadline: datetime


@dataclass(frozen=True, slots=True)
class BranchTimer:
    """A branch command sent by a transition: it may go out after ``delay`` s and times
    out ``timeout`` s after that."""

    branch: int
    delay: float
    timeout: float


@dataclass(frozen=True, slots=True)
class ShapeWrite:
    """What a transition of a saga that uses parallel groups or waits writes beyond a
    straight-line one (whose write keeps its single command and no shape state).

    ``document`` is the state's shape fields (:meth:`InstanceState.to_document` beyond a
    straight line), ``None`` when it has none. ``outbox`` holds every command the
    transition sends. ``in_flight`` names the branches whose attempt is still out after
    it (their clocks are kept, or renewed by ``timers``); the step deadline is then the
    earliest of theirs. Otherwise it is ``deadline_in`` s from now (a plain step's
    command: its delay plus its timeout; a wait: its timeout), or none.
    ``consumed_signals`` are the ids of the kept signals the transition applied: they are
    marked consumed in the same statement."""

    document: Mapping[str, Any] | None
    outbox: tuple[OutboxRow, ...] = ()
    in_flight: tuple[int, ...] = ()
    timers: tuple[BranchTimer, ...] = ()
    deadline_in: float | None = None
    consumed_signals: tuple[str, ...] = ()
    child: ChildStart | None = None
    """A child saga the transition starts, inserted in the same transaction."""


@dataclass(frozen=True, slots=True)
class ChildStart:
    """A child saga's first write: its instance (linked to ``parent``), first log rows
    and first commands. ``idempotency_key`` makes it at most one per parent position
    and attempt; its definition row is found by name and version."""

    id: uuid.UUID
    definition_name: str
    definition_version: int
    saga_timeout: float | None
    payload: Mapping[str, Any]
    idempotency_key: str
    state: InstanceState
    log: tuple[LogRow, ...]
    shape: ShapeWrite
    parent: ParentLink


def start_key(saga_id: uuid.UUID, definition_name: str, idempotency_key: str | None) -> Hashable:
    """What makes two starts the same saga: two with one key must not share a group
    commit's statement, since the second must see the first as already there."""
    if idempotency_key is None:
        return saga_id
    return (definition_name, idempotency_key)


@dataclass(frozen=True, slots=True)
class ShapedStart:
    """The first write of a saga with parallel groups or waits: its instance, first log
    rows and first commands (:func:`saga.store.saga_log.insert_shaped_start`)."""

    saga_id: uuid.UUID
    definition_id: uuid.UUID
    definition_name: str
    definition_version: int
    payload: Mapping[str, Any]
    idempotency_key: str | None
    saga_timeout: float | None
    state: InstanceState
    log: Sequence[LogRow]
    shape: ShapeWrite

    @property
    def key(self) -> Hashable:
        return start_key(self.saga_id, self.definition_name, self.idempotency_key)


@dataclass(frozen=True, slots=True)
class StoredSignal:
    """A signal as stored (``shared.saga_signal``)."""

    saga_id: uuid.UUID
    event: str
    signal_id: str
    payload: Mapping[str, Any]
    actor: str | None
    reason: str | None
    consumed: bool


@dataclass(frozen=True, slots=True)
class LogRow:
    """A step-log entry with the names the machine does not know."""

    entry: LogEntry
    step_name: str
    journey: str
    message_id: uuid.UUID | None
    request: Mapping[str, Any] | None = None
    started_at: datetime | None = None
    """When the attempt was dispatched; ``None`` means now (plus any retry delay)."""
    serialization_retries: int = 0
    deadlock_retries: int = 0
    """How often the participant re-ran the step's transaction before it answered."""
    actor: str | None = None
    """Who wrote the row by hand (``saga retry`` and the other operator actions), or who
    sent the signal it records."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A command for the coordinator's outbox, written with the transition that sends it."""

    message_id: uuid.UUID
    topic: str
    key: str
    payload: bytes
    headers: Mapping[str, str]
    delay: float = 0.0
    """Seconds the command waits before it may be sent (a retry's backoff)."""


@dataclass(frozen=True, slots=True)
class StepPosition:
    """Where the step log last left the saga's current step."""

    phase: Phase
    step_name: str
    journey: str


@dataclass(frozen=True, slots=True)
class SagaSummary:
    """How a saga stands, as a caller waiting on it sees it."""

    id: uuid.UUID
    status: SagaStatus
    context: Mapping[str, Any]
    error: str | None
    started_at: datetime
    finished_at: datetime | None
