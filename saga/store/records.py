"""The saga log's records as the engine sees them: plain data, no driver.

Both the port (:mod:`saga.store.port`) and its PostgreSQL adapter speak these types, so
whoever uses the port never imports a database driver to name what it reads or writes.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
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
    """Who wrote the row by hand (``saga retry`` and the other operator actions)."""


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
