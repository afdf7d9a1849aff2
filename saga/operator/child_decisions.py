"""What an operator's action does to a saga at a child saga's position (a ``SubSaga``).

Pure decisions, like :mod:`saga.operator.decisions`: the caller reads the child's row from
the log (:class:`ChildView`) and passes it in. The child is always the one the parent's
shape state names (its position and attempt give its id). The rules, by where the parent
stands (docs/operating.md has them as a table):

- **Parked because its child was aborted** (an operator's ``saga abort`` of the child;
  the child's end parks the parent):
  - while running the child: ``retry`` starts the child again as a new attempt (a new
    child saga, with a new id; the aborted one stays as it was left); ``compensate`` undoes
    the positions before; ``skip --result`` takes the result as the position's (under its
    name, as a child's context would be) and goes on. Neither of the last two touches what
    the aborted child did: that is the operator's to judge, as its abort said.
  - while undoing the child (it was aborted while it compensated): ``retry`` is refused
    (an aborted saga takes no request); ``compensate`` and ``skip`` count the child's
    undoing as done by hand and undo the positions before.
- **Running or compensating, its child still going** (running, waiting, compensating,
  parked): the child is where the work is, so ``retry`` and ``skip`` are refused, naming
  it. ``compensate`` asks it to compensate (a ``CompensateChildRequest``) and the parent
  undoes the positions before once the child's compensated end comes back; refused while
  the child is parked, since a parked saga ignores the request (``saga compensate CHILD``
  then does both). While the parent is already undoing the child, ``retry`` sends the
  request again if the child has not acted on it (it is running, waiting or completed).
- **Running or compensating, its child ended** (completed, compensated, aborted) but the
  parent never heard (the child's end message is on its way, or was lost): ``retry``
  applies the child's end as its row has it, as if the message had come; the others are
  refused and say so.
- ``abort`` stops the parent alone, as for any saga (:func:`decisions.abort`): a child
  still going goes on, and the aborted parent ignores its end. :func:`notes` says so.

Undoing the parent later addresses the child that completed the position (the attempt
``retry`` started, kept in the state's ``child_attempts``), and passes over a position an
operator skipped: no child did its work.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from saga.definition import SagaDefinition
from saga.machine import (
    ChildEnded,
    ChildLink,
    CompensateChild,
    InstanceState,
    LogEntry,
    LogStatus,
    Phase,
    SagaStatus,
    StartChild,
    Transition,
    advance,
    compensate_from,
    compensation_cause,
)
from saga.operator.decisions import Action, ActionRefused, Operator
from saga.shapes import SubSaga

EXECUTE, COMPENSATE = Phase.EXECUTE, Phase.COMPENSATE

_GOING = (SagaStatus.RUNNING, SagaStatus.WAITING, SagaStatus.COMPENSATING, SagaStatus.PARKED)
_UNASKED = (SagaStatus.RUNNING, SagaStatus.WAITING, SagaStatus.COMPLETED)
"""A child in one of these has not acted on a request to compensate (yet)."""
_PARKS_A_PARENT = (SagaStatus.ABORTED, SagaStatus.COMPENSATED)


@dataclass(frozen=True, slots=True)
class ChildView:
    """The child saga of the parent's position, as its row in the log stands."""

    id: uuid.UUID
    status: SagaStatus | None
    """``None`` when the log has no such saga."""
    context: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


def decide(
    definition: SagaDefinition,
    state: InstanceState,
    sub: SubSaga,
    action: Action,
    by: Operator,
    child: ChildView | None,
    *,
    step_name: str | None = None,
    result: Mapping[str, Any] | None = None,
    payload: Mapping[str, Any] | None = None,
) -> Transition:
    """``retry``, ``compensate`` or ``skip`` of a saga at ``sub`` (``abort`` is
    :func:`decisions.abort`); ``child`` is the one its shape state names."""
    link = state.child
    if link is None or child is None:
        raise ActionRefused(
            f"the saga is at child saga position {sub.name!r} but names no child; "
            "only abort applies"
        )
    if child.status is None:
        raise ActionRefused(f"its child saga {child.id} is not in the log; only abort applies")
    if state.status is SagaStatus.PARKED:
        return _parked(definition, state, sub, link, action, by, child, step_name, result, payload)
    if child.status in _GOING:
        return _child_going(definition, state, sub, link, action, by, child)
    return _child_ended(definition, state, sub, link, action, by, child, payload)


def _parked(
    definition: SagaDefinition,
    state: InstanceState,
    sub: SubSaga,
    link: ChildLink,
    action: Action,
    by: Operator,
    child: ChildView,
    step_name: str | None,
    result: Mapping[str, Any] | None,
    payload: Mapping[str, Any] | None,
) -> Transition:
    index = state.current_step
    if child.status not in _PARKS_A_PARENT:
        raise ActionRefused(
            f"the saga is parked at {sub.name!r} but its child saga {child.id} is "
            f"{_status(child)}: act on the child, or abort this saga"
        )
    if link.phase is COMPENSATE:
        if action is Action.RETRY:
            raise ActionRefused(
                f"its child saga {child.id} is {_status(child)} and takes no request now: "
                "`saga compensate` (or `saga skip`) counts its undoing as done by hand and "
                "undoes the positions before"
            )
        if action is Action.SKIP:
            _require_current(sub.name, index, step_name)
        verb = "skipped" if action is Action.SKIP else "compensation resumed"
        entry = LogEntry(
            index,
            COMPENSATE,
            LogStatus.SKIPPED,
            link.attempt,
            response=dict(result or {}) if action is Action.SKIP else None,
            error=by.says(verb),
        )
        return compensate_from(definition, state, index - 1, compensation_cause(state.error), entry)
    if action is Action.RETRY:
        return _start_again(state, sub, link, by, payload)
    if action is Action.COMPENSATE:
        why = by.says("compensation requested")
        entry = LogEntry(index, EXECUTE, LogStatus.ABORTED, link.attempt, error=why)
        return compensate_from(definition, state, index - 1, why, entry)
    _require_current(sub.name, index, step_name)
    return _skip(definition, state, sub, link, by, result, payload)


def _start_again(
    state: InstanceState,
    sub: SubSaga,
    link: ChildLink,
    by: Operator,
    payload: Mapping[str, Any] | None,
) -> Transition:
    """The child again, as the next attempt: its id and idempotency key are the
    attempt's, so it is a new saga, started in this transition's statement."""
    index = state.current_step
    child_payload, missing = sub.child_payload(payload or {}, state.context)
    if missing:
        raise ActionRefused(
            f"the child saga's payload refers to what is not there: {', '.join(missing)}"
        )
    attempt = link.attempt + 1
    retried = LogEntry(index, EXECUTE, LogStatus.RETRIED, link.attempt, error=by.says("retried"))
    started = LogEntry(index, EXECUTE, LogStatus.DISPATCHED, attempt)
    nxt = replace(
        state,
        status=SagaStatus.RUNNING,
        error=None,
        step_attempt=attempt,
        child=ChildLink(attempt, EXECUTE),
    )
    command = StartChild(index, attempt, sub.definition, child_payload)
    return Transition(nxt, (retried, started), start_child=command)


def _skip(
    definition: SagaDefinition,
    state: InstanceState,
    sub: SubSaga,
    link: ChildLink,
    by: Operator,
    result: Mapping[str, Any] | None,
    payload: Mapping[str, Any] | None,
) -> Transition:
    """Decided as the child's completed end with the operator's result, so what comes
    next starts exactly as it would have; no child did the work, so undoing the saga
    later passes over the position (``child_attempts`` 0)."""
    index = state.current_step
    given = dict(result or {})
    running = replace(state, status=SagaStatus.RUNNING, error=None)
    ended = ChildEnded(index, link.attempt, SagaStatus.COMPLETED, given)
    answered = advance(definition, running, ended, payload=payload)
    assert answered.ignored is None, answered.ignored
    skipped = LogEntry(
        index, EXECUTE, LogStatus.SKIPPED, link.attempt, response=given, error=by.says("skipped")
    )
    attempts = {**answered.state.child_attempts, index: 0}
    return replace(
        answered,
        state=replace(answered.state, child_attempts=attempts),
        log=(skipped, *answered.log[1:]),
    )


def _child_going(
    definition: SagaDefinition,
    state: InstanceState,
    sub: SubSaga,
    link: ChildLink,
    action: Action,
    by: Operator,
    child: ChildView,
) -> Transition:
    index, named = state.current_step, child.id
    if link.phase is EXECUTE and action is Action.COMPENSATE:
        if child.status is SagaStatus.PARKED:
            raise ActionRefused(
                f"its child saga {named} is parked, and a parked saga ignores a request to "
                f"compensate: act on the child (`saga compensate {child.id}`); its "
                "compensated end then undoes the positions before in this saga"
            )
        why = by.says("compensation requested")
        entry = LogEntry(index, EXECUTE, LogStatus.ABORTED, link.attempt, error=why)
        return compensate_from(definition, state, index, why, entry)
    if link.phase is COMPENSATE and action is Action.RETRY and child.status in _UNASKED:
        return _ask_again(state, link, by)
    doing = "runs" if link.phase is EXECUTE else "undoes itself"
    if link.phase is COMPENSATE and action is Action.COMPENSATE:
        doing = "undoes itself (this saga is already compensating)"
    raise ActionRefused(
        f"the saga waits at {sub.name!r} while its child saga {named} {doing}: it is "
        f"{_status(child)}; act on the child (`saga {action} {child.id}`), whose end "
        "reaches this saga, or abort this saga"
    )


def _child_ended(
    definition: SagaDefinition,
    state: InstanceState,
    sub: SubSaga,
    link: ChildLink,
    action: Action,
    by: Operator,
    child: ChildView,
    payload: Mapping[str, Any] | None,
) -> Transition:
    """The child has ended and the parent has not heard: its end message is on its way,
    or was lost. ``retry`` applies it from the child's row."""
    if link.phase is COMPENSATE and action is Action.RETRY and child.status in _UNASKED:
        return _ask_again(state, link, by)
    named, status = child.id, _status(child)
    if action is not Action.RETRY:
        raise ActionRefused(
            f"its child saga {named} has already ended ({status}) and this saga has not "
            f"heard yet: `saga retry` applies the child's end now"
        )
    assert child.status is not None
    ended = ChildEnded(state.current_step, link.attempt, child.status, child.context, child.error)
    applied = advance(definition, state, ended, payload=payload)
    if applied.ignored is not None:
        raise ActionRefused(f"its child saga {named} is {status}: {applied.ignored}")
    noted = LogEntry(
        state.current_step,
        link.phase,
        LogStatus.RETRIED,
        link.attempt,
        error=by.says(f"retried (the child's end, {status}, applied from the log)"),
    )
    return replace(applied, log=(noted, *applied.log))


def _ask_again(state: InstanceState, link: ChildLink, by: Operator) -> Transition:
    """The request to compensate, sent again (one the broker lost, say); a child that has
    acted on it already ignores it."""
    entry = LogEntry(
        state.current_step,
        COMPENSATE,
        LogStatus.RETRIED,
        link.attempt,
        error=by.says("retried (the request to compensate sent again)"),
    )
    return Transition(
        state, (entry,), compensate_child=CompensateChild(state.current_step, link.attempt)
    )


def notes(
    before: InstanceState,
    transition: Transition,
    action: Action,
    *,
    child: ChildView | None,
    parent_id: uuid.UUID | None,
    new_child_id: uuid.UUID | None = None,
) -> tuple[str, ...]:
    """What the operator should know beyond the saga's own change: what becomes of its
    child, or of its parent."""
    found: list[str] = []
    after = transition.state
    if transition.start_child is not None and new_child_id is not None:
        name, version = transition.start_child.definition
        found.append(
            f"starts child saga {new_child_id} ({name} v{version}, attempt "
            f"{transition.start_child.attempt})"
        )
    if transition.compensate_child is not None and child is not None:
        found.append(
            f"asks child saga {child.id} to compensate; this saga undoes what came before "
            "once it has"
        )
    aborted = child is not None and child.status is SagaStatus.ABORTED
    if child is not None and aborted and _left_behind(before, after):
        found.append(
            f"child saga {child.id} stays aborted: what it did is not undone by this "
            f"saga (`saga show {child.id}`)"
        )
    if action is Action.ABORT and child is not None and child.status in _GOING:
        found.append(
            f"child saga {child.id} ({child.status.value}) goes on: `saga abort {child.id}` "
            "stops it too"
        )
    if parent_id is not None and after.status.finished and after.status is not before.status:
        found.append(f"its end ({after.status.value}) is sent to its parent saga {parent_id}")
    return tuple(found)


def _left_behind(before: InstanceState, after: InstanceState) -> bool:
    """The saga moved off the position of its aborted child without asking it anything."""
    return before.status is SagaStatus.PARKED and (
        after.current_step != before.current_step or after.status.finished
    )


def _status(child: ChildView) -> str:
    return "not in the log" if child.status is None else child.status.value


def _require_current(name: str, index: int, given: str | None) -> None:
    if given is None:
        raise ActionRefused("skip needs the step it skips (--step)")
    if given not in (name, str(index)):
        raise ActionRefused(
            f"the saga is at {name!r}, not {given!r}; skip acts only on the current position"
        )
