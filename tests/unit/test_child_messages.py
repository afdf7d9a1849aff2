"""The messages between a parent saga and its child: ids derived from the link, a notice
only when a child's transition ends it, and envelopes that decode as what they are."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from saga.coordinator.children import (
    child_check,
    child_end_notice,
    child_saga_id,
    compensate_child_request,
)
from saga.definition import SagaDefinition, Step
from saga.errors import MalformedMessage
from saga.machine import ChildLink, CompensateChild, InstanceState, Phase, SagaStatus
from saga.messages import ChildEnd, CompensateChildRequest, decode
from saga.shapes import SubSaga
from saga.step import NoCompensation
from saga.store.records import InstanceRow, ParentLink

PARENT = uuid.UUID("00000000-0000-4000-8000-000000000001")
REPLIES = "test.replies"


def child_row(status: SagaStatus, *, parent: ParentLink | None) -> InstanceRow:
    state = InstanceState(status, 1, 1, {"credit_id": "c-1"}, None)
    child_id = child_saga_id(PARENT, 2, 1)
    return InstanceRow(child_id, "credit", 1, state, {}, 3, None, parent=parent)


def test_a_childs_id_is_derived_from_its_parent_position_and_attempt() -> None:
    assert child_saga_id(PARENT, 2, 1) == child_saga_id(PARENT, 2, 1)
    ids = {child_saga_id(PARENT, 2, 1), child_saga_id(PARENT, 2, 2), child_saga_id(PARENT, 3, 1)}
    assert len(ids) == 3


@pytest.mark.parametrize(
    "ended", [SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.ABORTED]
)
def test_a_child_ending_tells_its_parent_position_and_attempt(ended: SagaStatus) -> None:
    link = ParentLink(PARENT, 2, 1)
    row = child_end_notice(
        child_row(SagaStatus.RUNNING, parent=link), ended, {"credit_id": "c-1"}, "why", REPLIES
    )
    assert row is not None
    assert (row.topic, row.key) == (REPLIES, str(PARENT))
    message = decode(row.payload)
    assert isinstance(message, ChildEnd)
    assert (message.saga_id, message.step_index, message.attempt) == (PARENT, 2, 1)
    assert (message.status, message.context, message.error) == (ended, {"credit_id": "c-1"}, "why")
    assert message.child_id == child_saga_id(PARENT, 2, 1)


@pytest.mark.parametrize(
    ("before", "after", "linked"),
    [
        pytest.param(SagaStatus.RUNNING, SagaStatus.COMPLETED, False, id="no-parent"),
        pytest.param(SagaStatus.RUNNING, SagaStatus.PARKED, True, id="parked-is-no-end"),
        pytest.param(SagaStatus.RUNNING, SagaStatus.COMPENSATING, True, id="still-running"),
        pytest.param(SagaStatus.COMPLETED, SagaStatus.COMPLETED, True, id="no-change"),
    ],
)
def test_no_notice_unless_the_transition_ends_a_child(
    before: SagaStatus, after: SagaStatus, linked: bool
) -> None:
    link = ParentLink(PARENT, 2, 1) if linked else None
    assert child_end_notice(child_row(before, parent=link), after, {}, None, REPLIES) is None


def test_a_completed_child_undone_later_tells_its_parent_again() -> None:
    link = ParentLink(PARENT, 2, 1)
    done = child_end_notice(
        child_row(SagaStatus.RUNNING, parent=link), SagaStatus.COMPLETED, {}, None, REPLIES
    )
    undone = child_end_notice(
        child_row(SagaStatus.COMPENSATING, parent=link), SagaStatus.COMPENSATED, {}, None, REPLIES
    )
    assert done is not None
    assert undone is not None
    assert done.message_id != undone.message_id


def test_a_request_to_compensate_goes_to_the_child_and_each_ask_is_its_own_message() -> None:
    parent_row = InstanceRow(
        PARENT, "parent", 1, InstanceState(SagaStatus.COMPENSATING, 2, 1), {}, 7, None
    )
    row = compensate_child_request(parent_row, 2, 1, "confirm refused", REPLIES)
    message = decode(row.payload)
    assert isinstance(message, CompensateChildRequest)
    child_id = child_saga_id(PARENT, 2, 1)
    assert (row.key, message.saga_id, message.parent_id) == (str(child_id), child_id, PARENT)
    assert message.reason == "confirm refused"
    later = InstanceRow(
        PARENT, "parent", 1, InstanceState(SagaStatus.COMPENSATING, 2, 1), {}, 9, None
    )
    again = compensate_child_request(later, 2, 1, "confirm refused", REPLIES)
    assert again.message_id != row.message_id


def test_a_child_message_with_a_bad_status_is_refused_naming_it() -> None:
    link = ParentLink(PARENT, 2, 1)
    row = child_end_notice(
        child_row(SagaStatus.RUNNING, parent=link), SagaStatus.COMPLETED, {}, None, REPLIES
    )
    assert row is not None
    spoiled = row.payload.replace(b'"completed"', b'"finished"')
    with pytest.raises(MalformedMessage, match="status"):
        decode(spoiled)


# --- the parent's look at its child (child_check) ---------------------------------------------

CREDIT = SagaDefinition(
    "credit", 1, [Step(name="grant", journey="plan", action="grant", compensation="revoke")]
)
PARENT_DEFINITION = SagaDefinition(
    "goal",
    1,
    [
        Step(name="complete", journey="health", action="complete", compensation="reopen"),
        SubSaga("credit", CREDIT.key, check_every=5.0),
        Step(
            name="notify",
            journey="gamification",
            action="notify",
            no_compensation=NoCompensation.LAST,
        ),
    ],
)


def waiting_parent(phase: Phase) -> InstanceRow:
    status = SagaStatus.RUNNING if phase is Phase.EXECUTE else SagaStatus.COMPENSATING
    error = None if phase is Phase.EXECUTE else "step 'notify' failed: refused"
    state = InstanceState(status, 1, 1, {}, error, child=ChildLink(1, phase))
    return InstanceRow(PARENT, "goal", 1, state, {}, 7, None)


def child_in(status: SagaStatus, context: dict[str, Any] | None = None) -> InstanceRow:
    state = InstanceState(status, 0, 1, context or {}, None)
    link = ParentLink(PARENT, 1, 1)
    return InstanceRow(child_saga_id(PARENT, 1, 1), "credit", 1, state, {}, 4, None, parent=link)


def test_a_completed_child_whose_end_was_lost_moves_its_parent_on() -> None:
    decided = child_check(
        PARENT_DEFINITION,
        waiting_parent(Phase.EXECUTE),
        child_in(SagaStatus.COMPLETED, {"credit_id": "c-1"}),
    )
    assert decided.ignored is None
    assert decided.state.current_step == 2
    assert decided.state.context == {"credit": {"credit_id": "c-1"}}
    assert decided.dispatch is not None
    assert decided.dispatch.step_index == 2


def test_a_compensated_child_whose_end_was_lost_compensates_its_parent() -> None:
    decided = child_check(
        PARENT_DEFINITION, waiting_parent(Phase.EXECUTE), child_in(SagaStatus.COMPENSATED)
    )
    assert decided.state.status is SagaStatus.COMPENSATING
    assert decided.state.current_step == 0


@pytest.mark.parametrize(
    "status", [SagaStatus.RUNNING, SagaStatus.WAITING, SagaStatus.COMPENSATING, SagaStatus.PARKED]
)
def test_a_child_not_ended_leaves_the_parent_as_it_is(status: SagaStatus) -> None:
    parent = waiting_parent(Phase.EXECUTE)
    decided = child_check(PARENT_DEFINITION, parent, child_in(status))
    assert (decided.ignored, decided.state, decided.log) == (None, parent.state, ())
    assert decided.compensate_child is None


@pytest.mark.parametrize("status", [SagaStatus.COMPLETED, SagaStatus.RUNNING, SagaStatus.WAITING])
def test_a_child_that_did_not_act_on_the_request_to_compensate_is_asked_again(
    status: SagaStatus,
) -> None:
    parent = waiting_parent(Phase.COMPENSATE)
    decided = child_check(PARENT_DEFINITION, parent, child_in(status))
    assert decided.state == parent.state
    assert decided.compensate_child == CompensateChild(1, 1)


def test_a_child_compensating_on_request_is_left_to_finish() -> None:
    parent = waiting_parent(Phase.COMPENSATE)
    decided = child_check(PARENT_DEFINITION, parent, child_in(SagaStatus.COMPENSATING))
    assert (decided.state, decided.compensate_child) == (parent.state, None)


def test_a_child_compensated_on_request_lets_the_parent_go_on_undoing() -> None:
    decided = child_check(
        PARENT_DEFINITION, waiting_parent(Phase.COMPENSATE), child_in(SagaStatus.COMPENSATED)
    )
    assert decided.state.status is SagaStatus.COMPENSATING
    assert decided.state.current_step == 0


def test_a_child_gone_from_the_log_parks_its_parent() -> None:
    decided = child_check(PARENT_DEFINITION, waiting_parent(Phase.EXECUTE), None)
    assert decided.state.status is SagaStatus.PARKED
    assert "is gone" in (decided.state.error or "")
