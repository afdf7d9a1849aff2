"""The state machine on parallel groups, waits and child sagas, driven by hand."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from saga.definition import (
    AwaitEvent,
    NoCompensation,
    OnTimeout,
    Parallel,
    SagaDefinition,
    Step,
    SubSaga,
)
from saga.errors import UsageError
from saga.machine import (
    BranchOutcome,
    BranchState,
    ChildEnded,
    ChildLink,
    CompensateChild,
    Dispatch,
    EnterWait,
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
    advance,
    begin,
    branch_message_id,
    child_idempotency_key,
    command_message_id,
    expire,
    judge_signal,
)
from saga.retry import RetryPolicy

EXECUTE, COMPENSATE = Phase.EXECUTE, Phase.COMPENSATE
PAYLOAD = {"user_id": "u-1"}


def step(name: str, attempts: int = 2) -> Step:
    return Step(
        name=name,
        journey="care",
        action=name,
        compensation=f"undo_{name}",
        retry=RetryPolicy(max_attempts=attempts, initial_delay=0.01),
        compensation_retry=RetryPolicy(max_attempts=2, initial_delay=0.01),
    )


FINAL = Step(name="confirm", journey="care", action="confirm", no_compensation=NoCompensation.LAST)
BOOK = SagaDefinition(
    "book", 1, [step("hold"), Parallel("reserve", [step("slot"), step("coverage")]), FINAL]
).validate()
CLAIM = SagaDefinition(
    "claim",
    1,
    [
        step("create"),
        AwaitEvent("review", "claim_reviewed", 3600.0, when="context.needs_review"),
        FINAL,
    ],
).validate()
GOAL = SagaDefinition(
    "goal",
    1,
    [
        step("record"),
        SubSaga(
            "credit",
            ("wellness_credit", 1),
            payload={"user_id": "payload.user_id", "cents": "context.cents"},
        ),
        FINAL,
    ],
).validate()


def ok(index: int, result: dict[str, Any] | None = None, **kw: Any) -> StepEvent:
    return StepEvent(
        index, kw.pop("phase", EXECUTE), kw.pop("attempt", 1), Outcome.SUCCEEDED, result or {}, **kw
    )


def at_group() -> Transition:
    return advance(BOOK, begin(BOOK).state, ok(0, {"hold": "h"}))


# --- parallel groups ---------------------------------------------------------------------------


def test_a_group_dispatches_every_branch_in_one_transition() -> None:
    transition = at_group()
    assert transition.dispatches == (
        Dispatch(1, EXECUTE, 1, branch=0),
        Dispatch(1, EXECUTE, 1, branch=1),
    )
    assert transition.state.branches == (BranchState(), BranchState())
    with pytest.raises(UsageError, match="sends 2 commands"):
        _ = transition.dispatch


def test_a_group_joins_when_every_branch_succeeded_results_under_their_names() -> None:
    state = at_group().state
    first = advance(BOOK, state, ok(1, {"slot_id": "s"}, branch=1))
    assert first.dispatches == ()
    assert first.state.status is SagaStatus.RUNNING
    joined = advance(BOOK, first.state, ok(1, {"auth": "a"}, branch=0))
    assert joined.state.context == {
        "hold": "h",
        "coverage": {"slot_id": "s"},
        "slot": {"auth": "a"},
    }
    assert joined.dispatch == Dispatch(2, EXECUTE, 1)
    assert joined.state.branches == ()


def test_a_failing_group_starts_nothing_new_then_undoes_what_may_have_run() -> None:
    state = at_group().state
    refused = advance(
        BOOK, state, StepEvent(1, EXECUTE, 1, Outcome.FAILED, reason="no slot", branch=0)
    )
    assert refused.state.status is SagaStatus.RUNNING  # the other branch is still in flight
    assert refused.state.error == "branch 'slot' of group 'reserve' failed: no slot"
    assert refused.dispatches == ()
    # The other branch errs with attempts left: not retried, its outcome is unknown.
    erred = advance(BOOK, refused.state, StepEvent(1, EXECUTE, 1, Outcome.ERROR, branch=1))
    assert erred.state.status is SagaStatus.COMPENSATING
    assert erred.dispatches == (Dispatch(1, COMPENSATE, 1, branch=1),)
    assert erred.log[0].error == "not retried, the group is failing: error"
    assert erred.state.branches[1].outcome is BranchOutcome.UNKNOWN
    # A late success of the unknown branch is recorded; its compensation is already out.
    late = advance(BOOK, erred.state, ok(1, {"auth": "late"}, branch=1))
    assert late.changed
    assert late.dispatches == ()
    assert late.state.branches[1].outcome is BranchOutcome.SUCCEEDED
    undone = advance(BOOK, late.state, ok(1, phase=COMPENSATE, branch=1))
    assert undone.dispatch == Dispatch(0, COMPENSATE, 1)
    assert undone.state.error == "branch 'slot' of group 'reserve' failed: no slot"


def test_a_healthy_group_retries_an_erring_branch_alone() -> None:
    state = at_group().state
    retried = advance(BOOK, state, StepEvent(1, EXECUTE, 1, Outcome.TIMED_OUT, branch=0))
    assert [(d.branch, d.attempt) for d in retried.dispatches] == [(0, 2)]
    assert retried.state.branches[0].attempt == 2
    stale = advance(BOOK, retried.state, StepEvent(1, EXECUTE, 1, Outcome.ERROR, branch=0))
    assert stale.ignored == "reply for attempt 1 but branch 0 is at attempt 2"


def test_compensating_past_a_group_undoes_its_branches_together() -> None:
    state = at_group().state
    state = advance(BOOK, state, ok(1, branch=0)).state
    state = advance(BOOK, state, ok(1, branch=1)).state
    refused = advance(BOOK, state, StepEvent(2, EXECUTE, 1, Outcome.FAILED, reason="x"))
    assert refused.dispatches == (
        Dispatch(1, COMPENSATE, 1, branch=0),
        Dispatch(1, COMPENSATE, 1, branch=1),
    )
    half = advance(BOOK, refused.state, ok(1, phase=COMPENSATE, branch=1))
    assert half.dispatches == ()
    assert half.state.status is SagaStatus.COMPENSATING
    failed_once = advance(
        BOOK, half.state, StepEvent(1, COMPENSATE, 1, Outcome.ERROR, reason="down", branch=0)
    )
    assert failed_once.dispatches[0].attempt == 2
    parked = advance(
        BOOK, failed_once.state, StepEvent(1, COMPENSATE, 2, Outcome.ERROR, reason="down", branch=0)
    )
    assert parked.state.status is SagaStatus.PARKED
    assert parked.state.error == (
        "compensation of branch 'slot' of group 'reserve' failed after 2 attempts: down"
        " (compensating because step 'confirm' failed: x)"
    )


def test_expiring_at_a_group_undoes_its_branches_in_flight() -> None:
    state = advance(BOOK, at_group().state, ok(1, branch=0)).state
    transition = expire(BOOK, state, "deadline")
    assert transition.log[0] == LogEntry(1, EXECUTE, LogStatus.ABORTED, 1, error="deadline")
    assert {d.branch for d in transition.dispatches} == {0, 1}


# --- waits and signals -------------------------------------------------------------------------


def test_a_wait_pauses_until_its_signal() -> None:
    entered = advance(CLAIM, begin(CLAIM).state, ok(0, {"needs_review": True}))
    assert entered.state.status is SagaStatus.WAITING
    assert entered.state.waiting_for == "claim_reviewed"
    assert entered.wait == EnterWait(1, "claim_reviewed", 3600.0)
    assert entered.dispatches == ()
    waiting = entered.state
    assert judge_signal(CLAIM, waiting, "claim_reviewed")[0] is SignalVerdict.ACCEPT
    for other in (ok(1), ok(0), WaitExpired(0), SignalEvent("other", {}, "s-0")):
        assert advance(CLAIM, waiting, other).ignored
    signalled = advance(CLAIM, waiting, SignalEvent("claim_reviewed", {"approved": True}, "s-1"))
    assert signalled.consumed_signal == "s-1"
    assert signalled.state.context == {"needs_review": True, "review": {"approved": True}}
    assert signalled.dispatch == Dispatch(2, EXECUTE, 1)


def test_signals_are_kept_or_refused_when_the_saga_is_not_waiting_for_them() -> None:
    running = begin(CLAIM).state
    verdict, why = judge_signal(CLAIM, running, "claim_reviewed")
    assert verdict is SignalVerdict.KEEP
    assert "kept" in why
    assert judge_signal(CLAIM, running, "nope") == (
        SignalVerdict.REFUSE,
        "claim v1 never waits for 'nope'",
    )
    done = InstanceState(SagaStatus.COMPLETED, 2, 1)
    assert judge_signal(CLAIM, done, "claim_reviewed")[1] == "the saga is already completed"


@pytest.mark.parametrize(
    ("flag", "waits"), [(False, False), (0, False), (True, True), (None, True)]
)
def test_a_wait_is_skipped_only_when_its_flag_is_there_and_falsy(flag: Any, waits: bool) -> None:
    result = {} if flag is None else {"needs_review": flag}
    transition = advance(CLAIM, begin(CLAIM).state, ok(0, result))
    if waits:
        assert transition.state.status is SagaStatus.WAITING
    else:
        assert transition.log[1] == LogEntry(
            1, EXECUTE, LogStatus.SKIPPED, 1, error=f"context.needs_review is {flag!r}"
        )
        assert transition.dispatch == Dispatch(2, EXECUTE, 1)


@pytest.mark.parametrize("on_timeout", list(OnTimeout))
def test_a_wait_timing_out_compensates_or_continues(on_timeout: OnTimeout) -> None:
    waits = AwaitEvent("review", "claim_reviewed", 60.0, on_timeout=on_timeout)
    definition = SagaDefinition("claim", 1, [step("create"), waits, FINAL]).validate()
    waiting = advance(definition, begin(definition).state, ok(0)).state
    transition = advance(definition, waiting, WaitExpired(1))
    assert transition.log[0].status is LogStatus.TIMED_OUT
    if on_timeout is OnTimeout.CONTINUE:
        assert transition.dispatch == Dispatch(2, EXECUTE, 1)
        assert "review" not in transition.state.context
    else:
        assert transition.dispatch == Dispatch(0, COMPENSATE, 1)
        assert transition.state.error == "wait 'review': no 'claim_reviewed' signal within 60 s"


def test_a_payload_reference_needs_the_payload() -> None:
    waits = AwaitEvent("review", "reviewed", 60.0, when="payload.big")
    definition = SagaDefinition("claim", 1, [waits, FINAL]).validate()
    with pytest.raises(UsageError, match=r"reads payload\.big: pass the saga's payload"):
        begin(definition)
    assert begin(definition, payload={"big": False}).dispatch == Dispatch(1, EXECUTE, 1)


# --- child sagas -------------------------------------------------------------------------------


def test_a_child_saga_starts_and_its_completion_is_the_step_result() -> None:
    started = advance(
        GOAL, begin(GOAL, payload=PAYLOAD).state, ok(0, {"cents": 500}), payload=PAYLOAD
    )
    assert started.start_child == StartChild(
        1, 1, ("wellness_credit", 1), {"user_id": "u-1", "cents": 500}
    )
    assert started.state.child == ChildLink(1, EXECUTE)
    parked = advance(GOAL, started.state, ChildEnded(1, 1, SagaStatus.PARKED))
    assert parked.ignored == "the child saga is parked: its end has not ended"
    done = advance(
        GOAL,
        started.state,
        ChildEnded(1, 1, SagaStatus.COMPLETED, {"credit": "c-1"}),
        payload=PAYLOAD,
    )
    assert done.state.context == {"cents": 500, "credit": {"credit": "c-1"}}
    assert done.dispatch == Dispatch(2, EXECUTE, 1)
    # The final step refused: the completed child is asked to compensate.
    undo = advance(GOAL, done.state, StepEvent(2, EXECUTE, 1, Outcome.FAILED, reason="x"))
    assert undo.compensate_child == CompensateChild(1, 1)
    assert undo.state.child == ChildLink(1, COMPENSATE)
    assert advance(GOAL, undo.state, ChildEnded(1, 1, SagaStatus.COMPLETED)).ignored
    undone = advance(GOAL, undo.state, ChildEnded(1, 1, SagaStatus.COMPENSATED))
    assert undone.dispatch == Dispatch(0, COMPENSATE, 1)


def test_a_compensated_child_fails_the_step_and_an_aborted_one_parks() -> None:
    started = advance(
        GOAL, begin(GOAL, payload=PAYLOAD).state, ok(0, {"cents": 1}), payload=PAYLOAD
    )
    failed = advance(GOAL, started.state, ChildEnded(1, 1, SagaStatus.COMPENSATED, error="no plan"))
    assert failed.dispatch == Dispatch(0, COMPENSATE, 1)
    assert failed.state.error == "the child saga of step 'credit' was compensated: no plan"
    aborted = advance(GOAL, started.state, ChildEnded(1, 1, SagaStatus.ABORTED))
    assert aborted.state.status is SagaStatus.PARKED


def test_a_child_payload_missing_a_field_fails_the_step_before_anything_starts() -> None:
    transition = advance(GOAL, begin(GOAL, payload=PAYLOAD).state, ok(0), payload=PAYLOAD)
    assert transition.start_child is None
    assert transition.dispatch == Dispatch(0, COMPENSATE, 1)
    assert "context.cents" in (transition.state.error or "")


# --- ids and stored state ----------------------------------------------------------------------


def test_branch_ids_are_stable_and_never_a_steps_id() -> None:
    saga_id = uuid.UUID("00000000-0000-4000-8000-000000000001")
    ids = {branch_message_id(saga_id, 1, b, phase) for b in range(3) for phase in Phase}
    assert len(ids) == 6
    assert branch_message_id(saga_id, 1, 0, EXECUTE) == branch_message_id(saga_id, 1, 0, EXECUTE)
    assert not ids & {command_message_id(saga_id, i, phase) for i in range(3) for phase in Phase}
    assert child_idempotency_key(saga_id, 1, 1) != child_idempotency_key(saga_id, 1, 2)


@pytest.mark.parametrize(
    "state",
    [
        InstanceState(SagaStatus.RUNNING, 0, 1),
        InstanceState(
            SagaStatus.COMPENSATING,
            1,
            1,
            {"a": {"b": 1}},
            "why",
            branches=(
                BranchState(2, BranchOutcome.UNKNOWN, 1, BranchOutcome.PENDING),
                BranchState(1, BranchOutcome.FAILED),
            ),
        ),
        InstanceState(SagaStatus.WAITING, 1, 1, waiting_for="claim_reviewed"),
        InstanceState(SagaStatus.RUNNING, 1, 1, child=ChildLink(1, EXECUTE)),
    ],
    ids=["plain", "group", "waiting", "child"],
)
def test_the_state_round_trips_through_json(state: InstanceState) -> None:
    document = json.loads(json.dumps(state.to_document()))
    assert InstanceState.from_document(document) == state


def test_a_plain_state_document_has_none_of_the_shapes_fields() -> None:
    assert set(InstanceState(SagaStatus.RUNNING, 0, 1).to_document()) == {
        "status",
        "current_step",
        "step_attempt",
        "context",
        "error",
    }
