"""The coordinator: registers definitions, starts sagas, drives them from replies.

::

    async with Coordinator(settings=settings, database=database) as coordinator:
        await coordinator.register(BOOK_APPOINTMENT)
        saga_id = await coordinator.start(BOOK_APPOINTMENT, {"slot_id": ...},
                                          idempotency_key=request_id)
        outcome = await coordinator.wait(saga_id, timeout=30)

A process that only starts sagas uses it without :meth:`run`; coordinator processes call
:meth:`run` and share the reply topic's partitions as one consumer group. Everything a
coordinator needs to go on is in the database, so any member can finish any saga.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import structlog

from saga import metrics
from saga.coordinator.children import needed_children
from saga.coordinator.commands import (
    ConsumedSignal,
    PreparedWrite,
    build_command,
    log_rows,
    outbox_row,
    prepare_write,
)
from saga.coordinator.replies import ReplyProcessor, publish
from saga.coordinator.signals import SignalOutcome, SignalReceipt, consume_kept_signals
from saga.definition import SagaDefinition
from saga.errors import (
    BrokerUnavailable,
    InvalidPayload,
    SagaNotFound,
    SagaTimeout,
    SignalConflict,
    SignalRefused,
    UnknownDefinition,
    UsageError,
)
from saga.logging import saga_context
from saga.machine import SagaStatus, SignalEvent, SignalVerdict, advance, begin, judge_signal
from saga.messages import TRACEPARENT
from saga.outbox import RelaySettings
from saga.runtime import MessagingRuntime
from saga.settings import Settings
from saga.shapes import AwaitEvent, SubSaga
from saga.store.database import Database
from saga.store.outbox import PendingMessage
from saga.store.port import LockedSaga, SagaLog
from saga.store.postgres_log import PostgresSagaLog
from saga.store.records import InstanceRow, SagaSummary, StoredDefinition, StoredSignal
from saga.transport import Topics
from saga.transport.port import Transport

log = structlog.get_logger("saga.coordinator")

COORDINATOR_OUTBOX = "shared.saga_outbox"


class Coordinator:
    def __init__(
        self,
        *,
        settings: Settings,
        database: Database,
        bootstrap_servers: str | None = None,
        group_id: str | None = None,
        name: str = "coordinator",
        max_concurrency: int = 128,
        relay: RelaySettings | None = None,
        transport: Transport | None = None,
        saga_log: SagaLog | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        # The relay and the publisher still use ``database`` (the coordinator's outbox).
        self.saga_log: SagaLog = saga_log or PostgresSagaLog(database)
        self.topics = Topics.from_settings(settings)
        self.group_id = group_id or f"{self.topics.prefix}.coordinator"
        self._max_concurrency = max_concurrency
        self._ids: dict[tuple[str, int], uuid.UUID] = {}
        self._definitions: dict[tuple[str, int], SagaDefinition] = {}
        self._finished: dict[uuid.UUID, asyncio.Event] = {}
        self._runtime = MessagingRuntime(
            name=name,
            settings=settings,
            database=database,
            bootstrap_servers=bootstrap_servers,
            outbox_table=COORDINATOR_OUTBOX,
            topics=self.topics,
            own_topics=[self.topics.replies],
            relay=relay,
            transport=transport,
        )
        self.replies = ReplyProcessor(
            saga_log=self.saga_log,
            publisher=self._runtime.publisher,
            topics=self.topics,
            definitions=self.definition,
            on_finished=self._notify_finished,
        )

    async def __aenter__(self) -> Coordinator:
        await self._runtime.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def runtime(self) -> MessagingRuntime:
        return self._runtime

    async def register(self, definition: SagaDefinition) -> None:
        """Check ``definition`` and store it; the same content again is a no-op, other
        content under a stored version raises :class:`~saga.errors.DefinitionConflict`."""
        if not isinstance(definition, SagaDefinition):
            raise UsageError(
                f"Coordinator.register takes a SagaDefinition, got {type(definition).__name__}"
            )
        definition.validate(children=await self._registered_children(definition))
        stored = await self.saga_log.register_definition(definition)
        self._ids[definition.key] = stored.id
        self._definitions[definition.key] = definition
        log.info("definition_registered", definition=definition.name, version=definition.version)

    async def _registered_children(
        self, definition: SagaDefinition
    ) -> dict[tuple[str, int], SagaDefinition]:
        """The registered definitions ``definition``'s child sagas name, down through
        their own children; one not registered is left out, so validation names it."""
        found: dict[tuple[str, int], SagaDefinition] = {}
        todo = [definition]
        while todo:
            for position in todo.pop().positions:
                if not isinstance(position, SubSaga) or position.definition in found:
                    continue
                if position.definition == definition.key:
                    continue  # a saga starting itself: validation refuses it
                try:
                    child = await self.definition(*position.definition)
                except UnknownDefinition:
                    continue
                found[position.definition] = child
                todo.append(child)
        return found

    async def _definition_or_none(self, name: str, version: int) -> SagaDefinition | None:
        try:
            return await self.definition(name, version)
        except UnknownDefinition:
            return None

    async def definition(self, name: str, version: int) -> SagaDefinition:
        """The stored definition (instances keep the version they started with)."""
        key = (name, version)
        if key not in self._definitions:
            stored = await self.saga_log.load_definition(name, version)
            self._ids[key] = stored.id
            self._definitions[key] = stored.definition
        return self._definitions[key]

    async def start(
        self,
        definition: SagaDefinition | str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> uuid.UUID:
        """Start an instance and return its id; a key used before returns the first id."""
        _check_payload(payload)
        definition = await self._resolve(definition)
        await self._runtime.start()
        saga_id = uuid.uuid4()
        if not definition.straight_line:
            return await self._start_shaped(definition, saga_id, payload, idempotency_key)
        transition = begin(definition)
        assert transition.dispatch is not None
        command = build_command(
            saga_id=saga_id,
            definition=definition,
            dispatch=transition.dispatch,
            payload=payload,
            context={},
            reply_to=self.topics.replies,
        )
        topic = self.topics.commands(command.journey)
        await self._runtime.ensure_topics([topic])
        outbox = outbox_row(command, topic, 0.0)
        if len(outbox.payload) > self.settings.kafka_max_message_bytes:
            raise InvalidPayload(
                f"the first command of {definition.name} would be {len(outbox.payload)} bytes, "
                f"over KAFKA_MAX_MESSAGE_BYTES={self.settings.kafka_max_message_bytes}"
            )
        rows = log_rows(
            saga_id, definition, transition.log, command=command, attempt_started_at=None
        )
        started = await self.saga_log.insert_start(
            saga_id=saga_id,
            definition=StoredDefinition(self._ids[definition.key], definition),
            payload=payload,
            idempotency_key=idempotency_key,
            log=rows,
            outbox=outbox,
        )
        if started != saga_id:
            log.info("saga_start_repeated", saga_id=str(started), idempotency_key=idempotency_key)
            return started
        metrics.SAGAS_STARTED.labels(definition.name).inc()
        with saga_context(
            saga_id=saga_id,
            definition=command.definition,
            step=command.step_name,
            journey=command.journey,
            phase=command.phase.value,
            attempt=command.attempt,
            traceparent=command.trace.get(TRACEPARENT),
        ):
            log.info("saga_started", version=definition.version, action=command.action)
            await self._runtime.publisher.publish(
                [
                    PendingMessage(
                        outbox.message_id, topic, outbox.key, outbox.payload, dict(outbox.headers)
                    )
                ]
            )
        return saga_id

    async def _start_shaped(
        self,
        definition: SagaDefinition,
        saga_id: uuid.UUID,
        payload: Mapping[str, Any],
        idempotency_key: str | None,
    ) -> uuid.UUID:
        """Start a saga whose definition uses parallel groups or waits: its first
        position may send several commands (a group) or none (a wait)."""
        transition = begin(definition, payload=payload)
        fresh = InstanceRow(
            saga_id, definition.name, definition.version, transition.state, payload, 0, None
        )
        children = await needed_children(transition, payload, self._definition_or_none)
        prepared = prepare_write(fresh, definition, transition, self.topics, children=children)
        assert prepared.shape is not None
        await self._runtime.ensure_topics(sorted({p.topic for p, _ in prepared.sends}))
        for box in prepared.shape.outbox:
            if len(box.payload) > self.settings.kafka_max_message_bytes:
                raise InvalidPayload(
                    f"a first command of {definition.name} would be {len(box.payload)} bytes, "
                    f"over KAFKA_MAX_MESSAGE_BYTES={self.settings.kafka_max_message_bytes}"
                )
        started = await self.saga_log.insert_shaped_start(
            saga_id=saga_id,
            definition=StoredDefinition(self._ids[definition.key], definition),
            payload=payload,
            idempotency_key=idempotency_key,
            state=transition.state,
            log=prepared.log,
            shape=prepared.shape,
        )
        if started != saga_id:
            log.info("saga_start_repeated", saga_id=str(started), idempotency_key=idempotency_key)
            return started
        metrics.SAGAS_STARTED.labels(definition.name).inc()
        log.info(
            "saga_started",
            saga_id=str(saga_id),
            definition=definition.name,
            version=definition.version,
            status=transition.state.status.value,
            commands=len(prepared.commands),
        )
        await publish(self._runtime.publisher, prepared)
        return saga_id

    async def signal(
        self,
        saga_id: uuid.UUID,
        event: str,
        payload: Mapping[str, Any] | None = None,
        *,
        signal_id: str,
        actor: str | None = None,
        reason: str | None = None,
    ) -> SignalReceipt:
        """Deliver the signal ``event`` (with ``payload``) to the saga, once per
        ``signal_id``, in one transaction.

        Waiting for it, the saga moves on in that transaction (the payload lands in its
        context under the wait's name) and what it sends next goes out after the commit.
        Not waiting for it yet, the signal is kept and the saga's wait consumes it when
        reached. The same ``signal_id`` again returns how the first stands and changes
        nothing; with another saga, event or payload it raises
        :class:`~saga.errors.SignalConflict`. A finished saga, or one whose definition
        never waits for ``event``, refuses it with :class:`~saga.errors.SignalRefused`
        and nothing is stored. The step log records the signal with ``actor``.
        """
        signal = _checked_signal(saga_id, event, payload, signal_id, actor, reason)
        outcome: list[tuple[PreparedWrite, SagaDefinition]] = []
        # For the signal metric: the saga's definition, and whether it waits for the event.
        judged: list[tuple[str, bool]] = []

        async def unit(locked: LockedSaga | None) -> SignalReceipt:
            outcome.clear()
            judged.clear()
            if locked is None:
                raise SagaNotFound(f"no saga {saga_id}")
            instance = locked.instance
            judged.append((instance.definition_name, False))
            first = await locked.find_signal(signal.signal_id)
            if first is not None:
                judged[0] = (instance.definition_name, first.event == event)
                return _repeated(first, signal)
            definition = await self.definition(
                instance.definition_name, instance.definition_version
            )
            judged[0] = (instance.definition_name, _awaits(definition, event))
            verdict, why = judge_signal(definition, instance.state, event)
            if verdict is SignalVerdict.REFUSE:
                raise SignalRefused(f"signal {event!r} for saga {saga_id} refused: {why}")
            if verdict is SignalVerdict.KEEP:
                # Moving the version makes a transition decided without this signal
                # (one about to enter its wait) lose its write and decide again.
                await locked.touch()
                await _store(locked, signal, None)
                return SignalReceipt(saga_id, event, signal.signal_id, SignalOutcome.KEPT)
            applied = advance(
                definition,
                instance.state,
                SignalEvent(event, signal.payload, signal.signal_id),
                payload=instance.payload,
            )
            transition, kept = await consume_kept_signals(
                definition, saga_id, instance.payload, applied, locked.kept_signal
            )
            here = ConsumedSignal(instance.state.current_step, signal.signal_id, actor)
            prepared = prepare_write(
                instance,
                definition,
                transition,
                self.topics,
                signals=(here, *kept),
                children=await needed_children(
                    transition, instance.payload, self._definition_or_none
                ),
            )
            assert prepared.shape is not None
            written = await locked.write_transition(
                transition.state, log=prepared.log, shape=prepared.shape
            )
            await _store(locked, signal, written.version)
            outcome.append((prepared, definition))
            return SignalReceipt(
                saga_id,
                event,
                signal.signal_id,
                SignalOutcome.ACCEPTED,
                status=transition.state.status,
            )

        try:
            receipt = await self.saga_log.signal_unit(saga_id, unit)
        except SignalRefused:
            _count_signal(judged, event, metrics.SignalCount.REFUSED)
            raise
        except SignalConflict:
            _count_signal(judged, event, metrics.SignalCount.CONFLICT)
            raise
        if receipt.repeated:
            _count_signal(judged, event, metrics.SignalCount.REPEATED)
        elif receipt.outcome is SignalOutcome.ACCEPTED:
            _count_signal(judged, event, metrics.SignalCount.ACCEPTED)
        else:
            _count_signal(judged, event, metrics.SignalCount.KEPT)
        log.info(
            "saga_signal",
            saga_id=str(saga_id),
            signal_event=event,
            signal_id=signal.signal_id,
            outcome=receipt.outcome.value,
            repeated=receipt.repeated,
            actor=actor,
        )
        if outcome:
            prepared, definition = outcome[0]
            await self._send_after_commit(prepared)
            status = receipt.status
            if status is not None and status.finished:
                metrics.count_finished(definition.name, status)
                self._notify_finished(saga_id, status)
        return receipt

    async def _send_after_commit(self, prepared: PreparedWrite) -> None:
        """Publish what a committed signal's transition wrote; without a broker it waits
        in the outbox for a coordinator's relay, which is only slower."""
        if not prepared.sends:
            return
        try:
            await self._runtime.start()
            await self._runtime.ensure_topics(sorted({p.topic for p, _ in prepared.sends}))
            await publish(self._runtime.publisher, prepared)
        except BrokerUnavailable as exc:
            log.warning("signal_commands_left_to_relay", error=str(exc))

    async def status(self, saga_id: uuid.UUID) -> SagaSummary:
        found = await self.saga_log.summary(saga_id)
        if found is None:
            raise SagaNotFound(f"no saga {saga_id}")
        return found

    async def wait(
        self,
        saga_id: uuid.UUID,
        *,
        timeout: float = 30.0,  # noqa: ASYNC109 - polls the database up to this deadline
        until_parked: bool = True,
    ) -> SagaSummary:
        """Wait until the saga is completed or compensated (or parked, unless
        ``until_parked`` is False) and return how it ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = self._finished.setdefault(saga_id, asyncio.Event())
        pause = 0.005
        try:
            while True:
                summary = await self.status(saga_id)
                if summary.status.finished or (
                    until_parked and summary.status is SagaStatus.PARKED
                ):
                    return summary
                left = deadline - loop.time()
                if left <= 0:
                    raise SagaTimeout(
                        f"saga {saga_id} still {summary.status.value} after {timeout} s"
                    )
                # Woken early when this process finishes the saga; else poll, since any
                # coordinator of the group may be the one that finishes it.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(pause, left))
                event.clear()
                pause = min(pause * 2, 0.2)
        finally:
            self._finished.pop(saga_id, None)

    async def run(self) -> None:
        """Consume replies and drive sagas until :meth:`stop`."""
        await self._runtime.consume(
            topic=self.topics.replies,
            group_id=self.group_id,
            handle=self.replies.handle,
            max_concurrency=self._max_concurrency,
        )

    async def stop(self) -> None:
        await self._runtime.stop()

    def _notify_finished(self, saga_id: uuid.UUID, status: SagaStatus) -> None:
        event = self._finished.get(saga_id)
        if event is not None:
            event.set()

    async def _resolve(self, definition: SagaDefinition | str) -> SagaDefinition:
        if isinstance(definition, SagaDefinition):
            if definition.key not in self._ids:
                await self.register(definition)
            return definition
        if not isinstance(definition, str):
            raise UsageError(
                "Coordinator.start takes a SagaDefinition or a registered definition's name, "
                f"got {type(definition).__name__}"
            )
        stored = await self.saga_log.load_definition(definition)
        if stored.definition.key not in self._ids:
            self._ids[stored.definition.key] = stored.id
            self._definitions[stored.definition.key] = stored.definition
        return stored.definition


def _awaits(definition: SagaDefinition, event: str) -> bool:
    return any(isinstance(p, AwaitEvent) and p.event == event for p in definition.positions)


def _count_signal(
    judged: Sequence[tuple[str, bool]], event: str, outcome: metrics.SignalCount
) -> None:
    """Count a signal for a saga that exists (an unknown saga id counts nothing)."""
    for definition, awaited in judged:
        metrics.count_signal(definition, event, outcome, awaited=awaited)


def _checked_signal(
    saga_id: uuid.UUID,
    event: str,
    payload: Mapping[str, Any] | None,
    signal_id: str,
    actor: str | None,
    reason: str | None,
) -> StoredSignal:
    if not isinstance(saga_id, uuid.UUID):
        raise UsageError(f"Coordinator.signal takes the saga id as a UUID, got {saga_id!r}")
    if not isinstance(event, str) or not event.strip():
        raise UsageError(f"a signal's event must be a non-empty string, got {event!r}")
    if not isinstance(signal_id, str) or not signal_id.strip():
        raise UsageError(f"a signal_id must be a non-empty string, got {signal_id!r}")
    if payload is None:
        payload = {}
    if not isinstance(payload, Mapping):
        raise InvalidPayload(f"a signal's payload must be a mapping, got {type(payload).__name__}")
    try:
        # The stored form, so a repeat compares with what was stored.
        document = json.loads(json.dumps(dict(payload)))
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"a signal's payload must be JSON-serialisable: {exc}") from exc
    return StoredSignal(saga_id, event, signal_id, document, actor, reason, consumed=False)


def _repeated(first: StoredSignal, again: StoredSignal) -> SignalReceipt:
    if (first.saga_id, first.event, dict(first.payload)) != (
        again.saga_id,
        again.event,
        dict(again.payload),
    ):
        raise SignalConflict(
            f"signal id {again.signal_id!r} was sent before as {first.event!r} to saga "
            f"{first.saga_id} with another payload or saga; a signal id names one signal"
            if first.event == again.event
            else f"signal id {again.signal_id!r} was sent before as {first.event!r} to saga "
            f"{first.saga_id}, not as {again.event!r}; a signal id names one signal"
        )
    outcome = SignalOutcome.ACCEPTED if first.consumed else SignalOutcome.KEPT
    return SignalReceipt(first.saga_id, first.event, first.signal_id, outcome, repeated=True)


async def _store(locked: LockedSaga, signal: StoredSignal, version: int | None) -> None:
    if not await locked.insert_signal(signal, consumed_by_transition=version):
        # Another transaction stored this id in the meantime (for another saga: this
        # saga's lock serialises its own): rolling back leaves this one unsent.
        raise SignalConflict(
            f"signal id {signal.signal_id!r} was stored by another sender at the same time; "
            "a signal id names one signal"
        )


def _check_payload(payload: Mapping[str, Any]) -> None:
    if not isinstance(payload, Mapping):
        raise InvalidPayload(f"a saga payload must be a mapping, got {type(payload).__name__}")
    try:
        json.dumps(dict(payload))
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"a saga payload must be JSON-serialisable: {exc}") from exc
