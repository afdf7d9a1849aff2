"""The saga log port on PostgreSQL: :class:`PostgresSagaLog` runs the statements of
:mod:`saga.store.saga_log` and :mod:`saga.store.definitions` through a
:class:`~saga.store.database.Database`.

Each method is one unit of work under the name the engine has always given it (the
slow-unit log and ``saga_db_*`` metrics keep their labels), and the hot path keeps its
cost: a start, a transition or an ignored reply is one statement in its own implicit
transaction, no ``BEGIN``/``COMMIT``. A claim is one transaction: ``FOR UPDATE SKIP
LOCKED``, then the settling unit's writes, then ``COMMIT``. Deadlines are written and
judged by the database's clock (:attr:`Database.clock`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import structlog

from saga import metrics
from saga.definition import SagaDefinition
from saga.errors import SagaError, UsageError
from saga.machine import InstanceState
from saga.store import definitions, saga_log
from saga.store.batched_writes import (
    SagaHeld,
    ShapedWrite,
    StartWrite,
    TransitionWrite,
    insert_shaped_starts,
    insert_starts,
    record_ignored_rows,
    write_shaped_transitions,
    write_transitions,
)
from saga.store.database import Database
from saga.store.driver import DriverConnection
from saga.store.group_commit import GroupCommit
from saga.store.port import SettleClaimed, SignalUnit
from saga.store.records import (
    InstanceRow,
    LogRow,
    OutboxRow,
    SagaSummary,
    ShapedStart,
    ShapeWrite,
    StoredDefinition,
    StoredSignal,
)

T = TypeVar("T")
W = TypeVar("W")
R = TypeVar("R")

log = structlog.get_logger("saga.store")

# The most writes one group commit takes; at the coordinator's default concurrency (128
# replies in hand at once) a batch of transitions never reaches it.
MAX_WRITES_PER_COMMIT = 256


class PostgresSagaLog:
    """The :class:`~saga.store.port.SagaLog` of the ``shared`` schema's saga tables."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.transitions: GroupCommit[TransitionWrite, InstanceRow | None] = GroupCommit(
            self._write_transitions,
            key=lambda write: write.instance.id,
            max_batch=MAX_WRITES_PER_COMMIT,
        )
        self.starts: GroupCommit[StartWrite, uuid.UUID] = GroupCommit(
            self._insert_starts, key=lambda start: start.key, max_batch=MAX_WRITES_PER_COMMIT
        )
        self.shaped: GroupCommit[ShapedWrite, InstanceRow | None] = GroupCommit(
            self._write_shaped_transitions,
            key=lambda write: write.instance.id,
            max_batch=MAX_WRITES_PER_COMMIT,
        )
        self.shaped_starts: GroupCommit[ShapedStart, uuid.UUID] = GroupCommit(
            self._insert_shaped_starts,
            key=lambda start: start.key,
            max_batch=MAX_WRITES_PER_COMMIT,
        )
        # Reads, and notes of ignored replies, batch the same way; no two of them conflict,
        # so two batches may run side by side. Under duplicate deliveries these are most
        # of the coordinator's statements (each ignored reply is a read and a note).
        self.loads: GroupCommit[uuid.UUID, InstanceRow | None] = GroupCommit(
            self._load_instances, max_batch=MAX_WRITES_PER_COMMIT, flushers=2
        )
        self.ignored: GroupCommit[tuple[uuid.UUID, LogRow], None] = GroupCommit(
            self._record_ignored_rows, max_batch=MAX_WRITES_PER_COMMIT, flushers=2
        )

    async def register_definition(self, definition: SagaDefinition) -> StoredDefinition:
        async def store(conn: DriverConnection) -> StoredDefinition:
            return await definitions.register(conn, definition)

        return await self.database.run_driver(store, name="coordinator.register")

    async def load_definition(self, name: str, version: int | None = None) -> StoredDefinition:
        return await self.database.run_driver(
            lambda conn: definitions.load(conn, name, version),
            transaction=False,
            name="coordinator.load_definition",
        )

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
        """Group-committed with the starts other callers make meanwhile."""
        steps = definition.definition
        return await self.starts.submit(
            StartWrite(
                saga_id=saga_id,
                definition_id=definition.id,
                definition_name=steps.name,
                definition_version=steps.version,
                payload=payload,
                idempotency_key=idempotency_key,
                step_timeout=steps.steps[0].timeout,
                saga_timeout=steps.timeout,
                log=log,
                outbox=outbox,
            )
        )

    async def _insert_starts(self, starts: Sequence[StartWrite]) -> list[uuid.UUID | BaseException]:
        return await self._grouped("coordinator.start", starts, insert_starts, self._insert_one)

    async def _insert_one(self, start: StartWrite) -> uuid.UUID:
        async def insert(conn: DriverConnection) -> uuid.UUID:
            return await saga_log.insert_start(
                conn,
                saga_id=start.saga_id,
                definition_id=start.definition_id,
                definition_name=start.definition_name,
                definition_version=start.definition_version,
                payload=start.payload,
                idempotency_key=start.idempotency_key,
                step_timeout=start.step_timeout,
                saga_timeout=start.saga_timeout,
                log=start.log,
                outbox=start.outbox,
                skew=self.database.clock.skew,
            )

        return await self.database.run_driver(insert, transaction=False, name="coordinator.start")

    async def load_instance(self, saga_id: uuid.UUID) -> InstanceRow | None:
        """Read in one statement with the instances other handlers read meanwhile."""
        return await self.loads.submit(saga_id)

    async def _load_instances(
        self, saga_ids: Sequence[uuid.UUID]
    ) -> list[InstanceRow | BaseException | None]:
        found: list[InstanceRow | BaseException | None] = []
        found.extend(
            await self.database.run_driver(
                lambda conn: saga_log.load_instances(conn, saga_ids),
                transaction=False,
                name="coordinator.load",
            )
        )
        return found

    async def write_transition(
        self,
        instance: InstanceRow,
        state: InstanceState,
        *,
        log: Sequence[LogRow],
        outbox: OutboxRow | None,
        step_timeout: float,
    ) -> InstanceRow | None:
        """Group-committed (:mod:`saga.store.group_commit`): the transitions other handlers
        write meanwhile go in the same statement and commit. One whose saga another
        transaction holds is written alone, so only it waits for the row."""
        write = TransitionWrite(instance, state, log, outbox, step_timeout)
        try:
            return await self.transitions.submit(write)
        except SagaHeld:
            return await self._write_one(write)

    async def _write_transitions(
        self, writes: Sequence[TransitionWrite]
    ) -> list[InstanceRow | BaseException | None]:
        # Even a lone transition goes by the batch's statement, which skips a row another
        # transaction holds instead of waiting for it: the flusher must never wait on a
        # lock, or every transition behind it would (the held one is written alone).
        return await self._grouped(
            "coordinator.transition",
            writes,
            write_transitions,
            self._write_one,
            lone_write_alone=False,
        )

    async def _grouped(
        self,
        unit: str,
        writes: Sequence[W],
        together: Callable[..., Awaitable[list[R]]],
        alone: Callable[[W], Awaitable[R]],
        *,
        lone_write_alone: bool = True,
    ) -> list[R | BaseException]:
        """One group commit's writes: alone by the statement of one (a quiet moment's
        write costs what it always did) if ``lone_write_alone``, else ``together`` in one
        statement. If the database refuses that statement for one write's sake, each is
        written alone, so the refusal reaches only that write's caller."""
        metrics.GROUP_COMMIT_WRITES.labels(unit).observe(len(writes))
        if len(writes) == 1 and lone_write_alone:
            return [await alone(writes[0])]
        skew = self.database.clock.skew
        try:
            written: list[R | BaseException] = []
            written.extend(
                await self.database.run_driver(
                    lambda conn: together(conn, writes, skew=skew), transaction=False, name=unit
                )
            )
            return written
        except Exception as exc:
            if isinstance(exc, SagaError) and exc.retriable:
                raise  # the database is away: each write alone would fail the same way
            log.warning("group_commit_split", unit=unit, writes=len(writes), error=str(exc))
        return [await _outcome(alone(write)) for write in writes]

    async def _write_one(self, write: TransitionWrite) -> InstanceRow | None:
        async def one(conn: DriverConnection) -> InstanceRow | None:
            return await saga_log.write_transition(
                conn,
                write.instance,
                write.state,
                log=write.log,
                outbox=write.outbox,
                step_timeout=write.step_timeout,
                skew=self.database.clock.skew,
            )

        return await self.database.run_driver(one, transaction=False, name="coordinator.transition")

    async def write_shaped_transition(
        self,
        instance: InstanceRow,
        state: InstanceState,
        *,
        log: Sequence[LogRow],
        shape: ShapeWrite,
    ) -> InstanceRow | None:
        """Group-committed like :meth:`write_transition`, unless it starts a child saga:
        the child is inserted in the transition's own transaction."""
        write = ShapedWrite(instance, state, log, shape)
        if shape.child is not None:
            return await self._write_shaped_one(write)
        try:
            return await self.shaped.submit(write)
        except SagaHeld:
            return await self._write_shaped_one(write)

    async def _write_shaped_transitions(
        self, writes: Sequence[ShapedWrite]
    ) -> list[InstanceRow | BaseException | None]:
        # A lone one too goes by the batch's statement, which skips a held row (see
        # _write_transitions).
        return await self._grouped(
            "coordinator.transition",
            writes,
            write_shaped_transitions,
            self._write_shaped_one,
            lone_write_alone=False,
        )

    async def _write_shaped_one(self, write: ShapedWrite) -> InstanceRow | None:
        async def one(conn: DriverConnection) -> InstanceRow | None:
            return await saga_log.write_shaped_transition(
                conn,
                write.instance,
                write.state,
                log=write.log,
                shape=write.shape,
                skew=self.database.clock.skew,
            )

        # A child saga started by the transition is inserted in the same transaction.
        return await self.database.run_driver(
            one, transaction=write.shape.child is not None, name="coordinator.transition"
        )

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
        """Group-committed like :meth:`insert_start`, unless it starts a child saga: the
        child is inserted in the start's own transaction."""
        stored = definition.definition
        start = ShapedStart(
            saga_id=saga_id,
            definition_id=definition.id,
            definition_name=stored.name,
            definition_version=stored.version,
            payload=payload,
            idempotency_key=idempotency_key,
            saga_timeout=stored.timeout,
            state=state,
            log=log,
            shape=shape,
        )
        if shape.child is not None:
            return await self._insert_shaped_one(start)
        return await self.shaped_starts.submit(start)

    async def _insert_shaped_starts(
        self, starts: Sequence[ShapedStart]
    ) -> list[uuid.UUID | BaseException]:
        return await self._grouped(
            "coordinator.start", starts, insert_shaped_starts, self._insert_shaped_one
        )

    async def _insert_shaped_one(self, start: ShapedStart) -> uuid.UUID:
        skew = self.database.clock.skew
        return await self.database.run_driver(
            lambda conn: saga_log.insert_shaped_start(conn, start, skew=skew),
            transaction=start.shape.child is not None,
            name="coordinator.start",
        )

    async def kept_signal(
        self, saga_id: uuid.UUID, event: str, excluding: Sequence[str] = ()
    ) -> StoredSignal | None:
        return await self.database.run_driver(
            lambda conn: saga_log.kept_signal(conn, saga_id, event, excluding),
            transaction=False,
            name="coordinator.kept_signal",
        )

    async def signal_unit(self, saga_id: uuid.UUID, unit: SignalUnit[T]) -> T:
        skew = self.database.clock.skew

        async def run(conn: DriverConnection) -> T:
            instance = await saga_log.lock_instance(conn, saga_id)
            return await unit(None if instance is None else _Locked(conn, instance, skew))

        return await self.database.run_driver(run, name="coordinator.signal")

    async def record_ignored(self, saga_id: uuid.UUID, row: LogRow) -> None:
        """Group-committed with the ignored replies other handlers note meanwhile."""
        await self.ignored.submit((saga_id, row))

    async def _record_ignored_rows(
        self, rows: Sequence[tuple[uuid.UUID, LogRow]]
    ) -> list[BaseException | None]:
        return await self._grouped(
            "coordinator.ignored", rows, record_ignored_rows, self._record_one_ignored
        )

    async def _record_one_ignored(self, ignored: tuple[uuid.UUID, LogRow]) -> None:
        saga_id, row = ignored
        await self.database.run_driver(
            lambda conn: record_ignored_rows(conn, [(saga_id, row)], skew=self.database.clock.skew),
            transaction=False,
            name="coordinator.ignored",
        )

    async def summary(self, saga_id: uuid.UUID) -> SagaSummary | None:
        return await self.database.run_driver(
            lambda conn: saga_log.summary(conn, saga_id), transaction=False, name="saga.status"
        )

    async def claim_overdue_steps(self, limit: int, settle: SettleClaimed[T]) -> T:
        return await self._claim(
            lambda conn, skew: saga_log.claim_overdue_steps(conn, limit, skew=skew),
            settle,
            name="worker.step_timeouts",
        )

    async def claim_expired_sagas(self, limit: int, settle: SettleClaimed[T]) -> T:
        return await self._claim(
            lambda conn, skew: saga_log.claim_expired_sagas(conn, limit, skew=skew),
            settle,
            name="worker.saga_deadlines",
        )

    async def _claim(
        self,
        claim: Callable[[DriverConnection, float], Awaitable[list[InstanceRow]]],
        settle: SettleClaimed[T],
        *,
        name: str,
    ) -> T:
        skew = self.database.clock.skew

        async def unit(conn: DriverConnection) -> T:
            return await settle(_Claim(conn, await claim(conn, skew), skew))

        return await self.database.run_driver(unit, name=name)


class _Claim:
    """Instances locked by the transaction of ``conn``: the port's ``ClaimedSagas``."""

    __slots__ = ("_conn", "_instances", "_skew")

    def __init__(self, conn: DriverConnection, instances: list[InstanceRow], skew: float) -> None:
        self._conn = conn
        self._instances = instances
        self._skew = skew

    @property
    def instances(self) -> Sequence[InstanceRow]:
        return tuple(self._instances)

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
        if not any((i.id, i.version) == (instance.id, instance.version) for i in self._instances):
            raise UsageError(
                f"saga {instance.id} at version {instance.version} is not among the sagas "
                "this claim holds; write only the claimed instances as claimed"
            )
        if shape is not None:
            stored = await saga_log.write_shaped_transition(
                self._conn, instance, state, log=log, shape=shape, skew=self._skew
            )
        else:
            stored = await saga_log.write_transition(
                self._conn,
                instance,
                state,
                log=log,
                outbox=outbox,
                step_timeout=step_timeout,
                skew=self._skew,
            )
        if stored is None:
            raise RuntimeError(f"saga {instance.id} changed under the claim's row lock")
        return stored

    async def kept_signal(
        self, saga_id: uuid.UUID, event: str, excluding: Sequence[str] = ()
    ) -> StoredSignal | None:
        return await saga_log.kept_signal(self._conn, saga_id, event, excluding)

    async def load_instance(self, saga_id: uuid.UUID) -> InstanceRow | None:
        return await saga_log.load_instance(self._conn, saga_id)


class _Locked:
    """A saga locked by the transaction of ``conn``: the port's ``LockedSaga``."""

    __slots__ = ("_conn", "_instance", "_skew")

    def __init__(self, conn: DriverConnection, instance: InstanceRow, skew: float) -> None:
        self._conn = conn
        self._instance = instance
        self._skew = skew

    @property
    def instance(self) -> InstanceRow:
        return self._instance

    async def find_signal(self, signal_id: str) -> StoredSignal | None:
        return await saga_log.find_signal(self._conn, signal_id)

    async def kept_signal(
        self, saga_id: uuid.UUID, event: str, excluding: Sequence[str] = ()
    ) -> StoredSignal | None:
        return await saga_log.kept_signal(self._conn, saga_id, event, excluding)

    async def insert_signal(
        self, signal: StoredSignal, *, consumed_by_transition: int | None
    ) -> bool:
        return await saga_log.insert_signal(
            self._conn, signal, consumed_by_transition=consumed_by_transition, skew=self._skew
        )

    async def write_transition(
        self, state: InstanceState, *, log: Sequence[LogRow], shape: ShapeWrite
    ) -> InstanceRow:
        stored = await saga_log.write_shaped_transition(
            self._conn, self._instance, state, log=log, shape=shape, skew=self._skew
        )
        if stored is None:
            raise RuntimeError(f"saga {self._instance.id} changed under the signal's row lock")
        self._instance = stored
        return stored

    async def touch(self) -> InstanceRow:
        stored = await saga_log.touch_instance(self._conn, self._instance)
        if stored is None:
            raise RuntimeError(f"saga {self._instance.id} changed under the signal's row lock")
        self._instance = stored
        return stored


async def _outcome(pending: Awaitable[T]) -> T | BaseException:
    try:
        return await pending
    except Exception as exc:
        return exc
