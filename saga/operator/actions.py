"""Operators' actions on sagas: decide under the saga's row lock, write the way the
coordinator writes (version-checked, log rows and command in one statement), publish the
command after the commit.

At a child saga's position the decision also reads the child's row
(:mod:`saga.operator.child_decisions`). A child started again is inserted by the parent's
write; a child's end, or a request that a child compensate, is an outbox row of the write.

Every row an action writes names the operator in ``saga_step_log.actor`` and says why in
``error``. An action also withdraws the saga's commands not yet published (a retry waiting
out its backoff), so the relay never sends one the action overtook. A command already
handed to the broker cannot be recalled: a participant may still answer it, and the
coordinator then ignores the answer as stale.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from saga import metrics
from saga.coordinator.children import (
    ChildKey,
    child_end_notice,
    child_saga_id,
    needed_children,
)
from saga.coordinator.commands import ConsumedSignal, prepare_write
from saga.coordinator.signals import consume_kept_signals
from saga.definition import SagaDefinition
from saga.errors import DefinitionError, SagaNotFound, UnknownDefinition
from saga.machine import InstanceState, Phase, SagaStatus, Transition, command_message_id
from saga.operator import child_decisions, decisions, shape_decisions
from saga.operator.child_decisions import ChildView
from saga.operator.decisions import Action, ActionRefused, Operator
from saga.outbox import OutboxPublisher
from saga.store import definitions as stored_definitions
from saga.store import saga_log
from saga.store.database import Database
from saga.store.driver import DriverConnection
from saga.store.outbox import PendingMessage
from saga.store.records import OutboxRow
from saga.store.saga_log import InstanceRow, LogRow, StepPosition
from saga.transport import Topics

log = structlog.get_logger("saga.operator")


@dataclass(frozen=True, slots=True)
class ActionRequest:
    action: Action
    by: Operator
    step: str | None = None
    """The step ``skip`` acts on: its name or index; it must be the current one."""
    result: Mapping[str, Any] = field(default_factory=dict)
    """What ``skip`` records as the step's result (merged into the saga's context)."""


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    """What an action did to one saga (or, in a dry run or when refused, would not)."""

    saga_id: uuid.UUID
    definition: str
    action: Action
    before: str
    after: str | None = None
    command: str | None = None
    """The command the saga now waits on, e.g. ``void #4``."""
    refused: str | None = None
    applied: bool = False
    withdrawn: int = 0
    """Unpublished commands the action withdrew."""
    status: SagaStatus | None = None
    """The saga's status once the action applied."""
    notes: tuple[str, ...] = ()
    """What becomes of the saga's child or parent (started, asked to compensate, left as
    it is, told of the end)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "saga_id": str(self.saga_id),
            "definition": self.definition,
            "action": self.action.value,
            "applied": self.applied,
            "refused": self.refused,
            "before": self.before,
            "after": self.after,
            "command": self.command,
            "withdrawn": self.withdrawn,
            "status": self.status.value if self.status is not None else None,
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class _Decided:
    instance: InstanceRow
    definition: SagaDefinition | None
    position: StepPosition | None
    transition: Transition
    signals: tuple[ConsumedSignal, ...] = ()
    """Kept signals the transition applied (marked consumed by its write)."""
    children: Mapping[ChildKey, SagaDefinition] = field(default_factory=dict)
    """The definitions of the child saga the transition starts."""
    notes: tuple[str, ...] = ()


class SagaActions:
    """Applies operators' actions. ``publisher`` sends the resulting command right after
    the commit; without one (or if the broker refuses) the coordinator's relay sends it
    from the outbox within its grace period."""

    def __init__(
        self, database: Database, topics: Topics, publisher: OutboxPublisher | None
    ) -> None:
        self.database = database
        self._topics = topics
        self._publisher = publisher

    async def apply(
        self, saga_id: uuid.UUID, request: ActionRequest, *, dry_run: bool = False
    ) -> ActionOutcome:
        """Apply (or with ``dry_run`` only judge) the action. Raises SagaNotFound for an
        unknown id; an action that does not apply comes back with ``refused`` set."""

        async def unit(conn: DriverConnection) -> tuple[ActionOutcome, list[PendingMessage]]:
            if dry_run:
                instance = await saga_log.load_instance(conn, saga_id)
            else:
                instance = await saga_log.lock_instance(conn, saga_id)
            if instance is None:
                raise SagaNotFound(f"no saga with id {saga_id}")
            position = await saga_log.step_position(conn, instance)
            phase = decisions.current_phase(instance.state, position.phase if position else None)
            definition = await _stored_definition(conn, instance)
            before = _state_text(definition, instance.state, phase)
            child = await _child_view(conn, instance)
            try:
                transition = _decide(instance, definition, phase, request, child)
                children = await _children(conn, instance, transition)
            except ActionRefused as refusal:
                return _outcome(instance, request, before, refused=str(refusal)), []
            signals: tuple[ConsumedSignal, ...] = ()
            if definition is not None and not definition.straight_line:
                # A skip that enters a wait applies a signal kept for it, as any
                # transition of the coordinator's does, in the same write.
                transition, signals = await consume_kept_signals(
                    definition,
                    instance.id,
                    instance.payload,
                    transition,
                    functools.partial(saga_log.kept_signal, conn),
                )
            after = _state_text(definition, transition.state, phase)
            notes = _notes(instance, transition, request, child)
            if dry_run:
                return _outcome(instance, request, before, after=after, notes=notes), []
            decided = _Decided(instance, definition, position, transition, signals, children, notes)
            return await self._write(conn, decided, request, before, after)

        outcome, pending = await self.database.run_driver(
            unit, name=f"operator.{request.action.value}"
        )
        if outcome.applied:
            self._report(outcome, request)
            if pending and self._publisher is not None:
                await self._publisher.publish(pending)
        return outcome

    async def _write(
        self,
        conn: DriverConnection,
        decided: _Decided,
        request: ActionRequest,
        before: str,
        after: str,
    ) -> tuple[ActionOutcome, list[PendingMessage]]:
        instance, transition = decided.instance, decided.transition
        if decided.definition is not None:
            prepared = prepare_write(
                instance,
                decided.definition,
                transition,
                self._topics,
                signals=decided.signals,
                children=decided.children,
            )
            rows, outbox, step_timeout = prepared.log, prepared.outbox, prepared.step_timeout
            shape = prepared.shape
            # What goes out right after the commit; a delayed one waits for the relay.
            pending = [message for message, delay in prepared.sends if delay <= 0]
            commands = prepared.commands or ((prepared.command,) if prepared.command else ())
        else:
            rows = _rows_without_definition(instance, decided.position, transition)
            state = transition.state
            # A child whose definition is gone still tells its parent it ended.
            outbox = child_end_notice(
                instance, state.status, state.context, state.error, self._topics.replies
            )
            step_timeout, shape, commands = 0.0, None, ()
            pending = [] if outbox is None else [_pending(outbox)]
        withdrawn = await saga_log.withdraw_commands(conn, instance.id)
        # A kept signal's row names its sender; every other row, the operator.
        signed = [replace(row, actor=row.actor or request.by.actor) for row in rows]
        if shape is not None:
            stored = await saga_log.write_shaped_transition(
                conn,
                instance,
                transition.state,
                log=signed,
                shape=shape,
                skew=self.database.clock.skew,
            )
        else:
            stored = await saga_log.write_transition(
                conn,
                instance,
                transition.state,
                log=signed,
                outbox=outbox,
                step_timeout=step_timeout,
                skew=self.database.clock.skew,
            )
        # The row lock has been held since the read, so the version cannot have moved.
        assert stored is not None, f"saga {instance.id} changed under its row lock"
        outcome = _outcome(
            instance,
            request,
            before,
            after=after,
            applied=True,
            withdrawn=withdrawn,
            command=", ".join(
                [f"{c.action} #{c.attempt}" for c in commands] + _child_commands(transition)
            )
            or None,
            status=transition.state.status,
            notes=decided.notes,
        )
        return outcome, pending

    def _report(self, outcome: ActionOutcome, request: ActionRequest) -> None:
        log.info(
            "operator_action",
            saga_id=str(outcome.saga_id),
            definition=outcome.definition,
            action=request.action.value,
            actor=request.by.actor,
            why=request.by.reason,
            before=outcome.before,
            after=outcome.after,
            command=outcome.command,
            notes=list(outcome.notes),
        )
        if outcome.status is not None and outcome.status.finished:
            metrics.count_finished(outcome.definition, outcome.status)


def _decide(
    instance: InstanceRow,
    definition: SagaDefinition | None,
    phase: Phase,
    request: ActionRequest,
    child: ChildView | None,
) -> Transition:
    state, by = instance.state, request.by
    if request.action is Action.ABORT:
        return decisions.abort(state, phase, by)
    if definition is None:
        raise ActionRefused(
            f"definition {instance.definition_name} v{instance.definition_version} is "
            "not stored, so nothing can drive the saga: only abort applies"
        )
    if not definition.straight_line:
        return shape_decisions.decide(
            definition,
            state,
            phase,
            request.action,
            by,
            step_name=request.step,
            result=request.result,
            payload=instance.payload,
            child=child,
        )
    if request.action is Action.RETRY:
        return decisions.retry(definition, state, phase, by)
    if request.action is Action.COMPENSATE:
        return decisions.compensate(definition, state, phase, by)
    if request.step is None:
        raise ActionRefused("skip needs the step it skips (--step)")
    return decisions.skip(definition, state, phase, request.step, request.result, by)


async def _child_view(conn: DriverConnection, instance: InstanceRow) -> ChildView | None:
    """The child saga the saga's position waits on (or waited on, when it parked), as
    its row stands; None away from a child saga's position."""
    state = instance.state
    if state.child is None:
        return None
    child_id = child_saga_id(instance.id, state.current_step, state.child.attempt)
    row = await saga_log.load_instance(conn, child_id)
    if row is None:
        return ChildView(child_id, None)
    return ChildView(child_id, row.state.status, row.state.context, row.state.error)


async def _children(
    conn: DriverConnection, instance: InstanceRow, transition: Transition
) -> dict[ChildKey, SagaDefinition]:
    """The stored definitions of the child saga ``transition`` starts (and of those its
    first position starts): refused, before anything is written, if one is missing."""
    if transition.start_child is None:
        return {}

    async def get(name: str, version: int) -> SagaDefinition | None:
        return await _stored_definition_of(conn, name, version)

    try:
        return await needed_children(transition, instance.payload, get)
    except DefinitionError as exc:
        raise ActionRefused(str(exc)) from None


def _notes(
    instance: InstanceRow, transition: Transition, request: ActionRequest, child: ChildView | None
) -> tuple[str, ...]:
    start = transition.start_child
    return child_decisions.notes(
        instance.state,
        transition,
        request.action,
        child=child,
        parent_id=None if instance.parent is None else instance.parent.parent_id,
        new_child_id=None
        if start is None
        else child_saga_id(instance.id, start.step_index, start.attempt),
    )


def _child_commands(transition: Transition) -> list[str]:
    """e.g. ``child test_child_credit v1 #2``, ``compensate child #1``."""
    found = []
    if transition.start_child is not None:
        name, version = transition.start_child.definition
        found.append(f"child {name} v{version} #{transition.start_child.attempt}")
    if transition.compensate_child is not None:
        found.append(f"compensate child #{transition.compensate_child.attempt}")
    return found


def _pending(box: OutboxRow) -> PendingMessage:
    return PendingMessage(box.message_id, box.topic, box.key, box.payload, dict(box.headers))


async def _stored_definition_of(
    conn: DriverConnection, name: str, version: int
) -> SagaDefinition | None:
    try:
        stored = await stored_definitions.load(conn, name, version)
    except UnknownDefinition:
        return None
    return stored.definition


async def _stored_definition(
    conn: DriverConnection, instance: InstanceRow
) -> SagaDefinition | None:
    return await _stored_definition_of(conn, instance.definition_name, instance.definition_version)


def _state_text(definition: SagaDefinition | None, state: InstanceState, phase: Phase) -> str:
    """e.g. ``parked at authorize (compensate) #3``; ``phase`` is the one a parked or
    aborted saga stopped in."""
    if state.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED):
        return state.status.value
    if state.status.in_flight:
        phase = state.phase
    index = state.current_step
    name = definition.positions[index].name if definition is not None else f"#{index}"
    return f"{state.status.value} at {name} ({phase.value}) #{state.step_attempt}"


def _rows_without_definition(
    instance: InstanceRow, position: StepPosition | None, transition: Transition
) -> list[LogRow]:
    """Log rows for an abort of a saga whose definition is gone: the step's name and
    journey come from what the log last said about it."""
    return [
        LogRow(
            entry=entry,
            step_name=position.step_name if position else f"#{entry.step_index}",
            journey=position.journey if position else "unknown",
            message_id=command_message_id(instance.id, entry.step_index, entry.phase),
        )
        for entry in transition.log
    ]


def _outcome(
    instance: InstanceRow,
    request: ActionRequest,
    before: str,
    *,
    after: str | None = None,
    refused: str | None = None,
    applied: bool = False,
    withdrawn: int = 0,
    command: str | None = None,
    status: SagaStatus | None = None,
    notes: tuple[str, ...] = (),
) -> ActionOutcome:
    return ActionOutcome(
        saga_id=instance.id,
        definition=instance.definition_name,
        action=request.action,
        before=before,
        after=after,
        command=command,
        refused=refused,
        applied=applied,
        withdrawn=withdrawn,
        status=status,
        notes=notes,
    )
