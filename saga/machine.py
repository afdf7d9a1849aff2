"""The saga state machine: given an instance and an event, decide what happens next.

No I/O happens here. The coordinator loads the instance, asks :func:`advance` (or
:func:`begin`, :func:`expire`) for a :class:`Transition`, and persists it in one
transaction: the new instance state, the step-log entries and the command to dispatch.

Message ids are derived from the saga, step and phase (:func:`command_message_id`), so
every attempt of one step's command carries the same id: a participant that already ran
it answers from its inbox instead of running it twice.

When a step's outcome is *unknown* (its attempts erred or timed out, so a late delivery
might still commit it), compensation starts with that step itself; the participant's
inbox tells whether there is anything to undo. When a participant *refused* the step, it
committed nothing, so compensation starts with the step before.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from saga.definition import SagaDefinition, Step

_MESSAGE_NAMESPACE = uuid.UUID("6f1d2c3e-58a7-4c4b-9d7e-2b9a1e0c5a11")


class SagaStatus(StrEnum):
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    PARKED = "parked"
    ABORTED = "aborted"
    """An operator stopped the saga (``saga abort``) and took over: nothing drives or
    compensates it any more."""

    @property
    def finished(self) -> bool:
        return self in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.ABORTED)

    @property
    def in_flight(self) -> bool:
        return self in (SagaStatus.RUNNING, SagaStatus.COMPENSATING)


class Phase(StrEnum):
    EXECUTE = "execute"
    COMPENSATE = "compensate"


class Outcome(StrEnum):
    """What became of one attempt of a step's command."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """The participant refused for a business reason and committed nothing."""
    ERROR = "error"
    """The participant could not run it (a fault); nothing committed; worth another try."""
    TIMED_OUT = "timed_out"
    """No reply before the deadline; the command may still be applied later."""


class LogStatus(StrEnum):
    """``shared.saga_step_log.status``."""

    DISPATCHED = "dispatched"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    IGNORED = "ignored"
    SKIPPED = "skipped"
    RETRIED = "retried"
    ABORTED = "aborted"


@dataclass(frozen=True, slots=True)
class InstanceState:
    status: SagaStatus
    current_step: int
    step_attempt: int
    context: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def phase(self) -> Phase:
        return Phase.COMPENSATE if self.status is SagaStatus.COMPENSATING else Phase.EXECUTE


@dataclass(frozen=True, slots=True)
class StepEvent:
    """A participant's reply (or a timeout) for one attempt of one step's command."""

    step_index: int
    phase: Phase
    attempt: int
    outcome: Outcome
    result: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class LogEntry:
    step_index: int
    phase: Phase
    status: LogStatus
    attempt: int
    response: Mapping[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send this step's command (same message id on every attempt) after ``delay`` s."""

    step_index: int
    phase: Phase
    attempt: int
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Transition:
    state: InstanceState
    log: tuple[LogEntry, ...] = ()
    dispatch: Dispatch | None = None
    ignored: str | None = None
    """Set when the event changed nothing; says why (stale attempt, step already past)."""

    @property
    def changed(self) -> bool:
        return self.ignored is None


def command_message_id(saga_id: uuid.UUID, step_index: int, phase: Phase) -> uuid.UUID:
    """The one id every attempt of this step's command carries."""
    return uuid.uuid5(_MESSAGE_NAMESPACE, f"{saga_id}/{step_index}/{phase.value}")


def begin(definition: SagaDefinition) -> Transition:
    """A new instance: running, the first step dispatched."""
    state = InstanceState(SagaStatus.RUNNING, 0, 1)
    return Transition(
        state,
        (LogEntry(0, Phase.EXECUTE, LogStatus.DISPATCHED, 1),),
        Dispatch(0, Phase.EXECUTE, 1),
    )


def advance(
    definition: SagaDefinition,
    state: InstanceState,
    event: StepEvent,
    *,
    rng: random.Random | None = None,
) -> Transition:
    """Apply one reply or timeout to the instance."""
    stale = _why_stale(definition, state, event)
    if stale is not None:
        return Transition(state, ignored=stale)
    if event.attempt != state.step_attempt:
        # A settled answer to an earlier attempt (see _settles): it is the outcome of the
        # command the current attempt re-sent, so it stands as the current attempt's.
        event = replace(event, attempt=state.step_attempt)
    step = definition.steps[event.step_index]
    if event.phase is Phase.EXECUTE:
        return _after_execute(definition, state, step, event, rng)
    return _after_compensate(definition, state, step, event, rng)


def expire(definition: SagaDefinition, state: InstanceState, reason: str) -> Transition:
    """The saga outran its overall deadline: undo what may have been done."""
    if state.status is not SagaStatus.RUNNING:
        return Transition(state, ignored=f"saga is {state.status.value}, not running")
    step = definition.steps[state.current_step]
    entry = LogEntry(
        state.current_step, Phase.EXECUTE, LogStatus.ABORTED, state.step_attempt, error=reason
    )
    if step.retriable_only:
        return _park(state, entry, f"{reason}; step {step.name!r} is retriable-only")
    return compensate_from(definition, state, state.current_step, reason, entry)


def _why_stale(definition: SagaDefinition, state: InstanceState, event: StepEvent) -> str | None:
    if not state.status.in_flight:
        return f"saga is already {state.status.value}"
    if not 0 <= event.step_index < len(definition.steps):
        return f"step {event.step_index} does not exist in {definition.name} v{definition.version}"
    if event.phase is not state.phase or event.step_index != state.current_step:
        return (
            f"reply for step {event.step_index} ({event.phase.value}) but the saga is at "
            f"step {state.current_step} ({state.phase.value})"
        )
    if event.attempt != state.step_attempt and not _settles(state, event):
        return f"reply for attempt {event.attempt} but the step is at attempt {state.step_attempt}"
    return None


def _settles(state: InstanceState, event: StepEvent) -> bool:
    """An earlier attempt's reply that settles the step: succeeded, or (a step, not a
    compensation, which is retried when it fails) refused.

    Every attempt of a step carries the same message id, and the participant runs that
    command once and answers every delivery of it from its inbox, so a settled answer to
    attempt 1 is the answer attempt 2 will get too. Ignoring it would leave the step to
    time out again whenever the queue ahead of the participant is slower than the step's
    timeout, until its attempts run out and the saga parks with an unknown outcome (the
    reliability suite saw 3 % of sagas park so under overload). An error or a timeout of
    an earlier attempt settles nothing: the current attempt is still the one to wait for.
    """
    settled = (
        (Outcome.SUCCEEDED, Outcome.FAILED)
        if event.phase is Phase.EXECUTE
        else (Outcome.SUCCEEDED,)
    )
    return event.attempt < state.step_attempt and event.outcome in settled


def _after_execute(
    definition: SagaDefinition,
    state: InstanceState,
    step: Step,
    event: StepEvent,
    rng: random.Random | None,
) -> Transition:
    index, attempt = event.step_index, event.attempt
    if event.outcome is Outcome.SUCCEEDED:
        done = LogEntry(index, Phase.EXECUTE, LogStatus.SUCCEEDED, attempt, response=event.result)
        context = {**state.context, **event.result}
        if index + 1 == len(definition.steps):
            finished = InstanceState(SagaStatus.COMPLETED, index, attempt, context, None)
            return Transition(finished, (done,))
        nxt = InstanceState(SagaStatus.RUNNING, index + 1, 1, context, None)
        return Transition(
            nxt,
            (done, LogEntry(index + 1, Phase.EXECUTE, LogStatus.DISPATCHED, 1)),
            Dispatch(index + 1, Phase.EXECUTE, 1),
        )

    reason = event.reason or event.outcome.value
    if event.outcome is Outcome.FAILED:
        failed = LogEntry(index, Phase.EXECUTE, LogStatus.FAILED, attempt, error=reason)
        if step.retriable_only:
            return _park(state, failed, f"retriable-only step {step.name!r} refused: {reason}")
        # A refusal committed nothing: undo the steps before this one.
        return compensate_from(
            definition, state, index - 1, f"step {step.name!r} failed: {reason}", failed
        )

    status = LogStatus.TIMED_OUT if event.outcome is Outcome.TIMED_OUT else LogStatus.RETRIED
    if attempt < step.retry.max_attempts:
        entry = LogEntry(index, Phase.EXECUTE, status, attempt, error=reason)
        return _retry(state, entry, step.retry.delay_before(attempt + 1, rng=rng), Phase.EXECUTE)

    failed = LogEntry(
        index,
        Phase.EXECUTE,
        LogStatus.FAILED,
        attempt,
        error=f"out of attempts ({attempt}): {reason}",
    )
    why = f"step {step.name!r} out of attempts ({attempt}): {reason}"
    if step.retriable_only:
        return _park(state, failed, why)
    if event.outcome is Outcome.TIMED_OUT and not step.compensatable:
        # It may yet commit and nothing could undo it: a person must look before
        # anything is undone around it.
        return _park(state, failed, f"{why}; the final step's outcome is unknown")
    # A late delivery may still commit it: undo this step too (the participant's inbox
    # makes undoing a step that never ran a no-op, and bars it from running later).
    return compensate_from(definition, state, index, why, failed)


def _after_compensate(
    definition: SagaDefinition,
    state: InstanceState,
    step: Step,
    event: StepEvent,
    rng: random.Random | None,
) -> Transition:
    index, attempt = event.step_index, event.attempt
    if event.outcome is Outcome.SUCCEEDED:
        done = LogEntry(
            index, Phase.COMPENSATE, LogStatus.SUCCEEDED, attempt, response=event.result
        )
        return compensate_from(definition, state, index - 1, state.error, done)

    reason = event.reason or event.outcome.value
    if attempt < step.compensation_retry.max_attempts:
        status = LogStatus.TIMED_OUT if event.outcome is Outcome.TIMED_OUT else LogStatus.RETRIED
        entry = LogEntry(index, Phase.COMPENSATE, status, attempt, error=reason)
        delay = step.compensation_retry.delay_before(attempt + 1, rng=rng)
        return _retry(state, entry, delay, Phase.COMPENSATE)
    failed = LogEntry(index, Phase.COMPENSATE, LogStatus.FAILED, attempt, error=reason)
    return _park(
        state,
        failed,
        f"compensation of step {step.name!r} failed after {attempt} attempts: {reason}"
        f"{_COMPENSATING_BECAUSE}{state.error})",
    )


_COMPENSATING_BECAUSE = " (compensating because "


def compensation_cause(error: str | None) -> str | None:
    """Why a saga parked in its compensation was compensating in the first place: the
    reason its compensation carries on with when an operator resumes it."""
    if error is None or not error.endswith(")") or _COMPENSATING_BECAUSE not in error:
        return error
    return error.split(_COMPENSATING_BECAUSE, 1)[1][:-1]


def _retry(state: InstanceState, entry: LogEntry, delay: float, phase: Phase) -> Transition:
    nxt = replace(state, step_attempt=state.step_attempt + 1)
    dispatched = LogEntry(state.current_step, phase, LogStatus.DISPATCHED, nxt.step_attempt)
    return Transition(
        nxt, (entry, dispatched), Dispatch(state.current_step, phase, nxt.step_attempt, delay)
    )


def compensate_from(
    definition: SagaDefinition,
    state: InstanceState,
    start: int,
    reason: str | None,
    entry: LogEntry,
) -> Transition:
    """Dispatch the compensation of the highest compensatable step at or below ``start``;
    with none left the saga is compensated."""
    for index in range(start, -1, -1):
        if definition.steps[index].compensatable:
            nxt = InstanceState(SagaStatus.COMPENSATING, index, 1, state.context, reason)
            return Transition(
                nxt,
                (entry, LogEntry(index, Phase.COMPENSATE, LogStatus.DISPATCHED, 1)),
                Dispatch(index, Phase.COMPENSATE, 1),
            )
    done = InstanceState(
        SagaStatus.COMPENSATED, max(start, 0), state.step_attempt, state.context, reason
    )
    return Transition(done, (entry,))


def _park(state: InstanceState, entry: LogEntry, reason: str) -> Transition:
    return Transition(replace(state, status=SagaStatus.PARKED, error=reason), (entry,))
