"""The saga state machine, driven by hand: no database, no broker, no clock."""

from __future__ import annotations

import itertools
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga.definition import IsolationLevel, NoCompensation, SagaDefinition, Step
from saga.machine import (
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
    begin,
    command_message_id,
    expire,
)
from saga.retry import RetryPolicy

EXECUTE, COMPENSATE = Phase.EXECUTE, Phase.COMPENSATE
RETRY = RetryPolicy(max_attempts=3, initial_delay=0.05, max_delay=1.0)
COMPENSATION_RETRY = RetryPolicy(max_attempts=4, initial_delay=0.05, max_delay=2.0)


def book_appointment() -> SagaDefinition:
    """Three compensatable steps, then a final step that needs no compensation."""
    return SagaDefinition(
        "book_appointment",
        1,
        [
            Step(
                name="reserve_slot",
                journey="care",
                action="reserve_slot",
                compensation="release_slot",
                retry=RETRY,
                compensation_retry=COMPENSATION_RETRY,
            ),
            Step(
                name="authorize_coverage",
                journey="plan",
                action="authorize_coverage",
                compensation="void_authorization",
                isolation=IsolationLevel.SERIALIZABLE,
                retry=RETRY,
                compensation_retry=COMPENSATION_RETRY,
            ),
            Step(
                name="award_points",
                journey="gamification",
                action="award_points",
                compensation="revoke_points",
                retry=RETRY,
                compensation_retry=COMPENSATION_RETRY,
            ),
            Step(
                name="confirm_appointment",
                journey="care",
                action="confirm_appointment",
                no_compensation=NoCompensation.LAST,
                retry=RETRY,
            ),
        ],
    ).validate()


BOOK = book_appointment()
STEP_NAMES = [step.name for step in BOOK.steps]


def retriable_tail() -> SagaDefinition:
    """A compensatable step, then one that must eventually succeed and is never undone."""
    return SagaDefinition(
        "complete_goal",
        1,
        [
            Step(name="record", journey="health", action="record", compensation="unrecord"),
            Step(
                name="award",
                journey="gamification",
                action="award",
                no_compensation=NoCompensation.RETRIABLE,
                retry=RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.1),
            ),
        ],
    ).validate()


def ok(
    index: int,
    result: dict[str, Any] | None = None,
    *,
    attempt: int = 1,
    phase: Phase = EXECUTE,
) -> StepEvent:
    return StepEvent(index, phase, attempt, Outcome.SUCCEEDED, result or {})


def refused(index: int, reason: str = "slot taken", attempt: int = 1) -> StepEvent:
    return StepEvent(index, EXECUTE, attempt, Outcome.FAILED, reason=reason)


def running(step: int, attempt: int = 1, **context: Any) -> InstanceState:
    return InstanceState(SagaStatus.RUNNING, step, attempt, context)


def at_step(definition: SagaDefinition, index: int) -> InstanceState:
    """The state after steps 0..index-1 succeeded (each on its first attempt)."""
    state = begin(definition).state
    for done in range(index):
        state = advance(definition, state, ok(done, {f"r{done}": done})).state
    assert state == InstanceState(
        SagaStatus.RUNNING, index, 1, {f"r{i}": i for i in range(index)}, None
    )
    return state


def assert_ignored(transition: Transition, before: InstanceState) -> str:
    assert transition.ignored
    assert not transition.changed
    assert transition.state is before
    assert transition.log == ()
    assert transition.dispatch is None
    return transition.ignored


# --- begin and the happy path --------------------------------------------------------------


def test_begin_dispatches_the_first_step_once() -> None:
    transition = begin(BOOK)
    assert transition.state == InstanceState(SagaStatus.RUNNING, 0, 1, {}, None)
    assert transition.state.phase is EXECUTE
    assert transition.log == (LogEntry(0, EXECUTE, LogStatus.DISPATCHED, 1),)
    assert transition.dispatch == Dispatch(0, EXECUTE, 1, 0.0)
    assert transition.changed
    assert transition.ignored is None


@pytest.mark.parametrize("index", range(len(BOOK.steps) - 1), ids=STEP_NAMES[:-1])
def test_success_advances_to_the_next_step(index: int) -> None:
    state = at_step(BOOK, index)
    transition = advance(BOOK, state, ok(index, {"booking": f"b{index}"}))
    assert transition.changed
    assert transition.state.status is SagaStatus.RUNNING
    assert transition.state.current_step == index + 1
    assert transition.state.step_attempt == 1
    assert transition.state.error is None
    assert transition.state.context == {**state.context, "booking": f"b{index}"}
    assert transition.log == (
        LogEntry(index, EXECUTE, LogStatus.SUCCEEDED, 1, response={"booking": f"b{index}"}),
        LogEntry(index + 1, EXECUTE, LogStatus.DISPATCHED, 1),
    )
    assert transition.dispatch == Dispatch(index + 1, EXECUTE, 1, 0.0)


def test_results_merge_into_the_context_later_keys_win() -> None:
    state = begin(BOOK).state
    state = advance(BOOK, state, ok(0, {"slot_id": "s-1", "note": "reserved"})).state
    before = state
    state = advance(BOOK, state, ok(1, {"authorization": "a-9", "note": "authorized"})).state
    assert state.context == {"slot_id": "s-1", "authorization": "a-9", "note": "authorized"}
    assert before.context == {"slot_id": "s-1", "note": "reserved"}  # not mutated
    state = advance(BOOK, state, ok(2)).state
    assert state.context == {"slot_id": "s-1", "authorization": "a-9", "note": "authorized"}


def test_success_of_a_retried_attempt_advances() -> None:
    state = at_step(BOOK, 1)
    state = advance(BOOK, state, StepEvent(1, EXECUTE, 1, Outcome.ERROR)).state
    transition = advance(BOOK, state, ok(1, attempt=2))
    assert transition.state.current_step == 2
    assert transition.state.step_attempt == 1
    assert transition.log[0] == LogEntry(1, EXECUTE, LogStatus.SUCCEEDED, 2, response={})


def test_success_at_the_last_step_completes_without_a_dispatch() -> None:
    state = at_step(BOOK, 3)
    transition = advance(BOOK, state, ok(3, {"confirmed": True}))
    assert transition.state.status is SagaStatus.COMPLETED
    assert transition.state.status.finished
    assert transition.state.error is None
    assert transition.state.context == {"r0": 0, "r1": 1, "r2": 2, "confirmed": True}
    assert transition.dispatch is None
    assert transition.log == (
        LogEntry(3, EXECUTE, LogStatus.SUCCEEDED, 1, response={"confirmed": True}),
    )


def test_a_one_step_saga_completes_on_its_first_success() -> None:
    definition = SagaDefinition(
        "single", 1, [Step(name="only", journey="care", action="go", compensation="undo")]
    )
    transition = advance(definition, begin(definition).state, ok(0, {"x": 1}))
    assert transition.state.status is SagaStatus.COMPLETED
    assert transition.state.context == {"x": 1}
    assert transition.dispatch is None


# --- a business refusal -----------------------------------------------------------------------


def compensate_to_the_end(
    definition: SagaDefinition, transition: Transition
) -> tuple[list[Dispatch], list[LogEntry], InstanceState]:
    """Answer every compensation with success; collect what was sent and logged."""
    sent: list[Dispatch] = []
    logged: list[LogEntry] = list(transition.log)
    while transition.dispatch is not None:
        dispatch = transition.dispatch
        assert dispatch.phase is COMPENSATE
        sent.append(dispatch)
        transition = advance(
            definition,
            transition.state,
            ok(dispatch.step_index, attempt=dispatch.attempt, phase=COMPENSATE),
        )
        logged.extend(transition.log)
    return sent, logged, transition.state


@pytest.mark.parametrize("index", range(len(BOOK.steps)), ids=STEP_NAMES)
def test_a_refusal_compensates_the_steps_before_it_in_reverse(index: int) -> None:
    state = at_step(BOOK, index)
    transition = advance(BOOK, state, refused(index, "no slot left"))
    assert transition.log[0] == LogEntry(index, EXECUTE, LogStatus.FAILED, 1, error="no slot left")
    error = transition.state.error
    assert error is not None
    assert STEP_NAMES[index] in error
    assert "no slot left" in error

    sent, logged, final = compensate_to_the_end(BOOK, transition)

    assert sent == [Dispatch(i, COMPENSATE, 1, 0.0) for i in reversed(range(index))]
    compensated = [
        e.step_index for e in logged if e.phase is COMPENSATE and e.status is LogStatus.SUCCEEDED
    ]
    assert compensated == list(reversed(range(index)))
    assert final.status is SagaStatus.COMPENSATED
    assert final.status.finished
    assert final.error == error
    assert final.context == state.context


def test_a_refusal_without_a_reason_records_the_outcome() -> None:
    transition = advance(BOOK, at_step(BOOK, 1), StepEvent(1, EXECUTE, 1, Outcome.FAILED))
    assert transition.log[0].error == "failed"
    assert transition.state.error == "step 'authorize_coverage' failed: failed"


def test_compensation_carries_the_saga_context() -> None:
    transition = advance(BOOK, at_step(BOOK, 2), refused(2))
    assert transition.state == InstanceState(
        SagaStatus.COMPENSATING, 1, 1, {"r0": 0, "r1": 1}, "step 'award_points' failed: slot taken"
    )
    assert transition.state.phase is COMPENSATE
    assert transition.log[1] == LogEntry(1, COMPENSATE, LogStatus.DISPATCHED, 1)


# --- errors and timeouts: retried, then compensated from the failed step itself -----------


@pytest.mark.parametrize(
    ("outcome", "logged"),
    [(Outcome.ERROR, LogStatus.RETRIED), (Outcome.TIMED_OUT, LogStatus.TIMED_OUT)],
    ids=["error", "timed-out"],
)
def test_an_erring_step_is_retried_then_compensated_from_itself(
    outcome: Outcome, logged: LogStatus
) -> None:
    index = 1
    state = at_step(BOOK, index)
    rng, expected_rng = random.Random(0), random.Random(0)
    for attempt in range(1, RETRY.max_attempts):
        transition = advance(
            BOOK, state, StepEvent(index, EXECUTE, attempt, outcome, reason="boom"), rng=rng
        )
        expected_delay = RETRY.delay_before(attempt + 1, rng=expected_rng)
        assert transition.dispatch == Dispatch(index, EXECUTE, attempt + 1, expected_delay)
        assert 0 <= transition.dispatch.delay <= RETRY.max_delay
        assert transition.log == (
            LogEntry(index, EXECUTE, logged, attempt, error="boom"),
            LogEntry(index, EXECUTE, LogStatus.DISPATCHED, attempt + 1),
        )
        assert transition.state == InstanceState(
            SagaStatus.RUNNING, index, attempt + 1, state.context, None
        )
        state = transition.state

    last_attempt = RETRY.max_attempts
    transition = advance(
        BOOK, state, StepEvent(index, EXECUTE, last_attempt, outcome, reason="boom")
    )
    assert transition.state.status is SagaStatus.COMPENSATING
    assert transition.state.current_step == index  # the outcome is unknown: undo it too
    assert transition.state.step_attempt == 1
    assert transition.dispatch == Dispatch(index, COMPENSATE, 1, 0.0)
    assert transition.log == (
        LogEntry(index, EXECUTE, LogStatus.FAILED, last_attempt, error="out of attempts (3): boom"),
        LogEntry(index, COMPENSATE, LogStatus.DISPATCHED, 1),
    )
    assert transition.state.error == "step 'authorize_coverage' out of attempts (3): boom"

    sent, _, final = compensate_to_the_end(BOOK, transition)
    assert [d.step_index for d in sent] == [1, 0]
    assert final.status is SagaStatus.COMPENSATED
    assert final.error == "step 'authorize_coverage' out of attempts (3): boom"


def test_retry_delays_follow_the_policy_and_the_rng() -> None:
    state = at_step(BOOK, 0)
    first = advance(BOOK, state, StepEvent(0, EXECUTE, 1, Outcome.ERROR), rng=random.Random(0))
    again = advance(BOOK, state, StepEvent(0, EXECUTE, 1, Outcome.ERROR), rng=random.Random(0))
    assert first == again
    assert first.dispatch is not None
    assert first.dispatch.delay == RETRY.delay_before(2, rng=random.Random(0))
    assert 0 < first.dispatch.delay <= RETRY.initial_delay


def test_running_out_of_attempts_on_the_last_step_compensates_the_step_before() -> None:
    # Each attempt answered "error": the participant committed nothing.
    state = at_step(BOOK, 3)
    for attempt in range(1, RETRY.max_attempts):
        state = advance(BOOK, state, StepEvent(3, EXECUTE, attempt, Outcome.ERROR)).state
    transition = advance(BOOK, state, StepEvent(3, EXECUTE, 3, Outcome.ERROR))
    assert transition.dispatch == Dispatch(2, COMPENSATE, 1, 0.0)
    assert transition.state.status is SagaStatus.COMPENSATING
    assert transition.state.error == "step 'confirm_appointment' out of attempts (3): error"


def test_the_last_step_timing_out_for_good_parks_since_it_may_yet_commit() -> None:
    state = at_step(BOOK, 3)
    for attempt in range(1, RETRY.max_attempts):
        state = advance(BOOK, state, StepEvent(3, EXECUTE, attempt, Outcome.TIMED_OUT)).state
    transition = advance(BOOK, state, StepEvent(3, EXECUTE, 3, Outcome.TIMED_OUT))
    assert transition.dispatch is None
    assert transition.state.status is SagaStatus.PARKED
    assert transition.state.error == (
        "step 'confirm_appointment' out of attempts (3): timed_out; "
        "the final step's outcome is unknown"
    )


def test_running_out_of_attempts_at_the_first_step_compensates_it() -> None:
    definition = SagaDefinition(
        "once",
        1,
        [
            Step(
                name="only",
                journey="care",
                action="go",
                compensation="undo",
                retry=RetryPolicy(max_attempts=1),
            )
        ],
    )
    transition = advance(
        definition, begin(definition).state, StepEvent(0, EXECUTE, 1, Outcome.ERROR)
    )
    assert transition.dispatch == Dispatch(0, COMPENSATE, 1, 0.0)


# --- compensations that fail ---------------------------------------------------------------


def test_a_failing_compensation_is_retried_then_the_saga_is_parked() -> None:
    transition = advance(BOOK, at_step(BOOK, 2), refused(2, "no points budget"))
    state = transition.state
    assert state.current_step == 1
    assert state.phase is COMPENSATE
    rng, expected_rng = random.Random(0), random.Random(0)
    outcomes = [Outcome.ERROR, Outcome.TIMED_OUT, Outcome.FAILED]  # a refusal is retried too
    statuses = [LogStatus.RETRIED, LogStatus.TIMED_OUT, LogStatus.RETRIED]
    for attempt, (outcome, status) in enumerate(zip(outcomes, statuses, strict=True), start=1):
        event = StepEvent(1, COMPENSATE, attempt, outcome, reason="plan down")
        transition = advance(BOOK, state, event, rng=rng)
        delay = COMPENSATION_RETRY.delay_before(attempt + 1, rng=expected_rng)
        assert transition.dispatch == Dispatch(1, COMPENSATE, attempt + 1, delay)
        assert transition.log == (
            LogEntry(1, COMPENSATE, status, attempt, error="plan down"),
            LogEntry(1, COMPENSATE, LogStatus.DISPATCHED, attempt + 1),
        )
        assert transition.state.status is SagaStatus.COMPENSATING
        assert transition.state.error == "step 'award_points' failed: no points budget"
        state = transition.state

    final_attempt = COMPENSATION_RETRY.max_attempts
    assert state.step_attempt == final_attempt
    event = StepEvent(1, COMPENSATE, final_attempt, Outcome.ERROR, reason="plan down")
    transition = advance(BOOK, state, event)
    assert transition.state.status is SagaStatus.PARKED
    assert not transition.state.status.finished
    assert not transition.state.status.in_flight
    assert transition.dispatch is None
    assert transition.log == (
        LogEntry(1, COMPENSATE, LogStatus.FAILED, final_attempt, error="plan down"),
    )
    reason = transition.state.error
    assert reason == (
        "compensation of step 'authorize_coverage' failed after 4 attempts: plan down"
        f" (compensating because {state.error})"
    )
    assert transition.state.current_step == 1
    assert transition.state.context == state.context


def test_a_compensation_that_succeeds_after_a_retry_goes_on() -> None:
    state = advance(BOOK, at_step(BOOK, 2), refused(2)).state
    state = advance(BOOK, state, StepEvent(1, COMPENSATE, 1, Outcome.ERROR)).state
    transition = advance(BOOK, state, ok(1, attempt=2, phase=COMPENSATE))
    assert transition.dispatch == Dispatch(0, COMPENSATE, 1, 0.0)
    assert transition.log[0] == LogEntry(1, COMPENSATE, LogStatus.SUCCEEDED, 2, response={})


# --- retriable-only steps are parked, never undone -------------------------------------------


def test_a_refused_retriable_only_step_parks_the_saga() -> None:
    definition = retriable_tail()
    state = at_step(definition, 1)
    transition = advance(definition, state, refused(1, "ledger closed"))
    assert transition.state.status is SagaStatus.PARKED
    assert transition.dispatch is None
    assert transition.state.error == "retriable-only step 'award' refused: ledger closed"
    assert transition.log == (LogEntry(1, EXECUTE, LogStatus.FAILED, 1, error="ledger closed"),)
    assert transition.state.current_step == 1


def test_a_retriable_only_step_out_of_attempts_parks_the_saga() -> None:
    definition = retriable_tail()
    state = at_step(definition, 1)
    transition = advance(definition, state, StepEvent(1, EXECUTE, 1, Outcome.TIMED_OUT))
    assert transition.dispatch is not None
    assert transition.dispatch.attempt == 2
    transition = advance(definition, transition.state, StepEvent(1, EXECUTE, 2, Outcome.ERROR))
    assert transition.state.status is SagaStatus.PARKED
    assert transition.dispatch is None
    assert transition.state.error == "step 'award' out of attempts (2): error"
    assert transition.log == (
        LogEntry(1, EXECUTE, LogStatus.FAILED, 2, error="out of attempts (2): error"),
    )


# --- stale and duplicate events ----------------------------------------------------------------


def _compensating_at_1() -> InstanceState:
    return advance(BOOK, at_step(BOOK, 2), refused(2)).state


STALE = [
    pytest.param(running(1, 2), ok(1, attempt=3), "attempt 3", id="future-attempt"),
    pytest.param(running(2), ok(1), "step 1 (execute)", id="step-already-past"),
    pytest.param(running(1), ok(2), "step 2 (execute)", id="step-not-yet-reached"),
    pytest.param(
        running(1), ok(1, phase=COMPENSATE), "(compensate)", id="compensate-while-running"
    ),
    pytest.param(_compensating_at_1(), ok(1), "(execute)", id="execute-while-compensating"),
    pytest.param(_compensating_at_1(), ok(2, phase=COMPENSATE), "step 2", id="compensation-past"),
    pytest.param(
        InstanceState(SagaStatus.COMPLETED, 3, 1), ok(3), "already completed", id="completed"
    ),
    pytest.param(
        InstanceState(SagaStatus.COMPENSATED, 0, 1, error="x"),
        ok(0, phase=COMPENSATE),
        "already compensated",
        id="compensated",
    ),
    pytest.param(
        InstanceState(SagaStatus.PARKED, 1, 4, error="x"),
        ok(1, attempt=4, phase=COMPENSATE),
        "already parked",
        id="parked",
    ),
    pytest.param(running(1), ok(4), "step 4 does not exist", id="index-past-the-end"),
    pytest.param(running(1), ok(-1), "step -1 does not exist", id="negative-index"),
]


@pytest.mark.parametrize(("state", "event", "why"), STALE)
def test_a_stale_event_is_ignored_and_says_why(
    state: InstanceState, event: StepEvent, why: str
) -> None:
    for outcome in Outcome:
        stale = StepEvent(event.step_index, event.phase, event.attempt, outcome, {"x": 1})
        reason = assert_ignored(advance(BOOK, state, stale), state)
        assert why in reason


@pytest.mark.parametrize("outcome", [Outcome.ERROR, Outcome.TIMED_OUT])
def test_an_earlier_attempts_error_or_timeout_is_stale(outcome: Outcome) -> None:
    state = running(1, 2)
    late = StepEvent(1, EXECUTE, 1, outcome, {"x": 1}, reason="late")
    assert "attempt 1 but the step is at attempt 2" in assert_ignored(
        advance(BOOK, state, late), state
    )


def test_an_earlier_attempts_failed_compensation_is_stale() -> None:
    """A failed compensation is tried again, so it settles nothing."""
    state = replace(_compensating_at_1(), step_attempt=2)
    late = StepEvent(1, COMPENSATE, 1, Outcome.FAILED, {}, reason="late")
    assert "attempt 1" in assert_ignored(advance(BOOK, state, late), state)


@pytest.mark.parametrize("phase", [EXECUTE, COMPENSATE])
def test_an_earlier_attempts_settled_answer_stands_for_the_current_attempt(phase: Phase) -> None:
    """Every attempt is the same command (one message id, answered once from the inbox),
    so a late success or refusal of attempt 1 is attempt 2's answer too."""
    state = running(1, 2) if phase is EXECUTE else replace(_compensating_at_1(), step_attempt=2)
    late = advance(BOOK, state, StepEvent(1, phase, 1, Outcome.SUCCEEDED, {"auth": "a"}))
    expected = advance(BOOK, state, StepEvent(1, phase, 2, Outcome.SUCCEEDED, {"auth": "a"}))
    assert late.changed
    assert late == expected


def test_a_duplicate_reply_is_ignored() -> None:
    state = at_step(BOOK, 1)
    transition = advance(BOOK, state, ok(1, {"auth": "a"}))
    assert transition.changed
    duplicate = advance(BOOK, transition.state, ok(1, {"auth": "a"}))
    reason = assert_ignored(duplicate, transition.state)
    assert reason == "reply for step 1 (execute) but the saga is at step 2 (execute)"


# --- the saga's own deadline ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "compensate_first"),
    [(0, 0), (1, 1), (2, 2), (3, 2)],
    ids=STEP_NAMES,
)
def test_expire_compensates_from_the_current_step(index: int, compensate_first: int) -> None:
    state = at_step(BOOK, index)
    state = advance(BOOK, state, StepEvent(index, EXECUTE, 1, Outcome.TIMED_OUT)).state
    transition = expire(BOOK, state, "saga deadline passed")
    assert transition.changed
    assert transition.log == (
        LogEntry(index, EXECUTE, LogStatus.ABORTED, 2, error="saga deadline passed"),
        LogEntry(compensate_first, COMPENSATE, LogStatus.DISPATCHED, 1),
    )
    assert transition.dispatch == Dispatch(compensate_first, COMPENSATE, 1, 0.0)
    assert transition.state == InstanceState(
        SagaStatus.COMPENSATING, compensate_first, 1, state.context, "saga deadline passed"
    )
    sent, _, final = compensate_to_the_end(BOOK, transition)
    assert [d.step_index for d in sent] == list(range(compensate_first, -1, -1))
    assert final.status is SagaStatus.COMPENSATED
    assert final.error == "saga deadline passed"


def test_expire_at_a_retriable_only_step_parks_the_saga() -> None:
    definition = retriable_tail()
    transition = expire(definition, at_step(definition, 1), "too slow")
    assert transition.state.status is SagaStatus.PARKED
    assert transition.dispatch is None
    assert transition.state.error == "too slow; step 'award' is retriable-only"


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(InstanceState(SagaStatus.COMPLETED, 3, 1), id="completed"),
        pytest.param(InstanceState(SagaStatus.COMPENSATED, 0, 1, error="x"), id="compensated"),
        pytest.param(InstanceState(SagaStatus.PARKED, 1, 4, error="x"), id="parked"),
        pytest.param(_compensating_at_1(), id="compensating"),
    ],
)
def test_expire_ignores_a_saga_that_is_not_running(state: InstanceState) -> None:
    reason = assert_ignored(expire(BOOK, state, "deadline"), state)
    assert reason == f"saga is {state.status.value}, not running"


# --- message ids ---------------------------------------------------------------------------------


def test_command_message_id_is_deterministic_and_distinct() -> None:
    saga_a = uuid.UUID("00000000-0000-4000-8000-000000000001")
    saga_b = uuid.UUID("00000000-0000-4000-8000-000000000002")
    first = command_message_id(saga_a, 0, EXECUTE)
    assert first == command_message_id(uuid.UUID(str(saga_a)), 0, EXECUTE)
    assert first.version == 5
    ids = {
        command_message_id(saga, index, phase)
        for saga in (saga_a, saga_b)
        for index in range(4)
        for phase in Phase
    }
    assert len(ids) == 2 * 4 * 2
    assert command_message_id(saga_a, 1, EXECUTE) != command_message_id(saga_a, 1, COMPENSATE)
    assert command_message_id(saga_a, 1, EXECUTE) != command_message_id(saga_a, 2, EXECUTE)
    assert command_message_id(saga_a, 1, EXECUTE) != command_message_id(saga_b, 1, EXECUTE)


# --- property: every run ends, and undoes exactly what it did ---------------------------------


@st.composite
def definitions(draw: st.DrawFn) -> SagaDefinition:
    """1-6 steps: compensatable ones, then optionally a LAST step or a retriable-only tail."""
    count = draw(st.integers(min_value=1, max_value=6))
    ending = draw(st.sampled_from(["none", "last", "retriable"]))
    tail = 1 if ending == "last" else draw(st.integers(1, count)) if ending == "retriable" else 0
    steps: list[Step] = []
    for index in range(count):
        retry = RetryPolicy(max_attempts=draw(st.integers(1, 3)), initial_delay=0.01)
        compensation_retry = RetryPolicy(max_attempts=draw(st.integers(1, 3)), initial_delay=0.01)
        marker = None
        if index >= count - tail:
            marker = NoCompensation.LAST if ending == "last" else NoCompensation.RETRIABLE
        steps.append(
            Step(
                name=f"s{index}",
                journey="care",
                action=f"do_{index}",
                compensation=None if marker else f"undo_{index}",
                no_compensation=marker,
                retry=retry,
                compensation_retry=compensation_retry,
            )
        )
    return SagaDefinition("random", 1, steps).validate()


@dataclass
class Run:
    """What a property run saw, step by step."""

    dispatches: list[Dispatch] = field(default_factory=list)
    log: list[LogEntry] = field(default_factory=list)
    applied: list[StepEvent] = field(default_factory=list)
    changes: int = 0
    undo_from: int | None = None
    """The step compensation must start at (or below), once the forward run stopped."""
    parked_forward: bool = False
    """The forward run stopped at a retriable-only step, which parks instead."""

    def record(self, transition: Transition) -> None:
        self.changes += 1
        self.log.extend(transition.log)
        if transition.dispatch is not None:
            self.dispatches.append(transition.dispatch)
            dispatched = LogEntry(
                transition.dispatch.step_index,
                transition.dispatch.phase,
                LogStatus.DISPATCHED,
                transition.dispatch.attempt,
            )
            assert dispatched in transition.log

    def forward_stopped(
        self, definition: SagaDefinition, index: int, *, refused: bool, timed_out: bool = False
    ) -> None:
        """The model: a refusal committed nothing; an unknown outcome may have. A step
        that can never be undone parks instead: retriable-only ones always, the final one
        when its last attempt timed out (it may yet commit)."""
        assert self.undo_from is None
        assert not self.parked_forward
        step = definition.steps[index]
        if step.retriable_only or (timed_out and not step.compensatable):
            self.parked_forward = True
        else:
            self.undo_from = index - 1 if refused else index


def _matches(state: InstanceState, event: StepEvent) -> bool:
    # An earlier attempt's success, or a step's refusal, is the command's one answer.
    settled = [Outcome.SUCCEEDED] + ([Outcome.FAILED] if event.phase is EXECUTE else [])
    settles = event.attempt < state.step_attempt and event.outcome in settled
    return (
        state.status.in_flight
        and event.step_index == state.current_step
        and event.phase is state.phase
        and (event.attempt == state.step_attempt or settles)
    )


OUTCOMES = st.sampled_from(list(Outcome))
REPLY_OUTCOMES = st.sampled_from(
    [Outcome.SUCCEEDED] * 3 + [o for o in Outcome if o is not Outcome.SUCCEEDED]
)
"""A reply succeeds half the time, so runs reach every end state."""

MAX_INJECTED = 25
"""Stale, duplicate or expiry events one run may inject; past this every event is a reply."""


def _random_event(data: st.DataObject, count: int) -> StepEvent:
    return StepEvent(
        data.draw(st.integers(-1, count)),
        data.draw(st.sampled_from(list(Phase))),
        data.draw(st.integers(0, 4)),
        data.draw(OUTCOMES),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(definition=definitions(), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_every_run_ends_and_undoes_exactly_what_it_did(
    definition: SagaDefinition, data: st.DataObject, seed: int
) -> None:
    rng = random.Random(seed)
    count = len(definition.steps)
    bound = sum(s.retry.max_attempts + s.compensation_retry.max_attempts for s in definition.steps)
    run = Run()
    transition = begin(definition)
    run.record(transition)
    state = transition.state
    injected = 0

    for _ in range(bound + MAX_INJECTED + 1):
        if not state.status.in_flight:
            break
        pending = transition.dispatch
        assert pending is not None, "an in-flight saga must have a command out"
        assert (pending.step_index, pending.phase, pending.attempt) == (
            state.current_step,
            state.phase,
            state.step_attempt,
        )
        kind = "reply"
        if injected < MAX_INJECTED:
            kind = data.draw(st.sampled_from(["reply", "reply", "stale", "duplicate", "expire"]))
            injected += kind != "reply"

        if kind == "expire":
            nxt = expire(definition, state, "deadline")
            if state.status is not SagaStatus.RUNNING:
                assert_ignored(nxt, state)
                continue
            run.forward_stopped(definition, state.current_step, refused=False)
        else:
            if kind == "reply":
                outcome = data.draw(REPLY_OUTCOMES)
                # Every result writes "last", so a wrong merge order shows in the context.
                result = {f"s{pending.step_index}": pending.attempt, "last": pending.step_index}
                event = StepEvent(
                    pending.step_index, pending.phase, pending.attempt, outcome, result
                )
            elif kind == "duplicate" and run.applied:
                event = data.draw(st.sampled_from(run.applied))
                assert not _matches(state, event), "an applied event can never apply again"
            else:
                event = _random_event(data, count)
            nxt = advance(definition, state, event, rng=rng)
            if not _matches(state, event):
                assert_ignored(nxt, state)
                continue
            run.applied.append(event)
            step = definition.steps[event.step_index]
            if event.phase is EXECUTE and event.outcome is Outcome.FAILED:
                run.forward_stopped(definition, event.step_index, refused=True)
            elif (
                event.phase is EXECUTE
                and event.outcome is not Outcome.SUCCEEDED
                and event.attempt == step.retry.max_attempts
            ):
                run.forward_stopped(
                    definition,
                    event.step_index,
                    refused=False,
                    timed_out=event.outcome is Outcome.TIMED_OUT,
                )

        assert nxt.changed
        run.record(nxt)
        transition, state = nxt, nxt.state
        if state.status.in_flight:
            assert nxt.dispatch is not None
        else:
            assert nxt.dispatch is None

    hypothesis.event(f"ended {state.status.value}")

    # It terminated, within the number of attempts the definition allows.
    assert state.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.PARKED)
    assert run.changes <= bound + 1

    # A finished or parked saga ignores whatever still arrives.
    for late in [*run.applied, _random_event(data, count)]:
        assert_ignored(advance(definition, state, late), state)
    assert_ignored(expire(definition, state, "deadline"), state)

    executed = {d.step_index for d in run.dispatches if d.phase is EXECUTE}
    succeeded = [
        e.step_index for e in run.log if e.phase is EXECUTE and e.status is LogStatus.SUCCEEDED
    ]
    compensations = [d for d in run.dispatches if d.phase is COMPENSATE]
    undone = [
        e.step_index for e in run.log if e.phase is COMPENSATE and e.status is LogStatus.SUCCEEDED
    ]

    # No attempt beyond what the policies allow.
    for d in run.dispatches:
        policy = definition.steps[d.step_index].retry
        if d.phase is COMPENSATE:
            policy = definition.steps[d.step_index].compensation_retry
        assert 1 <= d.attempt <= policy.max_attempts
        assert 0 <= d.delay <= policy.max_delay

    # The context is the merge of every successful result, later ones winning.
    merged: dict[str, Any] = {}
    for entry in run.log:
        if entry.phase is EXECUTE and entry.status is LogStatus.SUCCEEDED:
            assert entry.response is not None
            merged.update(entry.response)
    assert state.context == merged

    # Steps run in order, each succeeds at most once; nothing runs after undoing starts.
    assert succeeded == list(range(len(succeeded)))
    if compensations:
        first_undo = run.dispatches.index(compensations[0])
        assert all(d.phase is COMPENSATE for d in run.dispatches[first_undo:])

    # Only what was dispatched is undone, each step once, in strictly decreasing order, and
    # exactly the steps the model says: from the failed step (or the one before, if it
    # refused) down to the first.
    assert {d.step_index for d in compensations} <= executed
    first_attempts = [d.step_index for d in compensations if d.attempt == 1]
    assert all(a > b for a, b in itertools.pairwise(first_attempts))
    assert all(a > b for a, b in itertools.pairwise(undone))
    assert len(undone) == len(set(undone))
    plan = []
    if run.undo_from is not None:
        plan = [i for i in range(run.undo_from, -1, -1) if definition.steps[i].compensatable]
    assert first_attempts == plan[: len(first_attempts)]

    if state.status is SagaStatus.COMPLETED:
        assert succeeded == list(range(count))
        assert run.undo_from is None
        assert not run.parked_forward
        assert not compensations
        assert state.error is None
    elif state.status is SagaStatus.COMPENSATED:
        assert state.error
        assert run.undo_from is not None
        assert first_attempts == plan
        assert undone == plan
        # Every step whose execute succeeded is undone exactly once.
        assert Counter(undone) >= Counter(succeeded)
    else:
        assert state.error
        if run.parked_forward:
            assert not compensations
        else:
            # A compensation ran out of attempts: the saga parks at that step.
            assert compensations
            parked_at = first_attempts[-1]
            assert state.current_step == parked_at
            assert definition.steps[parked_at].name in state.error
            tries = [d for d in compensations if d.step_index == parked_at]
            limit = definition.steps[parked_at].compensation_retry.max_attempts
            assert len(tries) == limit
