"""Operators' actions at a child saga's position, as pure decisions, and what the state
machine then does with the child an operator started again or skipped."""

from __future__ import annotations

import uuid

import pytest

from saga.definition import SagaDefinition, Step
from saga.machine import (
    ChildEnded,
    ChildLink,
    CompensateChild,
    Dispatch,
    InstanceState,
    LogEntry,
    LogStatus,
    Outcome,
    Phase,
    SagaStatus,
    StartChild,
    StepEvent,
    Transition,
    advance,
    compensation_cause,
    expire,
)
from saga.operator import child_decisions, decisions, shape_decisions
from saga.operator.child_decisions import ChildView
from saga.operator.decisions import Action, ActionRefused, Operator
from saga.shapes import SubSaga

EXECUTE, COMPENSATE = Phase.EXECUTE, Phase.COMPENSATE
ALICE = Operator("alice", "plan service fixed")
CHILD_ID = uuid.UUID("0c3f6f1d-2b11-4a57-9a8e-5b0e9f4c2d1a")
CHILD_KEY = ("credit_child", 1)


def step(name: str, journey: str = "care") -> Step:
    return Step(name=name, journey=journey, action=name, compensation=f"undo_{name}")


RESERVE, AUTHORIZE = step("reserve"), step("authorize", "plan")
CONFIRM = Step(name="confirm", journey="care", action="confirm")
CREDIT = SubSaga("credit", CHILD_KEY, payload={"amount": "payload.amount"})
PARENT = SagaDefinition("parent", 1, [RESERVE, CREDIT, AUTHORIZE, CONFIRM])
PAYLOAD = {"amount": 30}


def at_child(
    status: SagaStatus = SagaStatus.RUNNING, phase: Phase = EXECUTE, attempt: int = 1
) -> InstanceState:
    return InstanceState(
        status, 1, attempt, {"reserve_id": "r1"}, None, child=ChildLink(attempt, phase)
    )


def child(status: SagaStatus | None, **context: object) -> ChildView:
    return ChildView(CHILD_ID, status, context)


def decide(
    state: InstanceState,
    action: Action,
    view: ChildView | None,
    *,
    step_name: str | None = None,
    result: dict[str, object] | None = None,
) -> Transition:
    return shape_decisions.decide(
        PARENT,
        state,
        state.phase,
        action,
        ALICE,
        step_name=step_name,
        result=result,
        payload=PAYLOAD,
        child=view,
    )


def parked_by_aborted_child(phase: Phase = EXECUTE) -> InstanceState:
    """As the machine leaves a parent whose child an operator aborted."""
    if phase is EXECUTE:
        state = at_child()
    else:
        state = InstanceState(
            SagaStatus.COMPENSATING,
            1,
            1,
            {"reserve_id": "r1"},
            "step 'authorize' failed: not covered",
            child=ChildLink(1, COMPENSATE),
        )
    parked = advance(PARENT, state, ChildEnded(1, 1, SagaStatus.ABORTED), payload=PAYLOAD)
    assert parked.state.status is SagaStatus.PARKED
    return parked.state


def authorize_refused(state: InstanceState) -> Transition:
    assert state.current_step == 2
    event = StepEvent(2, EXECUTE, 1, Outcome.FAILED, reason="not covered")
    return advance(PARENT, state, event, payload=PAYLOAD)


# --- a parent parked because its child was aborted --------------------------------------------


def test_retry_starts_the_child_again_as_the_next_attempt() -> None:
    decided = decide(parked_by_aborted_child(), Action.RETRY, child(SagaStatus.ABORTED))
    assert decided.state.status is SagaStatus.RUNNING
    assert decided.state.error is None
    assert (decided.state.step_attempt, decided.state.child) == (2, ChildLink(2, EXECUTE))
    assert decided.start_child == StartChild(1, 2, CHILD_KEY, {"amount": 30})
    assert decided.log == (
        LogEntry(1, EXECUTE, LogStatus.RETRIED, 1, error="retried by alice: plan service fixed"),
        LogEntry(1, EXECUTE, LogStatus.DISPATCHED, 2),
    )


def test_undoing_later_asks_the_child_that_completed_the_position() -> None:
    retried = decide(parked_by_aborted_child(), Action.RETRY, child(SagaStatus.ABORTED))
    ended = ChildEnded(1, 2, SagaStatus.COMPLETED, {"credit_id": "c2"})
    passed = advance(PARENT, retried.state, ended, payload=PAYLOAD)
    assert passed.state.current_step == 2
    assert passed.state.context["credit"] == {"credit_id": "c2"}
    assert passed.state.child_attempts == {1: 2}

    undo = authorize_refused(passed.state)
    assert undo.compensate_child == CompensateChild(1, 2)
    assert undo.state.child == ChildLink(2, COMPENSATE)
    # The second child's compensated end is the position's undoing; the first's is stale.
    stale = advance(PARENT, undo.state, ChildEnded(1, 1, SagaStatus.COMPENSATED), payload=PAYLOAD)
    assert stale.ignored is not None
    undone = advance(PARENT, undo.state, ChildEnded(1, 2, SagaStatus.COMPENSATED), payload=PAYLOAD)
    assert undone.dispatches == (Dispatch(0, COMPENSATE, 1),)


def test_child_attempts_survive_the_stored_document() -> None:
    state = InstanceState(SagaStatus.RUNNING, 2, 1, {}, None, child_attempts={1: 2, 4: 0})
    document = state.to_document()
    assert document["child_attempts"] == {"1": 2, "4": 0}
    assert InstanceState.from_document(document) == state
    assert "child_attempts" not in InstanceState(SagaStatus.RUNNING, 0, 1).to_document()


def test_a_parent_past_its_deadline_asks_the_child_of_its_attempt() -> None:
    retried = decide(parked_by_aborted_child(), Action.RETRY, child(SagaStatus.ABORTED))
    expired = expire(PARENT, retried.state, "saga deadline passed")
    assert expired.compensate_child == CompensateChild(1, 2)


def test_compensate_undoes_the_positions_before_and_leaves_the_aborted_child() -> None:
    before = parked_by_aborted_child()
    decided = decide(before, Action.COMPENSATE, child(SagaStatus.ABORTED))
    assert decided.state.status is SagaStatus.COMPENSATING
    assert decided.dispatches == (Dispatch(0, COMPENSATE, 1),)
    assert decided.compensate_child is None
    assert decided.log[0] == LogEntry(
        1,
        EXECUTE,
        LogStatus.ABORTED,
        1,
        error="compensation requested by alice: plan service fixed",
    )
    notes = child_decisions.notes(
        before, decided, Action.COMPENSATE, child=child(SagaStatus.ABORTED), parent_id=None
    )
    assert notes == (
        f"child saga {CHILD_ID} stays aborted: what it did is not undone by this saga "
        f"(`saga show {CHILD_ID}`)",
    )


def test_skip_takes_the_result_as_the_childs_and_undoing_passes_over_it() -> None:
    decided = decide(
        parked_by_aborted_child(),
        Action.SKIP,
        child(SagaStatus.ABORTED),
        step_name="credit",
        result={"credit_id": "by-hand"},
    )
    assert decided.state.current_step == 2
    assert decided.state.context["credit"] == {"credit_id": "by-hand"}
    assert decided.state.child_attempts == {1: 0}
    assert decided.log[0] == LogEntry(
        1,
        EXECUTE,
        LogStatus.SKIPPED,
        1,
        response={"credit_id": "by-hand"},
        error="skipped by alice: plan service fixed",
    )
    assert decided.dispatches == (Dispatch(2, EXECUTE, 1),)
    # No child did the position's work: undoing goes straight to reserve.
    undo = authorize_refused(decided.state)
    assert undo.compensate_child is None
    assert undo.dispatches == (Dispatch(0, COMPENSATE, 1),)


def test_skip_names_the_position() -> None:
    with pytest.raises(ActionRefused, match="not 'reserve'"):
        decide(
            parked_by_aborted_child(), Action.SKIP, child(SagaStatus.ABORTED), step_name="reserve"
        )


def test_aborted_while_undoing_compensate_or_skip_resume_for_the_first_cause() -> None:
    parked = parked_by_aborted_child(COMPENSATE)
    assert compensation_cause(parked.error) == "step 'authorize' failed: not covered"
    with pytest.raises(ActionRefused, match="takes no request now"):
        decide(parked, Action.RETRY, child(SagaStatus.ABORTED))
    for action, verb in ((Action.COMPENSATE, "compensation resumed"), (Action.SKIP, "skipped")):
        decided = decide(parked, action, child(SagaStatus.ABORTED), step_name="credit")
        assert decided.state.status is SagaStatus.COMPENSATING
        assert decided.state.error == "step 'authorize' failed: not covered"
        assert decided.dispatches == (Dispatch(0, COMPENSATE, 1),)
        assert decided.log[0].status is LogStatus.SKIPPED
        assert decided.log[0].phase is COMPENSATE
        assert decided.log[0].error == f"{verb} by alice: plan service fixed"


# --- a parent whose child is still going ------------------------------------------------------


@pytest.mark.parametrize(
    "status",
    [SagaStatus.RUNNING, SagaStatus.WAITING, SagaStatus.COMPENSATING, SagaStatus.PARKED],
)
@pytest.mark.parametrize("action", [Action.RETRY, Action.SKIP])
def test_retry_and_skip_are_refused_naming_the_child(status: SagaStatus, action: Action) -> None:
    with pytest.raises(ActionRefused) as refused:
        decide(at_child(), action, child(status), step_name="credit")
    assert f"its child saga {CHILD_ID} runs: it is {status.value}" in str(refused.value)
    assert f"`saga {action} {CHILD_ID}`" in str(refused.value)


def test_compensate_asks_a_running_child_to_compensate() -> None:
    decided = decide(at_child(), Action.COMPENSATE, child(SagaStatus.RUNNING))
    assert decided.state.status is SagaStatus.COMPENSATING
    assert decided.state.current_step == 1
    assert decided.state.child == ChildLink(1, COMPENSATE)
    assert decided.compensate_child == CompensateChild(1, 1)
    assert decided.state.error == "compensation requested by alice: plan service fixed"
    # The child's compensated end then undoes what came before.
    undone = advance(
        PARENT, decided.state, ChildEnded(1, 1, SagaStatus.COMPENSATED), payload=PAYLOAD
    )
    assert undone.dispatches == (Dispatch(0, COMPENSATE, 1),)


def test_compensate_is_refused_while_the_child_is_parked() -> None:
    with pytest.raises(ActionRefused) as refused:
        decide(at_child(), Action.COMPENSATE, child(SagaStatus.PARKED))
    assert f"`saga compensate {CHILD_ID}`" in str(refused.value)


def test_while_undoing_the_child_retry_asks_again_only_if_it_has_not_acted() -> None:
    undoing = at_child(SagaStatus.COMPENSATING, COMPENSATE)
    for status in (SagaStatus.RUNNING, SagaStatus.WAITING, SagaStatus.COMPLETED):
        again = decide(undoing, Action.RETRY, child(status))
        assert again.state == undoing
        assert again.compensate_child == CompensateChild(1, 1)
        assert again.log[0].status is LogStatus.RETRIED
    for status in (SagaStatus.COMPENSATING, SagaStatus.PARKED):
        with pytest.raises(ActionRefused, match="undoes itself"):
            decide(undoing, Action.RETRY, child(status))
    with pytest.raises(ActionRefused, match="already compensating"):
        decide(undoing, Action.COMPENSATE, child(SagaStatus.RUNNING))


def test_a_child_not_in_the_log_leaves_only_abort() -> None:
    for action in (Action.RETRY, Action.COMPENSATE, Action.SKIP):
        with pytest.raises(ActionRefused, match="not in the log; only abort applies"):
            decide(at_child(), action, child(None), step_name="credit")


# --- a parent whose child ended, unheard ---------------------------------------------------------


def test_retry_applies_the_end_of_a_child_the_parent_never_heard_of() -> None:
    ended = child(SagaStatus.COMPLETED, credit_id="c1")
    applied = decide(at_child(), Action.RETRY, ended)
    assert applied.state.current_step == 2
    assert applied.state.context["credit"] == {"credit_id": "c1"}
    assert applied.log[0].status is LogStatus.RETRIED
    assert "the child's end, completed, applied from the log" in (applied.log[0].error or "")
    assert applied.log[1].status is LogStatus.SUCCEEDED
    with pytest.raises(ActionRefused, match="`saga retry` applies the child's end now"):
        decide(at_child(), Action.COMPENSATE, ended)
    # Applied while undoing: the child's compensated end undoes what came before.
    undoing = at_child(SagaStatus.COMPENSATING, COMPENSATE)
    undone = decide(undoing, Action.RETRY, child(SagaStatus.COMPENSATED))
    assert undone.dispatches == (Dispatch(0, COMPENSATE, 1),)


# --- abort, and the notes beside an action ------------------------------------------------------


def test_abort_stops_the_parent_alone_and_says_the_child_goes_on() -> None:
    state = at_child()
    aborted = decisions.abort(state, EXECUTE, ALICE)
    assert aborted.state.status is SagaStatus.ABORTED
    assert aborted.compensate_child is None
    notes = child_decisions.notes(
        state, aborted, Action.ABORT, child=child(SagaStatus.RUNNING), parent_id=None
    )
    assert notes == (
        f"child saga {CHILD_ID} (running) goes on: `saga abort {CHILD_ID}` stops it too",
    )


def test_a_child_that_an_action_ends_tells_its_parent() -> None:
    parent_id = uuid.uuid4()
    state = InstanceState(SagaStatus.RUNNING, 0, 1)
    aborted = decisions.abort(state, EXECUTE, ALICE)
    notes = child_decisions.notes(state, aborted, Action.ABORT, child=None, parent_id=parent_id)
    assert notes == (f"its end (aborted) is sent to its parent saga {parent_id}",)
