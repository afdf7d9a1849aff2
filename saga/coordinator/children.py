"""Child sagas: the parent's ``SubSaga`` position starts one, and they talk through the
coordinators' reply topic.

A child's id is derived from its parent, position and attempt (as its idempotency key
is), so the parent finds its child without a lookup: to compensate it long after it
ended, or to say which one its shape state waits on. The child's end (completed,
compensated, aborted) goes to the parent as a :class:`~saga.messages.ChildEnd`, and a
parent undoing the position asks the child to compensate with a
:class:`~saga.messages.CompensateChildRequest`. Each is an outbox row written by the
transition that causes it, in its statement, so it goes out if and only if that
transition commits, and the relay sends it if the coordinator dies first.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from saga.definition import SagaDefinition
from saga.errors import DefinitionError
from saga.machine import (
    ChildEnded,
    CompensateChild,
    LogEntry,
    LogStatus,
    Phase,
    SagaStatus,
    Transition,
    advance,
    begin,
    child_idempotency_key,
)
from saga.messages import TRACEPARENT, ChildEnd, CompensateChildRequest
from saga.shapes import SubSaga
from saga.store.records import InstanceRow, OutboxRow

ChildKey = tuple[str, int]
DefinitionGet = Callable[[str, int], Awaitable[SagaDefinition | None]]

_CHILD_NAMESPACE = uuid.UUID("3c0f5e7a-2b41-4d8e-9a6c-1f7b0d2e4c93")


def child_saga_id(parent_id: uuid.UUID, step_index: int, attempt: int) -> uuid.UUID:
    """The id of the child the parent's position starts at ``attempt``."""
    return uuid.uuid5(_CHILD_NAMESPACE, child_idempotency_key(parent_id, step_index, attempt))


async def needed_children(
    transition: Transition, payload: Mapping[str, Any], get: DefinitionGet
) -> dict[ChildKey, SagaDefinition]:
    """The definitions of the child sagas ``transition`` starts (and of the children
    their own first positions start), for :func:`saga.coordinator.commands.prepare_write`."""
    found: dict[ChildKey, SagaDefinition] = {}
    start = transition.start_child
    while start is not None and start.definition not in found:
        key = start.definition
        child = await get(*key)
        if child is None:
            raise DefinitionError(
                key[0], f"version {key[1]} is started as a child saga but is not registered"
            )
        found[key] = child
        start = begin(child, payload=start.payload).start_child
    return found


def child_end_notice(
    instance: InstanceRow,
    state_status: SagaStatus,
    context: Mapping[str, Any],
    error: str | None,
    topic: str,
) -> OutboxRow | None:
    """The message telling a child's parent that it ended, when this transition ends it."""
    link = instance.parent
    if link is None or not state_status.finished or state_status is instance.state.status:
        return None
    message = ChildEnd(
        message_id=uuid.uuid5(_CHILD_NAMESPACE, f"end/{instance.id}/{state_status.value}"),
        saga_id=link.parent_id,
        parent_id=link.parent_id,
        child_id=instance.id,
        step_index=link.step_index,
        attempt=link.attempt,
        trace={TRACEPARENT: _trace(link.parent_id)},
        status=state_status,
        context=dict(context),
        error=error,
    )
    return _row(message.message_id, topic, message.key, message.to_bytes(), message.trace)


def compensate_child_request(
    parent: InstanceRow, step_index: int, attempt: int, reason: str | None, topic: str
) -> OutboxRow:
    """The message asking the child of the parent's position to undo its steps. Its id
    names the parent's version that asks, so a second request (the child ignores it
    unless completed or running) never collides with the first in the outbox."""
    parent_id = parent.id
    child_id = child_saga_id(parent_id, step_index, attempt)
    message = CompensateChildRequest(
        message_id=uuid.uuid5(_CHILD_NAMESPACE, f"compensate/{child_id}/{parent.version}"),
        saga_id=child_id,
        parent_id=parent_id,
        child_id=child_id,
        step_index=step_index,
        attempt=attempt,
        trace={TRACEPARENT: _trace(parent_id)},
        reason=reason,
    )
    return _row(message.message_id, topic, message.key, message.to_bytes(), message.trace)


def child_check(
    definition: SagaDefinition, parent: InstanceRow, child: InstanceRow | None
) -> Transition:
    """What a parent waiting on its child does when its look at the child comes due
    (``SubSaga.check_every`` after it last moved; the timeout worker claims it).

    The child's end reaches the parent as a message, and so does the parent's request
    that the child compensate: a broker that loses one would leave the parent waiting for
    ever. So the parent reads the child's row. An end it has not applied is applied now,
    as the message would have been (the message, if it comes after all, is then stale and
    ignored). A request to compensate that the child has not acted on is sent again (the
    child ignores one it has). Otherwise nothing changes and the parent looks again later.
    """
    state = parent.state
    link = state.child
    assert link is not None, "child_check is for a parent at a child saga position"
    index = state.current_step
    if child is None:
        # Retention keeps a saga until it has been finished a while, so this is a log
        # edited by hand: only a person can say what the child did.
        child_id = child_saga_id(parent.id, index, link.attempt)
        why = f"its child saga {child_id} (step {sub_saga_at(definition, index).name!r}) is gone"
        entry = LogEntry(index, link.phase, LogStatus.FAILED, link.attempt, error=why)
        return Transition(replace(state, status=SagaStatus.PARKED, error=why), (entry,))
    found = child.state
    if found.status.finished:
        ended = ChildEnded(index, link.attempt, found.status, found.context, found.error)
        applied = advance(definition, state, ended, payload=parent.payload)
        if applied.ignored is None:
            return applied
    if link.phase is Phase.COMPENSATE and found.status in _NOT_YET_UNDOING:
        return Transition(state, compensate_child=CompensateChild(index, link.attempt))
    return Transition(state)


# A child in one of these has not acted on its parent's request to compensate.
_NOT_YET_UNDOING = frozenset({SagaStatus.COMPLETED, SagaStatus.RUNNING, SagaStatus.WAITING})


def sub_saga_at(definition: SagaDefinition, step_index: int) -> SubSaga:
    position = definition.positions[step_index]
    assert isinstance(position, SubSaga), f"position {step_index} is not a child saga"
    return position


def _trace(saga_id: uuid.UUID) -> str:
    return f"00-{saga_id.hex}-{uuid.uuid4().hex[:16]}-01"


def _row(
    message_id: uuid.UUID, topic: str, key: str, payload: bytes, trace: Mapping[str, str]
) -> OutboxRow:
    return OutboxRow(message_id, topic, key, payload, {TRACEPARENT: trace[TRACEPARENT]})
