"""Turning the state machine's decisions into command envelopes and log rows.

A straight-line saga's transition sends at most one command and is written by
:meth:`~saga.store.port.SagaLog.write_transition` exactly as before; a saga whose
definition uses parallel groups or waits gets a :class:`~saga.store.records.ShapeWrite`
(every command, its shape state and the clocks of its branches in flight) for
:meth:`~saga.store.port.SagaLog.write_shaped_transition`."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from saga.coordinator.children import (
    ChildKey,
    child_end_notice,
    child_saga_id,
    compensate_child_request,
    sub_saga_at,
)
from saga.definition import SagaDefinition, Step
from saga.errors import UsageError
from saga.machine import (
    BranchOutcome,
    Dispatch,
    InstanceState,
    LogEntry,
    LogStatus,
    Phase,
    SagaStatus,
    Transition,
    begin,
    branch_message_id,
    child_idempotency_key,
    command_message_id,
)
from saga.messages import TRACEPARENT, Command
from saga.shapes import AwaitEvent, Parallel
from saga.store.outbox import PendingMessage
from saga.store.records import (
    BranchTimer,
    ChildStart,
    InstanceRow,
    LogRow,
    OutboxRow,
    ParentLink,
    ShapeWrite,
)
from saga.tracing import attempt_span_id
from saga.transport import Topics

ENGINE_JOURNEY = "saga"
"""The journey named in the step log by rows that belong to no journey: a wait (and the
signal that ended it), or a whole group given up when the saga expired."""

_SHAPE_FIELDS = ("branches", "waiting_for", "child", "child_attempts")


def traceparent(saga_id: uuid.UUID, message_id: uuid.UUID, attempt: int) -> str:
    """W3C trace context: the saga is the trace, each attempt of a command a span of it
    (its id derived, so the process that learns the attempt's outcome can emit it)."""
    return f"00-{saga_id.hex}-{attempt_span_id(message_id, attempt):016x}-01"


def build_command(
    *,
    saga_id: uuid.UUID,
    definition: SagaDefinition,
    dispatch: Dispatch,
    payload: Mapping[str, Any],
    context: Mapping[str, Any],
    reply_to: str,
) -> Command:
    step = command_step(definition, dispatch.step_index, dispatch.branch)
    execute = dispatch.phase is Phase.EXECUTE
    action = step.action if execute else step.compensation
    assert action is not None, "the machine compensates only compensatable steps"
    command_id = message_id(saga_id, dispatch.step_index, dispatch.branch, dispatch.phase)
    return Command(
        message_id=command_id,
        saga_id=saga_id,
        definition=definition.name,
        definition_version=definition.version,
        step_index=dispatch.step_index,
        step_name=step.name,
        journey=step.journey,
        phase=dispatch.phase,
        attempt=dispatch.attempt,
        trace={TRACEPARENT: traceparent(saga_id, command_id, dispatch.attempt)},
        action=action,
        isolation=step.isolation,
        timeout_ms=step.timeout_ms,
        payload=dict(payload),
        context=dict(context),
        reply_to=reply_to,
        undoes=None
        if execute
        else message_id(saga_id, dispatch.step_index, dispatch.branch, Phase.EXECUTE),
        branch=dispatch.branch,
    )


def command_step(definition: SagaDefinition, index: int, branch: int | None) -> Step:
    """The step whose command a dispatch (or a reply) at ``index`` is about: the plain
    step there, or the branch of the group there."""
    position = definition.positions[index]
    if isinstance(position, Parallel) and branch is not None:
        return position.branches[branch]
    assert isinstance(position, Step), f"position {index} ({position.name!r}) sends no command"
    return position


def message_id(saga_id: uuid.UUID, index: int, branch: int | None, phase: Phase) -> uuid.UUID:
    if branch is None:
        return command_message_id(saga_id, index, phase)
    return branch_message_id(saga_id, index, branch, phase)


def logged_names(definition: SagaDefinition, entry: LogEntry) -> tuple[str, str]:
    """The step name and journey a log row about ``entry`` shows."""
    position = definition.positions[entry.step_index]
    if isinstance(position, Step):
        return position.name, position.journey
    if isinstance(position, Parallel) and entry.branch is not None:
        branch = position.branches[entry.branch]
        return branch.name, branch.journey
    return position.name, ENGINE_JOURNEY


DEADLOCK = "40P01"
"""The SQLSTATE of a deadlock; every other retried conflict is a serialization failure."""

_OUTBOX_NAMESPACE = uuid.UUID("9d3b6c1a-7e52-4f08-b1c4-6a2e8f0d3b57")


def outbox_row(command: Command, topic: str, delay: float) -> OutboxRow:
    """Every attempt of a command carries the command's id (so participants dedup it) but
    is its own outbox row, keyed by the command id and the attempt."""
    return OutboxRow(
        message_id=uuid.uuid5(_OUTBOX_NAMESPACE, f"{command.message_id}/{command.attempt}"),
        topic=topic,
        key=command.key,
        payload=command.to_bytes(),
        headers={TRACEPARENT: command.trace[TRACEPARENT]},
        delay=delay,
    )


def log_rows(
    saga_id: uuid.UUID,
    definition: SagaDefinition,
    entries: Sequence[LogEntry],
    *,
    command: Command | None,
    attempt_started_at: datetime | None,
    commands: Sequence[Command] = (),
    branch_started_at: Mapping[int, datetime] | None = None,
    signal_actors: Mapping[int, str | None] | None = None,
) -> list[LogRow]:
    """The rows of ``entries``. ``commands`` are a shaped transition's (``command`` a
    straight-line one's); ``branch_started_at`` the start of each branch's attempt in
    flight; ``signal_actors`` who sent the signal received at each wait."""
    sent = {(c.step_index, c.phase, c.branch): c for c in commands}
    if command is not None:
        sent[(command.step_index, command.phase, command.branch)] = command
    rows = []
    for entry in entries:
        name, journey = logged_names(definition, entry)
        position = definition.positions[entry.step_index]
        dispatched = entry.status is LogStatus.DISPATCHED
        by = sent.get((entry.step_index, entry.phase, entry.branch)) if dispatched else None
        started_at = attempt_started_at
        if entry.branch is not None and branch_started_at is not None:
            started_at = branch_started_at.get(entry.branch, attempt_started_at)
        actor = None
        if isinstance(position, AwaitEvent) and entry.status is LogStatus.SUCCEEDED:
            actor = (signal_actors or {}).get(entry.step_index)
        rows.append(
            LogRow(
                entry=entry,
                step_name=name,
                journey=journey,
                message_id=(
                    message_id(saga_id, entry.step_index, entry.branch, entry.phase)
                    if not isinstance(position, AwaitEvent)
                    and (isinstance(position, Step) or entry.branch is not None)
                    else None
                ),
                request=({"action": by.action, "context": by.context} if by is not None else None),
                started_at=None if dispatched else started_at,
                actor=actor,
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class ConsumedSignal:
    """A signal a transition applied: at the wait ``step_index``, sent by ``actor``."""

    step_index: int
    signal_id: str
    actor: str | None


@dataclass(frozen=True, slots=True)
class PreparedWrite:
    """Everything one transition writes, ready for
    :meth:`saga.store.port.SagaLog.write_transition`."""

    command: Command | None
    outbox: OutboxRow | None
    log: list[LogRow]
    step_timeout: float
    shape: ShapeWrite | None = None
    """Set for a saga whose definition uses parallel groups or waits (then ``command``
    and ``outbox`` are None and the commands are in ``commands`` and ``shape.outbox``)."""
    commands: tuple[Command, ...] = ()

    @property
    def delay(self) -> float:
        """Seconds the command waits before it is sent (a retry's backoff)."""
        return self.outbox.delay if self.outbox is not None else 0.0

    @property
    def pending(self) -> PendingMessage | None:
        """The command as the publisher sends it after the commit."""
        if self.outbox is None:
            return None
        return _pending(self.outbox)

    @property
    def sends(self) -> list[tuple[PendingMessage, float]]:
        """Every command to publish after the commit, with its delay."""
        if self.shape is not None:
            sends = []
            shape: ShapeWrite | None = self.shape
            while shape is not None:  # with the first commands of a child it starts
                sends += [(_pending(box), box.delay) for box in shape.outbox]
                shape = None if shape.child is None else shape.child.shape
            return sends
        return [] if self.outbox is None else [(_pending(self.outbox), self.outbox.delay)]


def _pending(box: OutboxRow) -> PendingMessage:
    return PendingMessage(box.message_id, box.topic, box.key, box.payload, dict(box.headers))


def prepare_write(
    instance: InstanceRow,
    definition: SagaDefinition,
    transition: Transition,
    topics: Topics,
    *,
    transaction_retries: Mapping[str, int] | None = None,
    signals: Sequence[ConsumedSignal] = (),
    children: Mapping[ChildKey, SagaDefinition] | None = None,
) -> PreparedWrite:
    """The command, outbox row and log rows of ``transition`` (the coordinator's replies
    and the worker's timeouts write them the same way). ``transaction_retries`` are the
    reply's, recorded on the row of the outcome it reports; ``signals`` are those the
    transition applied (each marked consumed, its sender the actor of its log row);
    ``children`` the definitions of the child sagas it starts
    (:func:`saga.coordinator.children.needed_children`)."""
    if not definition.straight_line:
        return _prepare_shaped(
            instance,
            definition,
            transition,
            topics,
            transaction_retries=transaction_retries,
            signals=signals,
            children=children or {},
        )
    command = None
    outbox = None
    if transition.dispatch is not None:
        command = build_command(
            saga_id=instance.id,
            definition=definition,
            dispatch=transition.dispatch,
            payload=instance.payload,
            context=transition.state.context,
            reply_to=topics.replies,
        )
        outbox = outbox_row(command, topics.commands(command.journey), transition.dispatch.delay)
    else:
        # A straight-line child's end sends no command: its one outbox row tells the parent.
        state = transition.state
        outbox = child_end_notice(
            instance, state.status, state.context, state.error, topics.replies
        )
    rows = log_rows(
        instance.id,
        definition,
        transition.log,
        command=command,
        attempt_started_at=instance.step_started_at,
    )
    _note_retries(rows, transaction_retries)
    step = definition.steps[transition.state.current_step]
    attempt = transition.dispatch.attempt if transition.dispatch is not None else 1
    return PreparedWrite(command, outbox, rows, step.reply_wait(attempt))


def _note_retries(rows: list[LogRow], transaction_retries: Mapping[str, int] | None) -> None:
    if transaction_retries and rows:
        # The machine logs the event's outcome first, before any dispatch it causes.
        deadlocks = transaction_retries.get(DEADLOCK, 0)
        rows[0] = replace(
            rows[0],
            deadlock_retries=deadlocks,
            serialization_retries=sum(transaction_retries.values()) - deadlocks,
        )


def _prepare_shaped(
    instance: InstanceRow,
    definition: SagaDefinition,
    transition: Transition,
    topics: Topics,
    *,
    transaction_retries: Mapping[str, int] | None,
    signals: Sequence[ConsumedSignal],
    children: Mapping[ChildKey, SagaDefinition],
) -> PreparedWrite:
    state = transition.state
    commands = tuple(
        build_command(
            saga_id=instance.id,
            definition=definition,
            dispatch=dispatch,
            payload=instance.payload,
            context=state.context,
            reply_to=topics.replies,
        )
        for dispatch in transition.dispatches
    )
    outbox = tuple(
        outbox_row(command, topics.commands(command.journey), dispatch.delay)
        for command, dispatch in zip(commands, transition.dispatches, strict=True)
    )
    outbox += _child_messages(instance, transition, topics)
    timers = tuple(
        BranchTimer(
            d.branch,
            d.delay,
            command_step(definition, d.step_index, d.branch).reply_wait(d.attempt),
        )
        for d in transition.dispatches
        if d.branch is not None
    )
    plain = [d for d in transition.dispatches if d.branch is None]
    deadline_in = None
    if state.status is SagaStatus.WAITING:
        wait = definition.positions[state.current_step]
        assert isinstance(wait, AwaitEvent)
        deadline_in = wait.timeout
    elif plain:
        first = plain[0]
        deadline_in = first.delay + command_step(definition, first.step_index, None).reply_wait(
            first.attempt
        )
    elif state.child is not None and state.status.in_flight:
        # Not a timeout: when it comes due the worker looks at the child (child_check).
        deadline_in = sub_saga_at(definition, state.current_step).check_every
    rows = log_rows(
        instance.id,
        definition,
        transition.log,
        command=None,
        attempt_started_at=instance.step_started_at,
        commands=commands,
        branch_started_at={b: clock.started_at for b, clock in instance.clock.items()},
        signal_actors={signal.step_index: signal.actor for signal in signals},
    )
    _note_retries(rows, transaction_retries)
    document = shape_document(state)
    if state.child is not None and document is not None:
        document["child_id"] = str(
            child_saga_id(instance.id, state.current_step, state.child.attempt)
        )
    shape = ShapeWrite(
        document=document,
        outbox=outbox,
        in_flight=branches_in_flight(state),
        timers=timers,
        deadline_in=deadline_in,
        consumed_signals=tuple(signal.signal_id for signal in signals),
        child=_child_start(instance, transition, topics, children),
    )
    return PreparedWrite(None, None, rows, 0.0, shape, commands)


def _child_messages(
    instance: InstanceRow, transition: Transition, topics: Topics
) -> tuple[OutboxRow, ...]:
    """A child's end told to its parent; a parent's request that its child compensate."""
    state = transition.state
    messages = []
    notice = child_end_notice(instance, state.status, state.context, state.error, topics.replies)
    if notice is not None:
        messages.append(notice)
    undo = transition.compensate_child
    if undo is not None:
        messages.append(
            compensate_child_request(
                instance, undo.step_index, undo.attempt, state.error, topics.replies
            )
        )
    return tuple(messages)


def _child_start(
    instance: InstanceRow,
    transition: Transition,
    topics: Topics,
    children: Mapping[ChildKey, SagaDefinition],
) -> ChildStart | None:
    """The child saga the transition starts: its instance, first rows and commands."""
    start = transition.start_child
    if start is None:
        return None
    definition = children.get(start.definition)
    if definition is None:
        raise UsageError(
            f"the transition starts child saga {start.definition[0]} v{start.definition[1]}: "
            "pass its definition to prepare_write(children=...)"
        )
    parent = ParentLink(instance.id, start.step_index, start.attempt)
    child_id = child_saga_id(instance.id, start.step_index, start.attempt)
    first = begin(definition, payload=start.payload)
    fresh = InstanceRow(
        child_id,
        definition.name,
        definition.version,
        first.state,
        start.payload,
        0,
        None,
        parent=parent,
    )
    prepared = _prepare_shaped(
        fresh,
        definition,
        first,
        topics,
        transaction_retries=None,
        signals=(),
        children=children,
    )
    assert prepared.shape is not None
    return ChildStart(
        id=child_id,
        definition_name=definition.name,
        definition_version=definition.version,
        saga_timeout=definition.timeout,
        payload=dict(start.payload),
        idempotency_key=child_idempotency_key(instance.id, start.step_index, start.attempt),
        state=first.state,
        log=tuple(prepared.log),
        shape=prepared.shape,
        parent=parent,
    )


def shape_document(state: InstanceState) -> dict[str, Any] | None:
    """The state's fields beyond a straight line, as stored; None when it has none."""
    document = state.to_document()
    shaped = {name: document[name] for name in _SHAPE_FIELDS if name in document}
    return shaped or None


def branches_in_flight(state: InstanceState) -> tuple[int, ...]:
    """The branches of the group the saga is at whose command (or compensation) is out."""
    if state.status is SagaStatus.RUNNING:
        return tuple(b for b, s in enumerate(state.branches) if s.outcome is BranchOutcome.PENDING)
    if state.status is SagaStatus.COMPENSATING:
        return tuple(
            b for b, s in enumerate(state.branches) if s.compensation is BranchOutcome.PENDING
        )
    return ()
