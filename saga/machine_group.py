"""The state machine's decisions for a parallel group (:class:`~saga.shapes.Parallel`).

Pure, like :mod:`saga.machine`, which calls it and acts on what it cannot decide alone:
:class:`Joined` (every branch succeeded: enter the next position) and :class:`Undone`
(nothing of the group is left to undo: compensate the positions before it).

- Entering the group dispatches every branch at once (one transition).
- A branch's reply advances only that branch; erring or timed-out attempts are retried
  per the branch's policy while the group is healthy.
- The first branch that fails (refused, or out of attempts) makes the group *failing*:
  the saga stays running with its error set, nothing new starts (an erring branch is not
  retried but counted unknown), and the branches still in flight are awaited.
- When every branch has an outcome, every branch that succeeded or whose outcome is
  unknown is compensated, all at once; a success arriving late for an unknown branch is
  recorded (its compensation is already out, and the participant's inbox orders the two).
- When every compensation succeeded the group is undone. A compensation out of attempts
  parks the saga, as a step's does.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from saga.machine_state import (
    BranchOutcome,
    BranchState,
    Dispatch,
    InstanceState,
    LogEntry,
    LogStatus,
    Outcome,
    Phase,
    SagaStatus,
    StepEvent,
    Transition,
)
from saga.shapes import Parallel

COMPENSATING_BECAUSE = " (compensating because "
"""Joins a parked compensation's own failure to the reason it was compensating."""

_PENDING, _SUCCEEDED = BranchOutcome.PENDING, BranchOutcome.SUCCEEDED
_FAILED, _UNKNOWN = BranchOutcome.FAILED, BranchOutcome.UNKNOWN


@dataclass(frozen=True, slots=True)
class Joined:
    """Every branch succeeded: the saga goes on with ``context``."""

    context: Mapping[str, Any]
    log: tuple[LogEntry, ...]


@dataclass(frozen=True, slots=True)
class Undone:
    """Nothing of the group is (left) to undo: compensate what came before it."""

    log: tuple[LogEntry, ...]
    reason: str | None


GroupDecision = Transition | Joined | Undone


def enter_group(
    group: Parallel, index: int, context: Mapping[str, Any], log: tuple[LogEntry, ...]
) -> Transition:
    """Dispatch every branch's command in one transition."""
    count = len(group.branches)
    state = InstanceState(
        SagaStatus.RUNNING, index, 1, context, None, branches=(BranchState(),) * count
    )
    dispatched = tuple(
        LogEntry(index, Phase.EXECUTE, LogStatus.DISPATCHED, 1, branch=b) for b in range(count)
    )
    dispatches = tuple(Dispatch(index, Phase.EXECUTE, 1, branch=b) for b in range(count))
    return Transition(state, log + dispatched, dispatches)


def why_branch_reply_is_stale(
    group: Parallel, state: InstanceState, event: StepEvent
) -> str | None:
    """Why a reply for a branch of the group the saga is at changes nothing, if it does not."""
    branch = event.branch
    if branch is None or not 0 <= branch < len(group.branches):
        return (
            f"step {event.step_index} is a parallel group of {len(group.branches)} "
            f"branches; the reply names branch {branch}"
        )
    if len(state.branches) != len(group.branches):
        return f"the saga holds no branch state for the group at step {event.step_index}"
    current = state.branches[branch]
    if event.phase is Phase.EXECUTE:
        if state.status is SagaStatus.COMPENSATING:
            if current.outcome is _UNKNOWN and event.outcome is Outcome.SUCCEEDED:
                return None  # a late success: recorded
            return f"branch {branch} is {current.outcome.value} and the group is compensating"
        if current.outcome is not _PENDING:
            return f"branch {branch} already {current.outcome.value}"
        return _attempt_problem(branch, current.attempt, event, (Outcome.SUCCEEDED, Outcome.FAILED))
    if state.status is not SagaStatus.COMPENSATING or current.compensation is not _PENDING:
        state_of = "not being compensated" if current.compensation is None else "undone"
        if current.compensation is _PENDING:
            state_of = "not yet being compensated"
        return f"branch {branch}'s compensation: the branch is {state_of}"
    return _attempt_problem(branch, current.compensation_attempt, event, (Outcome.SUCCEEDED,))


def _attempt_problem(
    branch: int, attempt: int, event: StepEvent, settled: tuple[Outcome, ...]
) -> str | None:
    # As for a step (saga.machine._settles): every attempt is one command, answered once.
    if event.attempt == attempt or (event.attempt < attempt and event.outcome in settled):
        return None
    return f"reply for attempt {event.attempt} but branch {branch} is at attempt {attempt}"


def after_branch_reply(
    group: Parallel, state: InstanceState, event: StepEvent, rng: random.Random | None
) -> GroupDecision:
    """Apply a reply ``why_stale`` accepted."""
    assert event.branch is not None
    if event.phase is Phase.COMPENSATE:
        return _after_compensation(group, state, event, rng)
    if state.status is SagaStatus.COMPENSATING:
        return _late_success(group, state, event)
    return _after_execution(group, state, event, rng)


def _after_execution(
    group: Parallel, state: InstanceState, event: StepEvent, rng: random.Random | None
) -> GroupDecision:
    branch = event.branch
    assert branch is not None
    step = group.branches[branch]
    current = state.branches[branch]
    attempt, index = current.attempt, event.step_index
    failing = any(b.outcome in (_FAILED, _UNKNOWN) for b in state.branches)
    reason = event.reason or event.outcome.value
    context, error = state.context, state.error

    if event.outcome is Outcome.SUCCEEDED:
        entry = LogEntry(
            index, Phase.EXECUTE, LogStatus.SUCCEEDED, attempt, response=event.result, branch=branch
        )
        context = {**context, step.name: dict(event.result)}
        settled = replace(current, outcome=_SUCCEEDED)
    elif event.outcome is Outcome.FAILED:
        entry = LogEntry(
            index, Phase.EXECUTE, LogStatus.FAILED, attempt, error=reason, branch=branch
        )
        error = error or f"branch {step.name!r} of group {group.name!r} failed: {reason}"
        settled = replace(current, outcome=_FAILED)
    elif not failing and attempt < step.retry.max_attempts:
        return _retry_branch(state, event, step.retry.delay_before(attempt + 1, rng=rng))
    else:
        why = (
            f"not retried, the group is failing: {reason}"
            if failing and attempt < step.retry.max_attempts
            else f"out of attempts ({attempt}): {reason}"
        )
        entry = LogEntry(index, Phase.EXECUTE, LogStatus.FAILED, attempt, error=why, branch=branch)
        error = error or f"branch {step.name!r} of group {group.name!r} {why}"
        settled = replace(current, outcome=_UNKNOWN)

    branches = _with(state.branches, branch, settled)
    nxt = replace(state, context=context, error=error, branches=branches)
    if any(b.outcome is _PENDING for b in branches):
        return Transition(nxt, (entry,))
    if all(b.outcome is _SUCCEEDED for b in branches):
        return Joined(context, (entry,))
    return start_group_undo(group, nxt, error, (entry,))


def _retry_branch(state: InstanceState, event: StepEvent, delay: float) -> Transition:
    branch, index = event.branch, event.step_index
    assert branch is not None
    current = state.branches[branch]
    status = LogStatus.TIMED_OUT if event.outcome is Outcome.TIMED_OUT else LogStatus.RETRIED
    again = current.attempt + 1
    log = (
        LogEntry(
            index,
            Phase.EXECUTE,
            status,
            current.attempt,
            error=event.reason or event.outcome.value,
            branch=branch,
        ),
        LogEntry(index, Phase.EXECUTE, LogStatus.DISPATCHED, again, branch=branch),
    )
    nxt = replace(state, branches=_with(state.branches, branch, replace(current, attempt=again)))
    return Transition(nxt, log, (Dispatch(index, Phase.EXECUTE, again, delay, branch=branch),))


def _late_success(group: Parallel, state: InstanceState, event: StepEvent) -> Transition:
    branch = event.branch
    assert branch is not None
    current = state.branches[branch]
    entry = LogEntry(
        event.step_index,
        Phase.EXECUTE,
        LogStatus.SUCCEEDED,
        current.attempt,
        response=event.result,
        branch=branch,
    )
    nxt = replace(
        state,
        context={**state.context, group.branches[branch].name: dict(event.result)},
        branches=_with(state.branches, branch, replace(current, outcome=_SUCCEEDED)),
    )
    return Transition(nxt, (entry,))


def abandon_branches(state: InstanceState) -> tuple[BranchState, ...]:
    """The branches when the group is given up (the saga expired): any still in flight
    may yet commit."""
    return tuple(
        replace(b, outcome=_UNKNOWN) if b.outcome is _PENDING else b for b in state.branches
    )


def start_group_undo(
    group: Parallel,
    state: InstanceState,
    reason: str | None,
    log: tuple[LogEntry, ...],
) -> Transition | Undone:
    """Compensate, all at once, every branch that may have committed."""
    index = state.current_step
    to_undo = [b for b, branch in enumerate(state.branches) if branch.may_have_committed]
    for b in to_undo:
        if not group.branches[b].compensatable:
            why = (
                f"{reason}; branch {group.branches[b].name!r} of the final group "
                f"{group.name!r} may have committed and cannot be undone"
            )
            return Transition(replace(state, status=SagaStatus.PARKED, error=why), log)
    if not to_undo:
        return Undone(log, reason)
    branches = tuple(
        replace(branch, compensation_attempt=1, compensation=_PENDING) if b in to_undo else branch
        for b, branch in enumerate(state.branches)
    )
    nxt = InstanceState(SagaStatus.COMPENSATING, index, 1, state.context, reason, branches=branches)
    dispatched = tuple(
        LogEntry(index, Phase.COMPENSATE, LogStatus.DISPATCHED, 1, branch=b) for b in to_undo
    )
    dispatches = tuple(Dispatch(index, Phase.COMPENSATE, 1, branch=b) for b in to_undo)
    return Transition(nxt, log + dispatched, dispatches)


def undo_passed_group(
    group: Parallel,
    index: int,
    context: Mapping[str, Any],
    reason: str | None,
    log: tuple[LogEntry, ...],
) -> Transition | Undone:
    """Compensate a group the saga went past: every branch succeeded."""
    passed = InstanceState(
        SagaStatus.COMPENSATING,
        index,
        1,
        context,
        reason,
        branches=(BranchState(outcome=_SUCCEEDED),) * len(group.branches),
    )
    return start_group_undo(group, passed, reason, log)


def _after_compensation(
    group: Parallel, state: InstanceState, event: StepEvent, rng: random.Random | None
) -> GroupDecision:
    branch = event.branch
    assert branch is not None
    step = group.branches[branch]
    current = state.branches[branch]
    attempt, index = current.compensation_attempt, event.step_index
    if event.outcome is Outcome.SUCCEEDED:
        entry = LogEntry(
            index,
            Phase.COMPENSATE,
            LogStatus.SUCCEEDED,
            attempt,
            response=event.result,
            branch=branch,
        )
        branches = _with(state.branches, branch, replace(current, compensation=_SUCCEEDED))
        if any(b.compensation is _PENDING for b in branches):
            return Transition(replace(state, branches=branches), (entry,))
        return Undone((entry,), state.error)

    reason = event.reason or event.outcome.value
    if attempt < step.compensation_retry.max_attempts:
        status = LogStatus.TIMED_OUT if event.outcome is Outcome.TIMED_OUT else LogStatus.RETRIED
        again = attempt + 1
        delay = step.compensation_retry.delay_before(again, rng=rng)
        log = (
            LogEntry(index, Phase.COMPENSATE, status, attempt, error=reason, branch=branch),
            LogEntry(index, Phase.COMPENSATE, LogStatus.DISPATCHED, again, branch=branch),
        )
        retried = replace(current, compensation_attempt=again)
        nxt = replace(state, branches=_with(state.branches, branch, retried))
        return Transition(nxt, log, (Dispatch(index, Phase.COMPENSATE, again, delay, branch),))
    failed = LogEntry(
        index, Phase.COMPENSATE, LogStatus.FAILED, attempt, error=reason, branch=branch
    )
    why = (
        f"compensation of branch {step.name!r} of group {group.name!r} failed after "
        f"{attempt} attempts: {reason}{COMPENSATING_BECAUSE}{state.error})"
    )
    return Transition(replace(state, status=SagaStatus.PARKED, error=why), (failed,))


def _with(
    branches: tuple[BranchState, ...], index: int, branch: BranchState
) -> tuple[BranchState, ...]:
    return (*branches[:index], branch, *branches[index + 1 :])
