"""The saga log port: what the coordinator and the timeout job ask of the store that
keeps every saga's state, step log and commands.

The coordinator (:class:`~saga.coordinator.service.Coordinator` and its
:class:`~saga.coordinator.replies.ReplyProcessor`) and the worker's timeout jobs
(:mod:`saga.worker.jobs.timeouts`) speak only :class:`SagaLog`;
:class:`~saga.store.postgres_log.PostgresSagaLog` is the production adapter. Every adapter
passes the same contract suite (``tests/integration/test_saga_log_contract.py``):

* starting a saga is idempotent by its key: a repeat writes nothing and names the first;
* a transition is conditional on the instance's optimistic version: one written on a
  stale version writes nothing (no log row, no command) and says so with ``None``;
* a transition's instance row, log rows and command are kept together or not at all;
* two workers claiming overdue sagas at once never claim the same saga.

Operators' actions (:mod:`saga.operator.actions`) are not on the port: each runs several
statements under one row lock in one transaction (lock, read the step log, withdraw the
unpublished commands, write), which no single method here could express without handing
out the transaction itself. They keep the connection-level functions of
:mod:`saga.store.saga_log`, which the PostgreSQL adapter runs too.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from saga.definition import SagaDefinition
from saga.machine import InstanceState
from saga.store.records import (
    InstanceRow,
    LogRow,
    OutboxRow,
    SagaSummary,
    ShapeWrite,
    StoredDefinition,
    StoredSignal,
)

T = TypeVar("T")


class ClaimedSagas(Protocol):
    """Sagas a claim holds locked until the unit it was handed to returns."""

    @property
    def instances(self) -> Sequence[InstanceRow]:
        """The claimed instances, the one with the earliest deadline first."""
        ...

    async def write_transition(
        self,
        instance: InstanceRow,
        state: InstanceState,
        *,
        log: Sequence[LogRow],
        outbox: OutboxRow | None,
        step_timeout: float,
        shape: ShapeWrite | None = None,
    ) -> InstanceRow:
        """Like :meth:`SagaLog.write_transition`, inside the claim's transaction: kept
        only if the whole unit returns. The claim holds the row, so the version cannot
        have moved; ``instance`` must be one of :attr:`instances`
        (:class:`~saga.errors.UsageError` otherwise)."""
        ...

    async def kept_signal(
        self, saga_id: uuid.UUID, event: str, excluding: Sequence[str] = ()
    ) -> StoredSignal | None:
        """Like :meth:`SagaLog.kept_signal`, inside the claim's transaction."""
        ...

    async def load_instance(self, saga_id: uuid.UUID) -> InstanceRow | None:
        """Like :meth:`SagaLog.load_instance`, inside the claim's transaction (not locked:
        a claimed parent reads its child's latest committed state)."""
        ...


class LockedSaga(Protocol):
    """One saga locked for a signal (:meth:`SagaLog.signal_unit`) until the unit returns."""

    @property
    def instance(self) -> InstanceRow: ...

    async def find_signal(self, signal_id: str) -> StoredSignal | None:
        """The signal stored under ``signal_id`` (for any saga), if any."""
        ...

    async def kept_signal(
        self, saga_id: uuid.UUID, event: str, excluding: Sequence[str] = ()
    ) -> StoredSignal | None: ...

    async def insert_signal(
        self, signal: StoredSignal, *, consumed_by_transition: int | None
    ) -> bool:
        """Store the signal, consumed by that instance version or kept; False (nothing
        written) when its id is stored already."""
        ...

    async def write_transition(
        self, state: InstanceState, *, log: Sequence[LogRow], shape: ShapeWrite
    ) -> InstanceRow:
        """Move the locked saga (the lock holds its version)."""
        ...

    async def touch(self) -> InstanceRow:
        """Move the locked saga's version without changing it, so that a transition
        decided before this unit (without the signal it stores) is decided again."""
        ...


SignalUnit = Callable[[LockedSaga | None], Awaitable[T]]
"""Work on a saga locked for a signal (``None``: no such saga). It may be run again from
the start, like :data:`SettleClaimed`."""


SettleClaimed = Callable[[ClaimedSagas], Awaitable[T]]
"""A unit of work on claimed sagas. It may be run again from the start (a serialization
failure or deadlock rolls the claim and its writes back), so it does no I/O outside the
store that cannot be repeated; publish what it wrote after the claim returns."""


class SagaLog(Protocol):
    """Where sagas are started, read, moved and claimed."""

    async def register_definition(self, definition: SagaDefinition) -> StoredDefinition:
        """Store ``definition`` unless this name and version are stored already; the same
        content again is a no-op, other content raises
        :class:`~saga.errors.DefinitionConflict` (a stored version never changes)."""
        ...

    async def load_definition(self, name: str, version: int | None = None) -> StoredDefinition:
        """The stored definition of that version, the newest when ``version`` is None;
        :class:`~saga.errors.UnknownDefinition` when none is stored."""
        ...

    async def insert_start(
        self,
        *,
        saga_id: uuid.UUID,
        definition: StoredDefinition,
        payload: Mapping[str, Any],
        idempotency_key: str | None,
        log: Sequence[LogRow],
        outbox: OutboxRow,
    ) -> uuid.UUID:
        """Insert a running instance at its first step with its first log rows and its
        first command, all in one commit, and return ``saga_id``. With an
        ``idempotency_key`` this definition has started a saga with before, write nothing
        and return that saga's id. The step's deadline is the first step's timeout from
        now, the saga's the definition's timeout (none without one)."""
        ...

    async def load_instance(self, saga_id: uuid.UUID) -> InstanceRow | None:
        """The instance as last committed, or None when there is no such saga. Reads
        without a lock: decide on it, then write conditionally on its version."""
        ...

    async def write_transition(
        self,
        instance: InstanceRow,
        state: InstanceState,
        *,
        log: Sequence[LogRow],
        outbox: OutboxRow | None,
        step_timeout: float,
    ) -> InstanceRow | None:
        """Move the saga from ``instance`` to ``state`` and return the instance as now
        stored (version one higher); None when the stored version is no longer
        ``instance.version`` (another writer moved the saga first), and then nothing is
        written. The log rows and the command are written with the instance in one
        commit. With a command, the step's deadline becomes ``step_timeout`` seconds
        after the command's delay; without one, the saga has no step deadline. This is
        the coordinator's hot path: one round trip, one commit."""
        ...

    async def write_shaped_transition(
        self,
        instance: InstanceRow,
        state: InstanceState,
        *,
        log: Sequence[LogRow],
        shape: ShapeWrite,
    ) -> InstanceRow | None:
        """:meth:`write_transition` for a saga that uses parallel groups or waits: every
        command of ``shape``, the shape state with each branch's clock and the kept
        signal consumed, with the instance and its log rows in one commit. The step
        deadline is the earliest clock of a branch in flight, else ``shape.deadline_in``
        from now, else none."""
        ...

    async def insert_shaped_start(
        self,
        *,
        saga_id: uuid.UUID,
        definition: StoredDefinition,
        payload: Mapping[str, Any],
        idempotency_key: str | None,
        state: InstanceState,
        log: Sequence[LogRow],
        shape: ShapeWrite,
    ) -> uuid.UUID:
        """:meth:`insert_start` for a definition that uses parallel groups or waits: the
        instance starts in ``state`` (a group's branches all sent, or a wait entered)."""
        ...

    async def kept_signal(
        self, saga_id: uuid.UUID, event: str, excluding: Sequence[str] = ()
    ) -> StoredSignal | None:
        """The oldest signal for ``event`` stored for the saga and not yet consumed: the
        transition that enters a wait for ``event`` consumes it."""
        ...

    async def signal_unit(self, saga_id: uuid.UUID, unit: SignalUnit[T]) -> T:
        """Run ``unit`` in one transaction with the saga locked, and return what it
        returns once its writes are committed."""
        ...

    async def record_ignored(self, saga_id: uuid.UUID, row: LogRow) -> None:
        """Append ``row`` as an ignored reply (a stale or duplicate one) to the saga's
        step log without touching the instance: one statement, one commit."""
        ...

    async def summary(self, saga_id: uuid.UUID) -> SagaSummary | None:
        """How the saga stands as last committed, or None when there is no such saga."""
        ...

    async def claim_overdue_steps(self, limit: int, settle: SettleClaimed[T]) -> T:
        """Claim up to ``limit`` in-flight sagas (running or compensating) whose current
        attempt is past its deadline, earliest deadline first, and return what
        ``settle`` returns once its writes are committed. Sagas another claim (or a
        write in progress) holds are skipped, not waited for, so concurrent claimers
        share the work and never take the same saga."""
        ...

    async def claim_expired_sagas(self, limit: int, settle: SettleClaimed[T]) -> T:
        """Like :meth:`claim_overdue_steps`, for running sagas past their overall
        deadline."""
        ...
