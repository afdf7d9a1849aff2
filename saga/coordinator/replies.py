"""Applying one reply: load the instance, let the machine decide, write it in one
statement, publish the next command after the commit."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime

import structlog

from saga import alerts, metrics, tracing
from saga.coordinator.children import child_saga_id, needed_children
from saga.coordinator.commands import PreparedWrite, logged_names, prepare_write
from saga.coordinator.signals import consume_kept_signals
from saga.definition import SagaDefinition, Step
from saga.errors import MessageRejected
from saga.logging import saga_context
from saga.machine import (
    ChildEnded,
    InstanceState,
    LogEntry,
    LogStatus,
    Phase,
    SagaStatus,
    StepEvent,
    Transition,
    advance,
    compensate_completed,
    expire,
)
from saga.masking import summarize
from saga.messages import TRACEPARENT, ChildEnd, CompensateChildRequest, Reply, decode
from saga.outbox import OutboxPublisher
from saga.shapes import Parallel
from saga.store.port import SagaLog
from saga.store.records import InstanceRow, LogRow
from saga.transport import Incoming, Topics

log = structlog.get_logger("saga.coordinator")

DefinitionLookup = Callable[[str, int], Awaitable[SagaDefinition]]
FinishedCallback = Callable[[uuid.UUID, SagaStatus], None]

# Optimistic writes lose only when another process moved the same saga in between;
# each loss re-reads the instance, which then shows the reply as stale.
_MAX_RACES = 20


class InstanceCache:
    """The instance as this process last wrote it, per in-flight saga: the next reply of
    that saga then needs no read. Safe because every write is conditional on the version;
    a copy gone stale (another coordinator or a worker moved the saga) loses that write
    and is re-read, and a reply that a cached copy would ignore is judged again on a
    fresh read before it is ignored."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._rows: OrderedDict[uuid.UUID, InstanceRow] = OrderedDict()

    def pop(self, saga_id: uuid.UUID) -> InstanceRow | None:
        return self._rows.pop(saga_id, None)

    def put(self, row: InstanceRow) -> None:
        self._rows[row.id] = row
        if len(self._rows) > self._capacity:
            self._rows.popitem(last=False)


class ReplyProcessor:
    """Applies replies to the sagas in ``saga_log``. It takes the port, never a database:
    the :class:`~saga.coordinator.service.Coordinator` picks the adapter, so the reply
    path imports none (an import-linter contract holds it to that)."""

    def __init__(
        self,
        *,
        saga_log: SagaLog,
        publisher: OutboxPublisher,
        topics: Topics,
        definitions: DefinitionLookup,
        on_finished: FinishedCallback,
        cache_size: int = 50_000,
    ) -> None:
        self._saga_log = saga_log
        self._publisher = publisher
        self._topics = topics
        self._definitions = definitions
        self._on_finished = on_finished
        self._cache = InstanceCache(cache_size)
        self.applied = 0
        self.ignored = 0
        self.races = 0

    async def handle(self, incoming: Incoming) -> None:
        reply = decode(incoming.value)
        if isinstance(reply, ChildEnd | CompensateChildRequest):
            await self._apply_child_message(reply)
            return
        if not isinstance(reply, Reply):
            raise MessageRejected(f"a {reply.kind} on the reply topic {incoming.topic}")
        with saga_context(
            saga_id=reply.saga_id,
            definition=reply.definition,
            step=reply.step_name,
            journey=reply.journey,
            phase=reply.phase.value,
            attempt=reply.attempt,
            traceparent=reply.trace.get(TRACEPARENT),
        ):
            # The result may hold journey data: the masking processor hides it.
            log.debug(
                "reply_received",
                outcome=reply.outcome.value,
                reason=summarize(reply.reason),
                result=reply.result,
            )
            with tracing.handling(f"reply {reply.step_name}", reply, outcome=reply.outcome.value):
                await self._apply(reply)

    async def _apply(self, reply: Reply) -> None:
        # One saga's replies are handled one at a time (same key), so taking its cached
        # copy out cannot race with another handler of this process.
        cached = self._cache.pop(reply.saga_id)
        for _ in range(_MAX_RACES):
            instance = cached or await self._load(reply)
            if cached is not None and not _same_definition(cached, reply):
                cached = None
                continue  # the read names what is wrong
            definition = await self._definitions(
                instance.definition_name, instance.definition_version
            )
            if await self._try_apply(definition, instance, reply, trusted=cached is None):
                return
            # Another process moved the saga, or the cached copy was too old to judge
            # the reply by: decide again on what the database holds.
            cached = None
            self.races += 1
        raise RuntimeError(f"saga {reply.saga_id} kept changing under {_MAX_RACES} attempts")

    async def _load(self, reply: Reply) -> InstanceRow:
        instance = await self._saga_log.load_instance(reply.saga_id)
        if instance is None:
            raise MessageRejected(f"unknown saga {reply.saga_id}")
        if not _same_definition(instance, reply):
            raise MessageRejected(
                f"reply names {reply.definition} v{reply.definition_version} but saga "
                f"{reply.saga_id} runs {instance.definition_name} "
                f"v{instance.definition_version}"
            )
        return instance

    async def _try_apply(
        self, definition: SagaDefinition, instance: InstanceRow, reply: Reply, *, trusted: bool
    ) -> bool:
        event = StepEvent(
            reply.step_index,
            reply.phase,
            reply.attempt,
            reply.outcome,
            reply.result,
            reply.reason,
            branch=reply.branch,
        )
        transition = advance(definition, instance.state, event, payload=instance.payload)
        if transition.ignored is not None:
            if not trusted:
                return False
            await self._record_ignored(definition, instance, reply, transition.ignored)
            if instance.state.status.in_flight:
                # Just read and left as it was: the saga's next reply needs no read.
                self._cache.put(instance)
            return True

        written, transition, prepared = await self._write(
            definition, instance, transition, reply.transaction_retries
        )
        if written is None:
            return False
        _observe_step(definition, instance, reply)
        await self._after_write(
            definition,
            instance,
            written,
            transition,
            prepared,
            action=_action_of(definition, reply),
            outcome=reply.outcome.value,
        )
        _trace_attempt(instance, reply)
        return True

    async def _apply_child_message(self, message: ChildEnd | CompensateChildRequest) -> None:
        """A child's end applied to its parent, or a parent's request applied to its
        child: decided on a fresh read and written like a reply's transition."""
        self._cache.pop(message.saga_id)
        for _ in range(_MAX_RACES):
            instance = await self._saga_log.load_instance(message.saga_id)
            if instance is None:
                raise MessageRejected(f"{message.kind} for unknown saga {message.saga_id}")
            definition = await self._definitions(
                instance.definition_name, instance.definition_version
            )
            with _child_message_context(definition, instance, message):
                transition = _decide_child_message(definition, instance, message)
                if transition.ignored is not None:
                    self.ignored += 1
                    log.info("child_message_ignored", kind=message.kind, reason=transition.ignored)
                    return
                written, transition, prepared = await self._write(
                    definition, instance, transition, None
                )
                if written is None:
                    self.races += 1
                    continue
                await self._after_write(
                    definition,
                    instance,
                    written,
                    transition,
                    prepared,
                    action=message.kind,
                    outcome=message.status if isinstance(message, ChildEnd) else "requested",
                )
                return
        raise RuntimeError(f"saga {message.saga_id} kept changing under {_MAX_RACES} attempts")

    async def _after_write(
        self,
        definition: SagaDefinition,
        instance: InstanceRow,
        written: InstanceRow,
        transition: Transition,
        prepared: PreparedWrite,
        *,
        action: str | None,
        outcome: str,
    ) -> None:
        command = prepared.command or next(iter(prepared.commands), None)
        self.applied += 1
        state = transition.state
        if state.status.in_flight:
            self._cache.put(written)
        log.info(
            "saga_transition",
            action=action,
            outcome=outcome,
            status=state.status.value,
            next_step=command.step_name if command else None,
            next_action=command.action if command else None,
            next_attempt=command.attempt if command else None,
            # A saga's error quotes the participant's reason, which may quote its input.
            error=summarize(state.error),
        )
        await publish(self._publisher, prepared)
        if not state.status.in_flight and state.status is not SagaStatus.WAITING:
            if state.status is SagaStatus.PARKED:
                alerts.saga_parked(instance.id, definition.name, state.error)
            else:
                metrics.count_finished(definition.name, state.status)
            self._on_finished(instance.id, state.status)
            if tracing.tracing_on():
                await trace_saga_end(self._saga_log, definition, instance.id, state)

    async def _write(
        self,
        definition: SagaDefinition,
        instance: InstanceRow,
        transition: Transition,
        transaction_retries: Mapping[str, int] | None,
    ) -> tuple[InstanceRow | None, Transition, PreparedWrite]:
        if definition.straight_line:
            prepared = prepare_write(
                instance,
                definition,
                transition,
                self._topics,
                transaction_retries=transaction_retries,
            )
            written = await self._saga_log.write_transition(
                instance,
                transition.state,
                log=prepared.log,
                outbox=prepared.outbox,
                step_timeout=prepared.step_timeout,
            )
            return written, transition, prepared
        transition, signals = await consume_kept_signals(
            definition, instance.id, instance.payload, transition, self._saga_log.kept_signal
        )
        prepared = prepare_write(
            instance,
            definition,
            transition,
            self._topics,
            transaction_retries=transaction_retries,
            signals=signals,
            children=await needed_children(transition, instance.payload, self._definitions),
        )
        assert prepared.shape is not None
        shaped = await self._saga_log.write_shaped_transition(
            instance, transition.state, log=prepared.log, shape=prepared.shape
        )
        return shaped, transition, prepared

    async def _record_ignored(
        self, definition: SagaDefinition, instance: InstanceRow, reply: Reply, why: str
    ) -> None:
        self.ignored += 1
        log.info("reply_ignored", reason=why, outcome=reply.outcome.value)
        step_index = min(reply.step_index, len(definition.positions) - 1)
        position = definition.positions[step_index]
        branch = reply.branch
        if not isinstance(position, Parallel) or branch not in range(len(position.branches)):
            branch = None
        entry = LogEntry(
            step_index,
            reply.phase,
            LogStatus.IGNORED,
            reply.attempt,
            response={"outcome": reply.outcome.value, **reply.result},
            error=f"ignored: {why}",
            branch=branch,
        )
        step_name, journey = logged_names(definition, entry)
        row = LogRow(
            entry=entry, step_name=step_name, journey=journey, message_id=reply.in_reply_to
        )
        await self._saga_log.record_ignored(instance.id, row)


def _decide_child_message(
    definition: SagaDefinition, instance: InstanceRow, message: ChildEnd | CompensateChildRequest
) -> Transition:
    if isinstance(message, ChildEnd):
        if message.child_id != child_saga_id(instance.id, message.step_index, message.attempt):
            raise MessageRejected(
                f"saga {message.child_id} is not the child that saga {instance.id} started at "
                f"step {message.step_index}, attempt {message.attempt}"
            )
        event = ChildEnded(
            message.step_index, message.attempt, message.status, message.context, message.error
        )
        return advance(definition, instance.state, event, payload=instance.payload)
    link = instance.parent
    if link is None or link.parent_id != message.parent_id:
        raise MessageRejected(
            f"saga {instance.id} is not the child of saga {message.parent_id}: no compensation"
        )
    why = f"parent saga {message.parent_id} undoes step {message.step_index}"
    if message.reason:
        why = f"{why}: {message.reason}"
    status = instance.state.status
    if status is SagaStatus.COMPLETED:
        return compensate_completed(definition, instance.state, why)
    if status in (SagaStatus.RUNNING, SagaStatus.WAITING):
        # The parent gave up on it (its deadline passed): undo what it may have done.
        return expire(definition, instance.state, why)
    return Transition(
        instance.state, ignored=f"the child saga is {status.value}: nothing to ask of it now"
    )


def _child_message_context(
    definition: SagaDefinition,
    instance: InstanceRow,
    message: ChildEnd | CompensateChildRequest,
) -> AbstractContextManager[None]:
    """The saga context of a child message's lines, as a reply's: the parent's position
    that started the child (a child's end), or the child's own current position (its
    parent's request to undo it). The engine itself is the journey: no participant runs
    a child's start or end."""
    state = instance.state
    if isinstance(message, ChildEnd):
        index, attempt = message.step_index, message.attempt
    else:
        index, attempt = state.current_step, state.step_attempt
    return saga_context(
        saga_id=instance.id,
        definition=definition.name,
        step=definition.positions[index].name,
        journey="saga",
        phase=state.phase.value,
        attempt=attempt,
        traceparent=message.trace.get(TRACEPARENT),
    )


async def trace_saga_end(
    saga_log: SagaLog, definition: SagaDefinition, saga_id: uuid.UUID, state: InstanceState
) -> None:
    """Emit the span of a saga that just ended, from its start as the log has it."""
    summary = await saga_log.summary(saga_id)
    if summary is None:
        return
    attributes: dict[str, str | int] = {
        "saga.id": str(saga_id),
        "saga.definition": definition.name,
        "saga.definition_version": definition.version,
        "saga.status": state.status.value,
    }
    if state.error:
        attributes["saga.error"] = summarize(state.error) or ""
    tracing.saga_ended(saga_id=saga_id, started_at=summary.started_at, attributes=attributes)


def _trace_attempt(instance: InstanceRow, reply: Reply) -> None:
    """Emit the span of the attempt the applied reply ended, from its dispatch."""
    if not tracing.tracing_on():
        return
    started_at = _attempt_started_at(instance, reply)
    if started_at is None:
        return
    attributes = tracing.message_attributes(reply)
    attributes["saga.message_id"] = str(reply.in_reply_to)
    attributes["saga.outcome"] = reply.outcome.value
    tracing.attempt_ended(
        saga_id=reply.saga_id,
        message_id=reply.in_reply_to,
        attempt=reply.attempt,
        step=reply.step_name,
        started_at=started_at,
        attributes=attributes,
    )


def _attempt_started_at(instance: InstanceRow, reply: Reply) -> datetime | None:
    """When the attempt a reply answers was dispatched (the database's clock, written
    with the command), as the instance read before the reply was applied has it."""
    if instance.step_started_at is None:
        return None
    if reply.branch is not None and reply.branch in instance.clock:
        return instance.clock[reply.branch].started_at
    return instance.step_started_at


def _observe_step(definition: SagaDefinition, instance: InstanceRow, reply: Reply) -> None:
    """The attempt's time from dispatch (the database's clock, written with the command)
    to now, when its reply has been applied. Names come from the stored definition, not
    the message, so the labels stay bounded."""
    started_at = _attempt_started_at(instance, reply)
    if started_at is None:
        return
    step = _step_of(definition, reply)
    if step is None:
        return
    seconds = (datetime.now(UTC) - started_at).total_seconds()
    metrics.STEP_SECONDS.labels(
        definition.name,
        step.name,
        reply.phase.value,
        reply.outcome.value,
    ).observe(max(seconds, 0.0))


def _same_definition(instance: InstanceRow, reply: Reply) -> bool:
    return (instance.definition_name, instance.definition_version) == (
        reply.definition,
        reply.definition_version,
    )


def _step_of(definition: SagaDefinition, reply: Reply) -> Step | None:
    """The step (or branch) the applied reply answers."""
    position = definition.positions[reply.step_index]
    if isinstance(position, Parallel) and reply.branch is not None:
        return position.branches[reply.branch]
    return position if isinstance(position, Step) else None


def _action_of(definition: SagaDefinition, reply: Reply) -> str | None:
    """The action the reply answers: the step's, or its compensation."""
    step = _step_of(definition, reply)
    if step is None:
        return None
    return step.action if reply.phase is Phase.EXECUTE else step.compensation


async def publish(publisher: OutboxPublisher, prepared: PreparedWrite) -> None:
    """Send what a committed transition wrote to the outbox: now, or after its delay."""
    now = []
    for pending, delay in prepared.sends:
        if delay > 0:
            publisher.publish_later(pending, delay)
        else:
            now.append(pending)
    if now:
        await publisher.publish(now)
