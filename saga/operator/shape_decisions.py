"""What an operator's action does to a saga whose definition has parallel groups or waits.

Pure decisions, like :mod:`saga.operator.decisions` (which keeps deciding every
straight-line saga exactly as before). The rules, by where the saga stands:

- **At a wait** (status ``waiting``):
  - ``retry`` is refused: a wait has no command to send again; the signal is sent with
    ``saga signal``.
  - ``skip`` continues as if the awaited signal had arrived with the operator's result
    (it lands in the context under the wait's name); the log's row is ``skipped``,
    naming the operator, and no signal is stored.
  - ``compensate`` undoes the positions before the wait, latest first (the wait itself
    has nothing to undo).
- **At a parallel group**: every branch has its own attempt, outcome and compensation,
  and a failing group already compensates its branches by itself once each has an
  outcome. So only a group parked in its compensation (a branch's compensation out of
  attempts) is moved by hand: ``retry`` (or ``compensate``) sends every branch
  compensation still out again, one more attempt each, and the saga compensates on.
  ``skip`` is refused (which branch?), and so is anything else at a group:
  ``saga abort`` takes the saga over.
- **At a child saga's position**: :mod:`saga.operator.child_decisions` decides, with the
  child's row at hand.
- **At a plain step** of such a definition: ``retry`` and ``compensate`` act as on a
  straight line; ``skip`` moves on as if the participant had answered with the result,
  so the next position (a group, a wait) starts as it would have.
- ``abort`` needs no definition and is decided by :func:`decisions.abort` for every shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from saga.definition import SagaDefinition
from saga.machine import (
    BranchOutcome,
    Dispatch,
    InstanceState,
    LogEntry,
    LogStatus,
    Outcome,
    Phase,
    SagaStatus,
    SignalEvent,
    StepEvent,
    Transition,
    advance,
    compensate_from,
    compensation_cause,
)
from saga.operator import child_decisions, decisions
from saga.operator.child_decisions import ChildView
from saga.operator.decisions import Action, ActionRefused, Operator
from saga.shapes import AwaitEvent, Parallel, SubSaga
from saga.step import Step

COMPENSATE = Phase.COMPENSATE
_PENDING = BranchOutcome.PENDING

_OPERATOR_SIGNAL = "operator-skip"
"""The id of the signal a skipped wait is decided with; never stored (nothing consumes it)."""


def decide(
    definition: SagaDefinition,
    state: InstanceState,
    phase: Phase,
    action: Action,
    by: Operator,
    *,
    step_name: str | None = None,
    result: Mapping[str, Any] | None = None,
    payload: Mapping[str, Any] | None = None,
    child: ChildView | None = None,
) -> Transition:
    """``retry``, ``compensate`` or ``skip`` (``abort`` is :func:`decisions.abort`);
    ``child`` is the child saga of the position, when the saga is at a ``SubSaga``."""
    if state.status.finished:
        raise ActionRefused(f"the saga is {state.status.value}; there is nothing to {action}")
    position = definition.positions[state.current_step]
    if isinstance(position, AwaitEvent):
        return _at_wait(definition, state, position, action, by, step_name, result, payload)
    if isinstance(position, Parallel):
        return _at_group(state, position, action, by)
    if isinstance(position, SubSaga):
        return child_decisions.decide(
            definition,
            state,
            position,
            action,
            by,
            child,
            step_name=step_name,
            result=result,
            payload=payload,
        )
    if not isinstance(position, Step):
        raise ActionRefused(
            f"the saga is at {position.name!r}, a {type(position).__name__}; "
            f"`saga {action}` does not act on it: only abort applies"
        )
    if action is Action.RETRY:
        return decisions.retry(definition, state, phase, by)
    if action is Action.COMPENSATE:
        return _compensate_step(definition, state, position, phase, by)
    return _skip_step(definition, state, position, phase, by, step_name, result, payload)


def _at_wait(
    definition: SagaDefinition,
    state: InstanceState,
    wait: AwaitEvent,
    action: Action,
    by: Operator,
    step_name: str | None,
    result: Mapping[str, Any] | None,
    payload: Mapping[str, Any] | None,
) -> Transition:
    index = state.current_step
    if state.status is not SagaStatus.WAITING:
        raise ActionRefused(
            f"the saga is {state.status.value} at wait {wait.name!r}; only abort applies"
        )
    if action is Action.RETRY:
        raise ActionRefused(
            f"the saga waits at {wait.name!r} for {wait.event!r}: there is no command to "
            f"send again; send the signal with `saga signal`, skip the wait or compensate"
        )
    if action is Action.COMPENSATE:
        why = by.says("compensation requested")
        entry = LogEntry(index, Phase.EXECUTE, LogStatus.ABORTED, state.step_attempt, error=why)
        return compensate_from(definition, state, index - 1, why, entry)
    _require_current(wait.name, index, step_name, Phase.EXECUTE)
    given = dict(result or {})
    signalled = advance(
        definition,
        state,
        SignalEvent(wait.event, given, _OPERATOR_SIGNAL),
        payload=payload,
    )
    assert signalled.ignored is None, signalled.ignored
    skipped = LogEntry(
        index,
        Phase.EXECUTE,
        LogStatus.SKIPPED,
        state.step_attempt,
        response=given,
        error=by.says("skipped"),
    )
    return replace(signalled, log=(skipped, *signalled.log[1:]), consumed_signal=None)


def _at_group(state: InstanceState, group: Parallel, action: Action, by: Operator) -> Transition:
    """Only a group parked in its compensation can be moved: its branch compensations
    still out (the one out of attempts, and any whose answer the park left unheard) are
    sent again, each as one more attempt with its own message id."""
    undoing = [b for b, branch in enumerate(state.branches) if branch.compensation is _PENDING]
    names = ", ".join(branch.name for branch in group.branches)
    if state.status is not SagaStatus.PARKED or not undoing or action is Action.SKIP:
        raise ActionRefused(
            f"the saga is {state.status.value} at parallel group {group.name!r} (branches "
            f"{names}); `saga {action}` acts on a group only to resume its compensation "
            "once parked there (retry or compensate); otherwise `saga abort` takes the "
            "saga over"
        )
    index = state.current_step
    branches = list(state.branches)
    log: list[LogEntry] = []
    dispatches: list[Dispatch] = []
    for b in undoing:
        attempt = branches[b].compensation_attempt
        log.append(
            LogEntry(
                index, COMPENSATE, LogStatus.RETRIED, attempt, error=by.says("retried"), branch=b
            )
        )
        branches[b] = replace(branches[b], compensation_attempt=attempt + 1)
        log.append(LogEntry(index, COMPENSATE, LogStatus.DISPATCHED, attempt + 1, branch=b))
        dispatches.append(Dispatch(index, COMPENSATE, attempt + 1, branch=b))
    resumed = replace(
        state,
        status=SagaStatus.COMPENSATING,
        error=compensation_cause(state.error),
        branches=tuple(branches),
    )
    return Transition(resumed, tuple(log), tuple(dispatches))


def _compensate_step(
    definition: SagaDefinition, state: InstanceState, step: Step, phase: Phase, by: Operator
) -> Transition:
    if phase is Phase.COMPENSATE:
        return decisions.compensate(definition, state, phase, by)
    return decisions.compensate_at(definition, state, step, by)


def _skip_step(
    definition: SagaDefinition,
    state: InstanceState,
    step: Step,
    phase: Phase,
    by: Operator,
    step_name: str | None,
    result: Mapping[str, Any] | None,
    payload: Mapping[str, Any] | None,
) -> Transition:
    index = state.current_step
    _require_current(step.name, index, step_name, phase)
    given = dict(result or {})
    # Decided as the participant's success (or compensation's) of the current attempt,
    # so whatever comes next (a group, a wait) is entered exactly as it would have been.
    running = replace(
        state,
        status=SagaStatus.RUNNING if phase is Phase.EXECUTE else SagaStatus.COMPENSATING,
    )
    answered = advance(
        definition,
        running,
        StepEvent(index, phase, state.step_attempt, Outcome.SUCCEEDED, given),
        payload=payload,
    )
    assert answered.ignored is None, answered.ignored
    skipped = LogEntry(
        index,
        phase,
        LogStatus.SKIPPED,
        state.step_attempt,
        response=given,
        error=by.says("skipped"),
    )
    return replace(answered, log=(skipped, *answered.log[1:]))


def _require_current(name: str, index: int, given: str | None, phase: Phase) -> None:
    if given is None:
        raise ActionRefused("skip needs the step it skips (--step)")
    if given not in (name, str(index)):
        raise ActionRefused(
            f"the saga is at {name!r} ({phase.value}), not {given!r}; "
            "skip acts only on the current position"
        )
