"""Operators' actions at a wait and at a parallel group, as pure decisions."""

from __future__ import annotations

import pytest

from saga.definition import SagaDefinition, Step
from saga.machine import (
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
    advance,
)
from saga.operator import shape_decisions
from saga.operator.decisions import Action, ActionRefused, Operator
from saga.shapes import AwaitEvent, Parallel

EXECUTE, COMPENSATE = Phase.EXECUTE, Phase.COMPENSATE
PENDING = BranchOutcome.PENDING
ALICE = Operator("alice", "reviewed on paper")


def step(name: str, journey: str = "care") -> Step:
    return Step(name=name, journey=journey, action=name, compensation=f"undo_{name}")


RESERVE, AUTHORIZE, AWARD = step("reserve"), step("authorize", "plan"), step("award", "game")
CONFIRM = Step(name="confirm", journey="care", action="confirm")
REVIEW = AwaitEvent("review", "claim_reviewed", 60.0)
SHAPED = SagaDefinition(
    "shaped", 1, [RESERVE, REVIEW, Parallel("hold", [AUTHORIZE, AWARD]), CONFIRM]
)


def at(
    index: int, status: SagaStatus = SagaStatus.RUNNING, waiting_for: str | None = None
) -> InstanceState:
    return InstanceState(status, index, 1, {"reserve_id": "r1"}, None, waiting_for=waiting_for)


WAITING = at(1, SagaStatus.WAITING, waiting_for="claim_reviewed")


def decide(
    state: InstanceState,
    action: Action,
    *,
    step_name: str | None = None,
    result: dict[str, object] | None = None,
) -> Transition:
    return shape_decisions.decide(
        SHAPED, state, EXECUTE, action, ALICE, step_name=step_name, result=result, payload={}
    )


def test_skip_of_a_wait_goes_on_as_if_signalled_with_the_result() -> None:
    decided = decide(WAITING, Action.SKIP, step_name="review", result={"approved": True})
    assert decided.state.status is SagaStatus.RUNNING
    assert decided.state.current_step == 2
    assert decided.state.context["review"] == {"approved": True}
    assert decided.state.waiting_for is None
    assert decided.log[0] == LogEntry(
        1,
        EXECUTE,
        LogStatus.SKIPPED,
        1,
        response={"approved": True},
        error="skipped by alice: reviewed on paper",
    )
    # The group after the wait starts as it would have: both branches at once.
    assert [d.branch for d in decided.dispatches] == [0, 1]
    assert decided.consumed_signal is None  # no stored signal is consumed by a skip


def test_skip_of_a_wait_names_the_current_position_or_its_index() -> None:
    assert decide(WAITING, Action.SKIP, step_name="1").state.context["review"] == {}
    with pytest.raises(ActionRefused, match="at 'review' \\(execute\\), not 'confirm'"):
        decide(WAITING, Action.SKIP, step_name="confirm")
    with pytest.raises(ActionRefused, match="--step"):
        decide(WAITING, Action.SKIP)


def test_compensate_of_a_waiting_saga_undoes_the_positions_before_the_wait() -> None:
    decided = decide(WAITING, Action.COMPENSATE)
    assert decided.state.status is SagaStatus.COMPENSATING
    assert decided.state.current_step == 0
    assert decided.dispatches == (Dispatch(0, COMPENSATE, 1),)
    assert decided.log[0] == LogEntry(
        1,
        EXECUTE,
        LogStatus.ABORTED,
        1,
        error="compensation requested by alice: reviewed on paper",
    )


def test_compensate_of_a_wait_with_nothing_before_it_ends_compensated() -> None:
    first = SagaDefinition("wait_first", 1, [REVIEW, CONFIRM])
    state = InstanceState(SagaStatus.WAITING, 0, 1, {}, None, waiting_for="claim_reviewed")
    decided = shape_decisions.decide(first, state, EXECUTE, Action.COMPENSATE, ALICE)
    assert decided.state.status is SagaStatus.COMPENSATED
    assert decided.dispatches == ()


def test_retry_of_a_wait_is_refused_with_what_to_do_instead() -> None:
    with pytest.raises(ActionRefused, match="saga signal"):
        decide(WAITING, Action.RETRY)


@pytest.mark.parametrize("action", [Action.RETRY, Action.COMPENSATE, Action.SKIP])
def test_at_a_group_only_abort_applies(action: Action) -> None:
    group = at(2)
    with pytest.raises(
        ActionRefused, match="parallel group 'hold' \\(branches authorize, award\\)"
    ):
        decide(group, action, step_name="hold")


def test_skip_of_a_plain_step_enters_the_wait_after_it() -> None:
    decided = decide(at(0), Action.SKIP, step_name="reserve", result={"reserve_id": "hand"})
    assert decided.state.status is SagaStatus.WAITING
    assert decided.state.waiting_for == "claim_reviewed"
    assert decided.state.context["reserve_id"] == "hand"
    assert decided.log[0].status is LogStatus.SKIPPED
    assert decided.wait is not None


def test_retry_and_compensate_of_a_plain_step_act_as_on_a_straight_line() -> None:
    retried = decide(at(0), Action.RETRY)
    assert retried.dispatches == (Dispatch(0, EXECUTE, 2),)
    compensated = decide(at(0), Action.COMPENSATE)
    assert compensated.dispatches == (Dispatch(0, COMPENSATE, 1),)


def test_a_finished_saga_refuses_every_action() -> None:
    done = at(3, SagaStatus.COMPLETED)
    with pytest.raises(ActionRefused, match="completed"):
        decide(done, Action.RETRY)


GROUPED = SagaDefinition("grouped", 1, [RESERVE, Parallel("hold", [AUTHORIZE, AWARD]), CONFIRM])
PARKED_IN_GROUP = InstanceState(
    SagaStatus.PARKED,
    1,
    1,
    {"reserve_id": "r1"},
    "compensation of branch 'authorize' of group 'hold' failed after 2 attempts: boom"
    " (compensating because step 'award' failed: refused)",
    branches=(
        BranchState(outcome=BranchOutcome.SUCCEEDED, compensation_attempt=2, compensation=PENDING),
        BranchState(outcome=BranchOutcome.FAILED),
    ),
)


@pytest.mark.parametrize("action", [Action.RETRY, Action.COMPENSATE])
def test_a_group_parked_in_its_compensation_resumes_it(action: Action) -> None:
    decided = shape_decisions.decide(GROUPED, PARKED_IN_GROUP, COMPENSATE, action, ALICE)
    assert decided.state.status is SagaStatus.COMPENSATING
    assert decided.state.error == "step 'award' failed: refused"
    assert decided.dispatches == (Dispatch(1, COMPENSATE, 3, branch=0),)
    assert [(e.status, e.attempt, e.branch) for e in decided.log] == [
        (LogStatus.RETRIED, 2, 0),
        (LogStatus.DISPATCHED, 3, 0),
    ]
    # Its success undoes the group; the saga compensates on with the step before it.
    undone = advance(
        GROUPED,
        decided.state,
        StepEvent(1, COMPENSATE, 3, Outcome.SUCCEEDED, {}, branch=0),
    )
    assert undone.dispatches == (Dispatch(0, COMPENSATE, 1),)


def test_skip_at_a_parked_group_is_refused() -> None:
    with pytest.raises(ActionRefused, match="only to resume its compensation"):
        shape_decisions.decide(
            GROUPED, PARKED_IN_GROUP, COMPENSATE, Action.SKIP, ALICE, step_name="hold"
        )
