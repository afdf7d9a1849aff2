"""What an operator's action does to a saga: pure decisions, like the state machine's.

Each action returns a :class:`~saga.machine.Transition` the coordinator's own write path
persists (version-checked, with its log rows and command in one statement), or raises
:class:`ActionRefused` saying why the action does not apply to the saga as it stands.

A parked saga does not say by its status whether it stopped in a step or in a
compensation; the caller reads that from the step log (``phase``) and passes it in.

- **retry**: one more attempt of the current step (or compensation), with the same
  message id: a participant that already ran it answers from its inbox. If that attempt
  fails too, the saga goes on as if its last attempt had failed.
- **compensate**: undo what the saga did, starting with its current step (its outcome may
  be unknown; the participant's inbox makes undoing a step that never ran a no-op). A
  saga parked in its compensation resumes it.
- **skip**: the current step (or compensation) counts as done by hand, with the result
  the operator supplies, and the saga moves on as if the participant had answered so.
- **abort**: stop the saga where it is, undoing nothing; a person has taken over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from saga.definition import SagaDefinition, Step
from saga.errors import SagaError
from saga.machine import (
    Dispatch,
    InstanceState,
    LogEntry,
    LogStatus,
    Phase,
    SagaStatus,
    Transition,
    compensate_from,
    compensation_cause,
)


class Action(StrEnum):
    RETRY = "retry"
    COMPENSATE = "compensate"
    SKIP = "skip"
    ABORT = "abort"

    @property
    def description(self) -> str:
        """What the action does, as the CLI's help and the console's forms say it."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    Action.RETRY: "send the current step (or compensation) again, one more attempt",
    Action.COMPENSATE: "undo what the saga did, from its current step back",
    Action.SKIP: "count the current step (or compensation) as done by hand",
    Action.ABORT: "stop the saga where it is, undoing nothing (a person takes over)",
}


class ActionRefused(SagaError):
    """The action does not apply to the saga in its present state."""


@dataclass(frozen=True, slots=True)
class Operator:
    """Who acts and why: both are written to the step log."""

    actor: str
    reason: str

    def says(self, verb: str) -> str:
        return f"{verb} by {self.actor}: {self.reason}"


def current_phase(state: InstanceState, parked_phase: Phase | None) -> Phase:
    """The phase the saga is in: its status says, except when parked."""
    if state.status is SagaStatus.PARKED:
        return parked_phase or Phase.EXECUTE
    return state.phase


def retry(
    definition: SagaDefinition, state: InstanceState, phase: Phase, by: Operator
) -> Transition:
    _require_unfinished(state, Action.RETRY)
    index = state.current_step
    entry = LogEntry(index, phase, LogStatus.RETRIED, state.step_attempt, error=by.says("retried"))
    if phase is Phase.EXECUTE:
        resumed = replace(state, status=SagaStatus.RUNNING, error=None)
    else:
        resumed = replace(
            state, status=SagaStatus.COMPENSATING, error=compensation_cause(state.error)
        )
    attempt = state.step_attempt + 1
    nxt = replace(resumed, step_attempt=attempt)
    return Transition(
        nxt,
        (entry, LogEntry(index, phase, LogStatus.DISPATCHED, attempt)),
        (Dispatch(index, phase, attempt),),
    )


def compensate(
    definition: SagaDefinition, state: InstanceState, phase: Phase, by: Operator
) -> Transition:
    _require_unfinished(state, Action.COMPENSATE)
    if phase is Phase.COMPENSATE:
        if state.status is SagaStatus.PARKED:
            return retry(definition, state, phase, by)
        raise ActionRefused(
            "the saga is already compensating; `saga retry` sends its compensation again"
        )
    return compensate_at(definition, state, definition.steps[state.current_step], by)


def compensate_at(
    definition: SagaDefinition, state: InstanceState, step: Step, by: Operator
) -> Transition:
    """Undo the saga from ``step``, the one it runs now, itself included (its outcome may
    be unknown); refused past the point of no return."""
    if step.retriable_only:
        raise ActionRefused(
            f"step {step.name!r} is past the saga's point of no return (retriable only): "
            "retry it, skip it or abort the saga"
        )
    why = by.says("compensation requested")
    entry = LogEntry(
        state.current_step, Phase.EXECUTE, LogStatus.ABORTED, state.step_attempt, error=why
    )
    return compensate_from(definition, state, state.current_step, why, entry)


def skip(
    definition: SagaDefinition,
    state: InstanceState,
    phase: Phase,
    step_name: str,
    result: Mapping[str, Any],
    by: Operator,
) -> Transition:
    _require_unfinished(state, Action.SKIP)
    index = state.current_step
    step = definition.steps[index]
    if step_name not in (step.name, str(index)):
        raise ActionRefused(
            f"the saga is at step {step.name!r} ({phase.value}), not {step_name!r}; "
            "skip acts only on the current step"
        )
    entry = LogEntry(
        index,
        phase,
        LogStatus.SKIPPED,
        state.step_attempt,
        response=dict(result),
        error=by.says("skipped"),
    )
    if phase is Phase.COMPENSATE:
        return compensate_from(definition, state, index - 1, compensation_cause(state.error), entry)
    context = {**state.context, **result}
    if index + 1 == len(definition.steps):
        done = InstanceState(SagaStatus.COMPLETED, index, state.step_attempt, context, None)
        return Transition(done, (entry,))
    nxt = InstanceState(SagaStatus.RUNNING, index + 1, 1, context, None)
    return Transition(
        nxt,
        (entry, LogEntry(index + 1, Phase.EXECUTE, LogStatus.DISPATCHED, 1)),
        (Dispatch(index + 1, Phase.EXECUTE, 1),),
    )


def abort(state: InstanceState, phase: Phase, by: Operator) -> Transition:
    """Needs no definition: a saga whose definition is gone can still be closed."""
    _require_unfinished(state, Action.ABORT)
    why = by.says("aborted")
    error = why if state.error is None else f"{why} (was {state.status.value}: {state.error})"
    entry = LogEntry(state.current_step, phase, LogStatus.ABORTED, state.step_attempt, error=why)
    return Transition(replace(state, status=SagaStatus.ABORTED, error=error), (entry,))


def _require_unfinished(state: InstanceState, action: Action) -> None:
    if state.status.finished:
        raise ActionRefused(f"the saga is {state.status.value}; there is nothing to {action}")
