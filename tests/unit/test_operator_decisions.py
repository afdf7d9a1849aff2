"""Operators' actions as state-machine decisions: no database, no broker."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from saga.definition import NoCompensation, SagaDefinition, Step
from saga.machine import (
    Dispatch,
    InstanceState,
    LogEntry,
    LogStatus,
    Outcome,
    Phase,
    SagaStatus,
    StepEvent,
    advance,
    compensation_cause,
)
from saga.operator import decisions
from saga.operator.decisions import ActionRefused, Operator
from saga.retry import RetryPolicy

EXECUTE, COMPENSATE = Phase.EXECUTE, Phase.COMPENSATE
ALICE = Operator("alice", "participant fixed")
ONCE = RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.01)

DEFINITION = SagaDefinition(
    "booking",
    1,
    [
        Step(
            name="reserve",
            journey="care",
            action="reserve",
            compensation="release",
            retry=ONCE,
            compensation_retry=ONCE,
        ),
        Step(
            name="authorize",
            journey="plan",
            action="authorize",
            compensation="void",
            retry=ONCE,
            compensation_retry=ONCE,
        ),
        Step(
            name="charge",
            journey="plan",
            action="charge",
            no_compensation=NoCompensation.RETRIABLE,
            retry=ONCE,
        ),
        Step(name="confirm", journey="care", action="confirm", no_compensation=NoCompensation.LAST),
    ],
)
CONTEXT = {"reserve_id": "r1"}


def running(step: int, attempt: int = 1) -> InstanceState:
    return InstanceState(SagaStatus.RUNNING, step, attempt, CONTEXT)


def parked_in_compensation() -> InstanceState:
    """Parked the way the machine parks: authorize's compensation out of attempts."""
    state = InstanceState(SagaStatus.COMPENSATING, 1, 2, CONTEXT, "step 'charge' failed: no")
    failed = StepEvent(1, COMPENSATE, 2, Outcome.ERROR, reason="plan down")
    parked = advance(DEFINITION, state, failed).state
    assert parked.status is SagaStatus.PARKED
    return parked


def test_the_phase_of_a_parked_saga_comes_from_the_log_else_execute() -> None:
    parked = InstanceState(SagaStatus.PARKED, 1, 1, error="x")
    assert decisions.current_phase(parked, COMPENSATE) is COMPENSATE
    assert decisions.current_phase(parked, None) is EXECUTE
    compensating = InstanceState(SagaStatus.COMPENSATING, 1, 1, error="x")
    assert decisions.current_phase(compensating, EXECUTE) is COMPENSATE


def test_retry_sends_one_more_attempt_of_the_current_step_and_says_who_and_why() -> None:
    transition = decisions.retry(DEFINITION, running(1, attempt=2), EXECUTE, ALICE)
    assert transition.state == InstanceState(SagaStatus.RUNNING, 1, 3, CONTEXT)
    assert transition.log == (
        LogEntry(1, EXECUTE, LogStatus.RETRIED, 2, error="retried by alice: participant fixed"),
        LogEntry(1, EXECUTE, LogStatus.DISPATCHED, 3),
    )
    assert transition.dispatch == Dispatch(1, EXECUTE, 3)


def test_retry_resumes_a_compensation_that_parked_with_its_original_cause() -> None:
    parked = parked_in_compensation()
    transition = decisions.retry(DEFINITION, parked, COMPENSATE, ALICE)
    assert transition.state.status is SagaStatus.COMPENSATING
    assert transition.state.error == "step 'charge' failed: no"
    assert transition.dispatch == Dispatch(1, COMPENSATE, 3)


def test_retry_of_a_step_that_parked_runs_it_again_without_the_old_error() -> None:
    parked = InstanceState(SagaStatus.PARKED, 2, 2, CONTEXT, "retriable-only step out of tries")
    transition = decisions.retry(DEFINITION, parked, EXECUTE, ALICE)
    assert transition.state == InstanceState(SagaStatus.RUNNING, 2, 3, CONTEXT, None)
    assert transition.dispatch == Dispatch(2, EXECUTE, 3)


@pytest.mark.parametrize(
    "status", [SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.ABORTED]
)
def test_no_action_applies_to_a_finished_saga(status: SagaStatus) -> None:
    done = InstanceState(status, 3, 1, CONTEXT, None if status is SagaStatus.COMPLETED else "x")
    actions: list[Callable[[], object]] = [
        lambda: decisions.retry(DEFINITION, done, EXECUTE, ALICE),
        lambda: decisions.compensate(DEFINITION, done, EXECUTE, ALICE),
        lambda: decisions.skip(DEFINITION, done, EXECUTE, "confirm", {}, ALICE),
        lambda: decisions.abort(done, EXECUTE, ALICE),
    ]
    for act in actions:
        with pytest.raises(ActionRefused, match=f"the saga is {status.value}"):
            act()


def test_compensate_undoes_the_current_step_first_since_its_outcome_is_unknown() -> None:
    transition = decisions.compensate(DEFINITION, running(1), EXECUTE, ALICE)
    why = "compensation requested by alice: participant fixed"
    assert transition.state == InstanceState(SagaStatus.COMPENSATING, 1, 1, CONTEXT, why)
    assert transition.log == (
        LogEntry(1, EXECUTE, LogStatus.ABORTED, 1, error=why),
        LogEntry(1, COMPENSATE, LogStatus.DISPATCHED, 1),
    )
    assert transition.dispatch == Dispatch(1, COMPENSATE, 1)


def test_compensate_a_parked_step_and_a_saga_at_its_first_step() -> None:
    parked = InstanceState(SagaStatus.PARKED, 0, 3, {}, "final step outcome unknown")
    transition = decisions.compensate(DEFINITION, parked, EXECUTE, ALICE)
    assert transition.state.status is SagaStatus.COMPENSATING
    assert transition.dispatch == Dispatch(0, COMPENSATE, 1)


def test_compensate_is_refused_past_the_point_of_no_return() -> None:
    with pytest.raises(ActionRefused, match="'charge' is past the saga's point of no return"):
        decisions.compensate(DEFINITION, running(2), EXECUTE, ALICE)


def test_compensate_a_compensating_saga_is_refused_but_a_parked_compensation_resumes() -> None:
    compensating = InstanceState(SagaStatus.COMPENSATING, 1, 1, CONTEXT, "x")
    with pytest.raises(ActionRefused, match="already compensating"):
        decisions.compensate(DEFINITION, compensating, COMPENSATE, ALICE)
    parked = parked_in_compensation()
    resumed = decisions.compensate(DEFINITION, parked, COMPENSATE, ALICE)
    assert resumed.state.status is SagaStatus.COMPENSATING
    assert resumed.dispatch == Dispatch(1, COMPENSATE, 3)


def test_skip_records_the_supplied_result_and_moves_to_the_next_step() -> None:
    transition = decisions.skip(
        DEFINITION, running(1, attempt=2), EXECUTE, "authorize", {"auth_id": "a9"}, ALICE
    )
    assert transition.state == InstanceState(
        SagaStatus.RUNNING, 2, 1, {**CONTEXT, "auth_id": "a9"}, None
    )
    assert transition.log[0] == LogEntry(
        1,
        EXECUTE,
        LogStatus.SKIPPED,
        2,
        response={"auth_id": "a9"},
        error="skipped by alice: participant fixed",
    )
    assert transition.dispatch == Dispatch(2, EXECUTE, 1)


def test_skip_of_the_last_step_completes_the_saga_and_the_index_names_a_step_too() -> None:
    transition = decisions.skip(DEFINITION, running(3), EXECUTE, "3", {}, ALICE)
    assert transition.state.status is SagaStatus.COMPLETED
    assert transition.dispatch is None


def test_skip_refuses_any_step_but_the_current_one() -> None:
    with pytest.raises(ActionRefused, match="at step 'authorize' \\(execute\\), not 'confirm'"):
        decisions.skip(DEFINITION, running(1), EXECUTE, "confirm", {}, ALICE)


def test_skip_a_compensation_goes_on_compensating_below_it() -> None:
    parked = parked_in_compensation()
    transition = decisions.skip(DEFINITION, parked, COMPENSATE, "authorize", {}, ALICE)
    assert transition.state == InstanceState(
        SagaStatus.COMPENSATING, 0, 1, CONTEXT, "step 'charge' failed: no"
    )
    assert transition.log[0].status is LogStatus.SKIPPED
    assert transition.dispatch == Dispatch(0, COMPENSATE, 1)
    first = InstanceState(SagaStatus.COMPENSATING, 0, 1, CONTEXT, "cause")
    done = decisions.skip(DEFINITION, first, COMPENSATE, "reserve", {}, ALICE)
    assert done.state.status is SagaStatus.COMPENSATED
    assert done.state.error == "cause"


def test_abort_stops_the_saga_where_it_is_keeping_what_it_was() -> None:
    parked = InstanceState(SagaStatus.PARKED, 1, 3, CONTEXT, "compensation failed")
    transition = decisions.abort(parked, COMPENSATE, ALICE)
    assert transition.state.status is SagaStatus.ABORTED
    assert transition.state.error == (
        "aborted by alice: participant fixed (was parked: compensation failed)"
    )
    assert transition.log == (
        LogEntry(1, COMPENSATE, LogStatus.ABORTED, 3, error="aborted by alice: participant fixed"),
    )
    assert transition.dispatch is None
    assert decisions.abort(running(0), EXECUTE, ALICE).state.error == (
        "aborted by alice: participant fixed"
    )


def test_compensation_cause_unwraps_only_the_machines_parking_reason() -> None:
    assert compensation_cause(parked_in_compensation().error) == "step 'charge' failed: no"
    assert compensation_cause("plain reason (with brackets)") == "plain reason (with brackets)"
    assert compensation_cause(None) is None
