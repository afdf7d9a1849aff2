"""The saga state machine: given an instance and an event, decide what happens next.

No I/O happens here. The coordinator loads the instance, asks :func:`advance` (or
:func:`begin`, :func:`expire`) for a :class:`Transition`, and persists it in one
transaction: the new instance state, the step-log entries, the commands to dispatch, and
what the shapes ask for (a child saga to start or to compensate, a wait to enter, a
signal consumed). The data lives in :mod:`saga.machine_state`; a parallel group's
decisions in :mod:`saga.machine_group`.

Message ids are derived from the saga, step and phase (:func:`command_message_id`), so
every attempt of one step's command carries the same id: a participant that already ran
it answers from its inbox instead of running it twice. A branch of a parallel group has
its own id (:func:`branch_message_id`); a child saga its own idempotency key
(:func:`child_idempotency_key`), so a parent starts at most one per position and attempt.

When a step's outcome is *unknown* (its attempts erred or timed out, so a late delivery
might still commit it), compensation starts with that step itself; the participant's
inbox tells whether there is anything to undo. When a participant *refused* the step, it
committed nothing, so compensation starts with the step before.

Compensation undoes positions in the reverse of the order they completed: a group's
branches all at once, then what came before; a wait has nothing to undo; a completed child
saga is asked to compensate (:class:`CompensateChild`) and its compensated end is the
position's compensation success. A wait is entered unless its ``when`` flag is present
and falsy; a signal applies only while the saga waits for it (:func:`judge_signal` tells
the coordinator whether to keep one for later or refuse it). A child that ends completed
gives its context as the position's result; compensated, it fails the position; aborted
by an operator, it parks the parent; parked, it has not ended, and the parent waits.

Positions read the saga's payload only through references (``when``, a child's payload):
pass ``payload=`` to :func:`begin` and :func:`advance` for definitions that use them.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from saga.definition import SagaDefinition, Step
from saga.errors import UsageError
from saga.machine_group import (
    COMPENSATING_BECAUSE,
    GroupDecision,
    Joined,
    Undone,
    abandon_branches,
    after_branch_reply,
    enter_group,
    start_group_undo,
    undo_passed_group,
    why_branch_reply_is_stale,
)
from saga.machine_state import (
    BranchOutcome,
    BranchState,
    ChildEnded,
    ChildLink,
    CompensateChild,
    Dispatch,
    EnterWait,
    Event,
    InstanceState,
    LogEntry,
    LogStatus,
    Outcome,
    Phase,
    SagaStatus,
    SignalEvent,
    SignalVerdict,
    StartChild,
    StepEvent,
    Transition,
    WaitExpired,
)
from saga.shapes import AwaitEvent, OnTimeout, Parallel, SubSaga, reads_payload, resolve_reference

__all__ = [
    "BranchOutcome",
    "BranchState",
    "ChildEnded",
    "ChildLink",
    "CompensateChild",
    "Dispatch",
    "EnterWait",
    "Event",
    "InstanceState",
    "LogEntry",
    "LogStatus",
    "Outcome",
    "Phase",
    "SagaStatus",
    "SignalEvent",
    "SignalVerdict",
    "StartChild",
    "StepEvent",
    "Transition",
    "WaitExpired",
    "advance",
    "begin",
    "branch_message_id",
    "child_idempotency_key",
    "command_message_id",
    "compensate_completed",
    "compensate_from",
    "compensation_cause",
    "expire",
    "judge_signal",
]

_MESSAGE_NAMESPACE = uuid.UUID("6f1d2c3e-58a7-4c4b-9d7e-2b9a1e0c5a11")
_Payload = Mapping[str, Any] | None


def command_message_id(saga_id: uuid.UUID, step_index: int, phase: Phase) -> uuid.UUID:
    """The one id every attempt of this step's command carries."""
    return uuid.uuid5(_MESSAGE_NAMESPACE, f"{saga_id}/{step_index}/{phase.value}")


def branch_message_id(saga_id: uuid.UUID, step_index: int, branch: int, phase: Phase) -> uuid.UUID:
    """The one id every attempt of this branch's command carries (never a step's id)."""
    return uuid.uuid5(_MESSAGE_NAMESPACE, f"{saga_id}/{step_index}/branch/{branch}/{phase.value}")


def child_idempotency_key(parent_id: uuid.UUID, step_index: int, attempt: int) -> str:
    """The idempotency key of the child saga a parent's position starts: one per
    position and attempt, however often the start is repeated."""
    return f"child-of:{parent_id}/{step_index}/{attempt}"


def begin(definition: SagaDefinition, *, payload: _Payload = None) -> Transition:
    """A new instance: running, its first position entered (its command dispatched)."""
    return _enter(definition, 0, {}, (), payload)


def advance(
    definition: SagaDefinition,
    state: InstanceState,
    event: Event,
    *,
    rng: random.Random | None = None,
    payload: _Payload = None,
) -> Transition:
    """Apply one reply, timeout, signal, wait timeout or child's end to the instance."""
    return _carry(state, _advance(definition, state, event, rng, payload))


def _advance(
    definition: SagaDefinition,
    state: InstanceState,
    event: Event,
    rng: random.Random | None,
    payload: _Payload,
) -> Transition:
    if isinstance(event, SignalEvent):
        return _on_signal(definition, state, event, payload)
    if isinstance(event, WaitExpired):
        return _on_wait_expired(definition, state, event, payload)
    if isinstance(event, ChildEnded):
        return _on_child_end(definition, state, event, payload)
    stale = _why_stale(definition, state, event)
    if stale is not None:
        return Transition(state, ignored=stale)
    position = definition.positions[event.step_index]
    if isinstance(position, Parallel):
        decided = after_branch_reply(position, state, event, rng)
        return _follow(definition, state, event.step_index, decided, payload)
    assert isinstance(position, Step)
    if event.attempt != state.step_attempt:
        # A settled answer to an earlier attempt (see _settles): it is the outcome of the
        # command the current attempt re-sent, so it stands as the current attempt's.
        event = replace(event, attempt=state.step_attempt)
    if event.phase is Phase.EXECUTE:
        return _after_execute(definition, state, position, event, rng, payload)
    return _after_compensate(definition, state, position, event, rng)


def expire(definition: SagaDefinition, state: InstanceState, reason: str) -> Transition:
    """The saga outran its overall deadline: undo what may have been done."""
    return _carry(state, _expire(definition, state, reason))


def _expire(definition: SagaDefinition, state: InstanceState, reason: str) -> Transition:
    if state.status not in (SagaStatus.RUNNING, SagaStatus.WAITING):
        return Transition(state, ignored=f"saga is {state.status.value}, not running")
    index = state.current_step
    position = definition.positions[index]
    entry = LogEntry(index, Phase.EXECUTE, LogStatus.ABORTED, state.step_attempt, error=reason)
    if isinstance(position, Parallel):
        given_up = replace(state, branches=abandon_branches(state))
        decided = start_group_undo(position, given_up, reason, (entry,))
        return _follow(definition, state, index, decided, None)
    if isinstance(position, AwaitEvent):
        return compensate_from(definition, state, index - 1, reason, entry)
    if position.retriable_only:
        return _park(state, entry, f"{reason}; step {position.name!r} is retriable-only")
    return compensate_from(definition, state, index, reason, entry)


def compensate_completed(
    definition: SagaDefinition, state: InstanceState, reason: str
) -> Transition:
    """Undo a completed saga's positions, latest first: a child saga whose parent undoes
    the position that started it. Its compensated end is that position's undoing."""
    if state.status is not SagaStatus.COMPLETED:
        return Transition(state, ignored=f"saga is {state.status.value}, not completed")
    undo = _compensate(definition, replace(state, error=reason), state.current_step, reason, ())
    return _carry(state, undo)


def judge_signal(
    definition: SagaDefinition, state: InstanceState, event: str
) -> tuple[SignalVerdict, str]:
    """What to do with a signal for ``event``, and why."""
    if state.status.finished:
        return SignalVerdict.REFUSE, f"the saga is already {state.status.value}"
    waits = [p for p in definition.positions if isinstance(p, AwaitEvent) and p.event == event]
    if not waits:
        return SignalVerdict.REFUSE, (
            f"{definition.name} v{definition.version} never waits for {event!r}"
        )
    if state.status is SagaStatus.WAITING and state.waiting_for == event:
        return SignalVerdict.ACCEPT, f"the saga is waiting for {event!r}"
    return SignalVerdict.KEEP, (
        f"the saga is not waiting for {event!r} yet; the signal is kept for its wait"
    )


# --- entering a position ---------------------------------------------------------------------


def _enter(
    definition: SagaDefinition,
    index: int,
    context: Mapping[str, Any],
    log: tuple[LogEntry, ...],
    payload: _Payload,
    *,
    attempt: int = 1,
    passed: Mapping[int, int] | None = None,
) -> Transition:
    """Start the position at ``index`` (past the last one: the saga is completed, at the
    last position and the ``attempt`` that finished it). ``passed`` is the saga's
    ``child_attempts``, for a child saga that cannot start and undoes what came before."""
    positions = definition.positions
    if index == len(positions):
        done = InstanceState(SagaStatus.COMPLETED, index - 1, attempt, context, None)
        return Transition(done, log)
    position = positions[index]
    if isinstance(position, Parallel):
        return enter_group(position, index, context, log)
    if isinstance(position, AwaitEvent):
        return _enter_wait(definition, position, index, context, log, payload, passed)
    if isinstance(position, SubSaga):
        return _start_child(definition, position, index, context, log, payload, passed)
    nxt = InstanceState(SagaStatus.RUNNING, index, 1, context, None)
    dispatched = LogEntry(index, Phase.EXECUTE, LogStatus.DISPATCHED, 1)
    return Transition(nxt, (*log, dispatched), (Dispatch(index, Phase.EXECUTE, 1),))


def _require_payload(definition: SagaDefinition, reference: str, payload: _Payload) -> None:
    if payload is None and reads_payload(reference):
        raise UsageError(
            f"{definition.name} v{definition.version} reads {reference}: pass the saga's "
            "payload to saga.machine.begin/advance"
        )


def _enter_wait(
    definition: SagaDefinition,
    wait: AwaitEvent,
    index: int,
    context: Mapping[str, Any],
    log: tuple[LogEntry, ...],
    payload: _Payload,
    passed: Mapping[int, int] | None,
) -> Transition:
    if wait.when is not None:
        _require_payload(definition, wait.when, payload)
        found, flag = resolve_reference(wait.when, payload or {}, context)
        if found and not flag:
            skipped = LogEntry(
                index, Phase.EXECUTE, LogStatus.SKIPPED, 1, error=f"{wait.when} is {flag!r}"
            )
            return _enter(definition, index + 1, context, (*log, skipped), payload, passed=passed)
    state = InstanceState(SagaStatus.WAITING, index, 1, context, None, waiting_for=wait.event)
    entered = LogEntry(index, Phase.EXECUTE, LogStatus.WAITING, 1)
    return Transition(state, (*log, entered), wait=EnterWait(index, wait.event, wait.timeout))


def _start_child(
    definition: SagaDefinition,
    sub: SubSaga,
    index: int,
    context: Mapping[str, Any],
    log: tuple[LogEntry, ...],
    payload: _Payload,
    passed: Mapping[int, int] | None,
) -> Transition:
    for reference in sub.payload.values():
        _require_payload(definition, reference, payload)
    child_payload, missing = sub.child_payload(payload or {}, context)
    if missing:
        # Nothing started: like a refusal, undo what came before.
        why = f"the child saga's payload refers to what is not there: {', '.join(missing)}"
        failed = LogEntry(index, Phase.EXECUTE, LogStatus.FAILED, 1, error=why)
        here = InstanceState(
            SagaStatus.RUNNING, index, 1, context, None, child_attempts=passed or {}
        )
        return _compensate(
            definition, here, index - 1, f"step {sub.name!r} failed: {why}", (*log, failed)
        )
    state = InstanceState(
        SagaStatus.RUNNING, index, 1, context, None, child=ChildLink(1, Phase.EXECUTE)
    )
    started = LogEntry(index, Phase.EXECUTE, LogStatus.DISPATCHED, 1)
    command = StartChild(index, 1, sub.definition, child_payload)
    return Transition(state, (*log, started), start_child=command)


# --- plain steps -------------------------------------------------------------------------------


def _why_stale(definition: SagaDefinition, state: InstanceState, event: StepEvent) -> str | None:
    if not state.status.in_flight:
        return f"saga is already {state.status.value}"
    if not 0 <= event.step_index < len(definition.positions):
        return f"step {event.step_index} does not exist in {definition.name} v{definition.version}"
    position = definition.positions[event.step_index]
    if event.step_index == state.current_step and isinstance(position, Parallel):
        return why_branch_reply_is_stale(position, state, event)
    if event.phase is not state.phase or event.step_index != state.current_step:
        return (
            f"reply for step {event.step_index} ({event.phase.value}) but the saga is at "
            f"step {state.current_step} ({state.phase.value})"
        )
    if not isinstance(position, Step):
        return f"step {event.step_index} ({position.name!r}) takes no command replies"
    if event.branch is not None:
        return f"step {event.step_index} is a plain step; the reply names branch {event.branch}"
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
    payload: _Payload,
) -> Transition:
    index, attempt = event.step_index, event.attempt
    if event.outcome is Outcome.SUCCEEDED:
        done = LogEntry(index, Phase.EXECUTE, LogStatus.SUCCEEDED, attempt, response=event.result)
        context = {**state.context, **event.result}
        return _enter(
            definition,
            index + 1,
            context,
            (done,),
            payload,
            attempt=attempt,
            passed=state.child_attempts,
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
        f"{COMPENSATING_BECAUSE}{state.error})",
    )


def compensation_cause(error: str | None) -> str | None:
    """Why a saga parked in its compensation was compensating in the first place: the
    reason its compensation carries on with when an operator resumes it."""
    if error is None or not error.endswith(")") or COMPENSATING_BECAUSE not in error:
        return error
    return error.split(COMPENSATING_BECAUSE, 1)[1][:-1]


def _retry(state: InstanceState, entry: LogEntry, delay: float, phase: Phase) -> Transition:
    nxt = replace(state, step_attempt=state.step_attempt + 1)
    dispatched = LogEntry(state.current_step, phase, LogStatus.DISPATCHED, nxt.step_attempt)
    return Transition(
        nxt, (entry, dispatched), (Dispatch(state.current_step, phase, nxt.step_attempt, delay),)
    )


# --- waits, signals and child sagas ------------------------------------------------------------


def _on_signal(
    definition: SagaDefinition, state: InstanceState, event: SignalEvent, payload: _Payload
) -> Transition:
    if state.status is not SagaStatus.WAITING or state.waiting_for != event.event:
        now = (
            f"waits for {state.waiting_for!r}"
            if state.status is SagaStatus.WAITING
            else f"is {state.status.value}"
        )
        return Transition(state, ignored=f"not waiting for {event.event!r}: the saga {now}")
    index = state.current_step
    wait = definition.positions[index]
    assert isinstance(wait, AwaitEvent)
    received = LogEntry(
        index, Phase.EXECUTE, LogStatus.SUCCEEDED, state.step_attempt, response=event.payload
    )
    context = {**state.context, wait.name: dict(event.payload)}
    entered = _enter(
        definition, index + 1, context, (received,), payload, passed=state.child_attempts
    )
    return replace(entered, consumed_signal=event.signal_id)


def _on_wait_expired(
    definition: SagaDefinition, state: InstanceState, event: WaitExpired, payload: _Payload
) -> Transition:
    if state.status is not SagaStatus.WAITING or event.step_index != state.current_step:
        return Transition(
            state,
            ignored=f"the saga is not waiting at step {event.step_index} "
            f"(it is {state.status.value} at step {state.current_step})",
        )
    wait = definition.positions[event.step_index]
    assert isinstance(wait, AwaitEvent)
    why = f"no {wait.event!r} signal within {wait.timeout:g} s"
    entry = LogEntry(
        event.step_index, Phase.EXECUTE, LogStatus.TIMED_OUT, state.step_attempt, error=why
    )
    if wait.on_timeout is OnTimeout.CONTINUE:
        return _enter(
            definition,
            event.step_index + 1,
            state.context,
            (entry,),
            payload,
            passed=state.child_attempts,
        )
    return compensate_from(
        definition, state, event.step_index - 1, f"wait {wait.name!r}: {why}", entry
    )


def _on_child_end(
    definition: SagaDefinition, state: InstanceState, event: ChildEnded, payload: _Payload
) -> Transition:
    link = state.child
    if not state.status.in_flight or link is None or event.step_index != state.current_step:
        return Transition(state, ignored=f"no child saga is awaited at step {event.step_index}")
    if event.attempt != link.attempt:
        return Transition(
            state,
            ignored=f"child of attempt {event.attempt} but the step is at attempt {link.attempt}",
        )
    sub = definition.positions[event.step_index]
    assert isinstance(sub, SubSaga)
    index, attempt, phase = event.step_index, link.attempt, link.phase
    said = f": {event.error}" if event.error else ""
    if event.status is SagaStatus.ABORTED:
        entry = LogEntry(index, phase, LogStatus.FAILED, attempt, error=f"child saga aborted{said}")
        why = (
            f"the child saga of step {sub.name!r} was aborted by an operator; what it did "
            "is theirs to judge"
        )
        if phase is Phase.COMPENSATE:
            # Kept so that an operator resuming the compensation resumes it for its cause.
            why = f"{why}{COMPENSATING_BECAUSE}{state.error})"
        return _park(state, entry, why)
    if phase is Phase.EXECUTE and event.status is SagaStatus.COMPLETED:
        done = LogEntry(index, phase, LogStatus.SUCCEEDED, attempt, response=event.context)
        context = {**state.context, sub.name: dict(event.context)}
        passed = dict(state.child_attempts)
        if attempt != 1:
            passed[index] = attempt
        entered = _enter(
            definition, index + 1, context, (done,), payload, attempt=attempt, passed=passed
        )
        return entered if attempt == 1 else _with_child_attempt(entered, index, attempt)
    if phase is Phase.EXECUTE and event.status is SagaStatus.COMPENSATED:
        # The child undid itself: nothing of this position is left to undo.
        failed = LogEntry(
            index, phase, LogStatus.FAILED, attempt, error=f"child saga compensated{said}"
        )
        why = f"the child saga of step {sub.name!r} was compensated{said}"
        return compensate_from(definition, state, index - 1, why, failed)
    if phase is Phase.COMPENSATE and event.status is SagaStatus.COMPENSATED:
        done = LogEntry(index, phase, LogStatus.SUCCEEDED, attempt, response=event.context)
        return compensate_from(definition, state, index - 1, state.error, done)
    awaited = "end" if phase is Phase.EXECUTE else "compensation"
    return Transition(
        state,
        ignored=f"the child saga is {event.status.value}: its {awaited} has not ended",
    )


# --- undoing ---------------------------------------------------------------------------------


def compensate_from(
    definition: SagaDefinition,
    state: InstanceState,
    start: int,
    reason: str | None,
    entry: LogEntry,
) -> Transition:
    """Compensate the latest position at or below ``start`` that has something to undo;
    with none left the saga is compensated."""
    return _carry(state, _compensate(definition, state, start, reason, (entry,)))


def _compensate(
    definition: SagaDefinition,
    state: InstanceState,
    start: int,
    reason: str | None,
    log: tuple[LogEntry, ...],
) -> Transition:
    for index in range(start, -1, -1):
        position = definition.positions[index]
        if isinstance(position, Parallel):
            decided = undo_passed_group(position, index, state.context, reason, log)
            if isinstance(decided, Transition):
                return decided
            continue
        if isinstance(position, SubSaga):
            attempt = _child_attempt(state, index)
            if attempt == 0:
                continue  # skipped by an operator: no child did anything to undo
            nxt = InstanceState(
                SagaStatus.COMPENSATING,
                index,
                attempt,
                state.context,
                reason,
                child=ChildLink(attempt, Phase.COMPENSATE),
            )
            asked = LogEntry(index, Phase.COMPENSATE, LogStatus.DISPATCHED, attempt)
            return Transition(nxt, (*log, asked), compensate_child=CompensateChild(index, attempt))
        if isinstance(position, Step) and position.compensatable:
            nxt = InstanceState(SagaStatus.COMPENSATING, index, 1, state.context, reason)
            return Transition(
                nxt,
                (*log, LogEntry(index, Phase.COMPENSATE, LogStatus.DISPATCHED, 1)),
                (Dispatch(index, Phase.COMPENSATE, 1),),
            )
    done = InstanceState(
        SagaStatus.COMPENSATED, max(start, 0), state.step_attempt, state.context, reason
    )
    return Transition(done, log)


def _child_attempt(state: InstanceState, index: int) -> int:
    """The attempt whose child saga the position at ``index`` is undone through: the one
    the saga is at, or the one that completed it (0: an operator skipped it)."""
    if index == state.current_step and state.child is not None:
        return state.child.attempt
    return state.child_attempts.get(index, 1)


def _with_child_attempt(transition: Transition, index: int, attempt: int) -> Transition:
    attempts = {**transition.state.child_attempts, index: attempt}
    return replace(transition, state=replace(transition.state, child_attempts=attempts))


def _carry(before: InstanceState, transition: Transition) -> Transition:
    """Keep which child completed each position passed: positions build their states
    afresh, and only the undoing, possibly much later, reads it."""
    if not before.child_attempts:
        return transition
    attempts = {**before.child_attempts, **transition.state.child_attempts}
    return replace(transition, state=replace(transition.state, child_attempts=attempts))


def _follow(
    definition: SagaDefinition,
    state: InstanceState,
    index: int,
    decided: GroupDecision,
    payload: _Payload,
) -> Transition:
    """Act on what the group could not decide alone."""
    if isinstance(decided, Joined):
        return _enter(
            definition,
            index + 1,
            decided.context,
            decided.log,
            payload,
            passed=state.child_attempts,
        )
    if isinstance(decided, Undone):
        return _compensate(definition, state, index - 1, decided.reason, decided.log)
    return decided


def _park(state: InstanceState, entry: LogEntry, reason: str) -> Transition:
    return Transition(replace(state, status=SagaStatus.PARKED, error=reason), (entry,))
