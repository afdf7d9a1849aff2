"""Parallel groups, waits and child sagas as definitions: their rules and their documents."""

from __future__ import annotations

import json
from typing import Any, cast

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
from saga.errors import ConfigurationError, DefinitionError
from saga.shapes import Position


def step(name: str, **overrides: Any) -> Step:
    fields: dict[str, Any] = {
        "name": name,
        "journey": "care",
        "action": name,
        "compensation": f"undo_{name}",
    }
    fields.update(overrides)
    return Step(**fields)


def final(name: str) -> Step:
    return step(name, compensation=None, no_compensation=NoCompensation.LAST)


def retriable(name: str) -> Step:
    return step(name, compensation=None, no_compensation=NoCompensation.RETRIABLE)


GROUP = Parallel("reserve", [step("slot"), step("coverage")])
WAIT = AwaitEvent("review", "claim_reviewed", 3600.0, when="context.needs_review")
CHILD = SubSaga(
    "credit",
    ("wellness_credit", 1),
    payload={"user_id": "payload.user_id", "amount_cents": "context.credit_cents"},
)
SHAPED = SagaDefinition("shaped", 1, [step("first"), GROUP, WAIT, CHILD, final("confirm")])

WELLNESS = SagaDefinition("wellness_credit", 1, [step("apply_credit")])
UNDOABLE_LATER = SagaDefinition("wellness_credit", 2, [step("apply"), final("notify")])


def test_every_shape_round_trips_through_its_stored_document() -> None:
    document = json.loads(json.dumps(SHAPED.to_document()))
    assert [position.get("kind") for position in document] == [
        None,
        "parallel",
        "await_event",
        "sub_saga",
        None,
    ]
    copy = SagaDefinition.from_document("shaped", 1, document)
    assert copy == SHAPED
    assert copy.content_hash == SHAPED.content_hash


def test_a_plain_step_is_stored_without_a_kind_and_keeps_its_hash() -> None:
    plain = SagaDefinition("plain", 1, [step("a"), final("b")])
    assert all("kind" not in position for position in plain.to_document())
    assert SagaDefinition.from_document("plain", 1, plain.to_document()) == plain


def test_shapes_change_the_hash() -> None:
    plain = SagaDefinition("shaped", 1, [step("first"), final("confirm")])
    assert SHAPED.content_hash != plain.content_hash


def test_an_unknown_kind_is_refused_with_a_clear_error() -> None:
    stored = [*SHAPED.to_document()[:1], {"kind": "loop", "name": "again"}]
    with pytest.raises(ConfigurationError, match="kind 'loop', which this engine does not know"):
        SagaDefinition.from_document("shaped", 1, stored)


def test_on_timeout_may_be_given_as_text() -> None:
    wait = AwaitEvent("review", "reviewed", 5.0, on_timeout=cast(Any, "continue"))
    assert wait.on_timeout is OnTimeout.CONTINUE


def test_steps_answers_only_for_a_straight_line() -> None:
    assert SHAPED.validate() is SHAPED
    assert not SHAPED.straight_line
    with pytest.raises(ConfigurationError, match="parallel group at position 1 \\('reserve'\\)"):
        _ = SHAPED.steps
    plain = SagaDefinition("plain", 1, [step("a")])
    assert plain.straight_line
    assert plain.steps == (step("a"),)


def test_children_are_checked_when_given() -> None:
    assert SHAPED.validate(children={WELLNESS.key: WELLNESS}) is SHAPED
    with pytest.raises(DefinitionError, match="'wellness_credit' v1 is not registered"):
        SHAPED.validate(children={})


def test_a_child_that_cannot_be_undone_is_refused_where_it_may_need_undoing() -> None:
    later = SubSaga("credit", UNDOABLE_LATER.key)
    children = {UNDOABLE_LATER.key: UNDOABLE_LATER}
    refused = SagaDefinition("parent", 1, [later, final("confirm")])
    with pytest.raises(DefinitionError, match="step 'notify' of 'wellness_credit' v2 has no comp"):
        refused.validate(children=children)
    # As the final position nothing after it can fail, so it never needs undoing.
    SagaDefinition("parent", 1, [step("first"), later]).validate(children=children)


def test_a_cycle_of_children_is_refused() -> None:
    a = SagaDefinition("a", 1, [SubSaga("to_b", ("b", 1)), final("end")])
    b = SagaDefinition("b", 1, [SubSaga("to_a", ("a", 1)), final("end")])
    with pytest.raises(DefinitionError, match="cycle"):
        a.validate(children={a.key: a, b.key: b})


MISTAKES = [
    pytest.param(
        [Parallel("g", [step("a")])], "g", "at least two branches, got 1", id="one-branch"
    ),
    pytest.param(
        [step("a"), Parallel("g", [step("a"), step("b")])],
        "a",
        "used twice (names are unique across the saga",
        id="branch-name-reused",
    ),
    pytest.param(
        [Parallel("g", [step("a"), step("g")])], "g", "used twice", id="branch-named-as-group"
    ),
    pytest.param(
        [Parallel("g", [step("a"), final("b")]), final("c")],
        "b",
        "group 'g' is not the final step",
        id="uncompensatable-branch-not-last",
    ),
    pytest.param(
        [Parallel("g", [step("a"), retriable("b")])],
        "b",
        "cannot be retriable-only",
        id="retriable-branch",
    ),
    pytest.param(
        [Parallel("g", [step("a"), cast(Any, "b")])],
        "g",
        "branch 1 is a str, not a Step",
        id="branch-not-a-step",
    ),
    pytest.param(
        [retriable("r"), Parallel("g", [step("a"), step("b")])],
        "g",
        "a parallel group cannot follow the retriable-only step 'r'",
        id="group-after-retriable",
    ),
    pytest.param(
        [AwaitEvent("w", "Bad Event", 1.0)], "w", "event must be a lower-case", id="bad-event"
    ),
    pytest.param(
        [AwaitEvent("w", "e", 0.0)], "w", "timeout must be a finite number", id="wait-timeout"
    ),
    pytest.param(
        [AwaitEvent("w", "e", 1.0, on_timeout=cast(Any, "retry"))],
        "w",
        "on_timeout must be 'compensate' or 'continue', got 'retry'",
        id="bad-on-timeout",
    ),
    pytest.param(
        [AwaitEvent("w", "e", 1.0, when="needs_review")],
        "w",
        "when: 'needs_review' is not a reference",
        id="bad-when",
    ),
    pytest.param(
        [retriable("r"), AwaitEvent("w", "e", 1.0)],
        "w",
        "a wait that compensates on timeout cannot follow",
        id="compensating-wait-after-retriable",
    ),
    pytest.param(
        [SubSaga("c", ("child", 1), payload={"x": "globals.x"})],
        "c",
        "child payload: 'globals.x' is not a reference",
        id="bad-child-reference",
    ),
    pytest.param(
        [SubSaga("c", ("child", 1), payload={"1x": "payload.x"})],
        "c",
        "child payload: '1x' is not a field name",
        id="bad-child-field",
    ),
    pytest.param([SubSaga("c", ("Child", 0))], "c", "a (name, version) pair", id="bad-child-key"),
    pytest.param([SubSaga("c", ("shapes", 1))], "c", "starts itself", id="self-child"),
    pytest.param(
        [SubSaga("c", ("child", 1), check_every=0)],
        "c",
        "check_every must be a finite number > 0 seconds, got 0",
        id="child-check-every",
    ),
    pytest.param(
        [retriable("r"), SubSaga("c", ("child", 1))],
        "c",
        "a child saga (it may end compensated)",
        id="child-after-retriable",
    ),
]


@pytest.mark.parametrize(("positions", "at", "problem"), MISTAKES)
def test_a_shape_mistake_names_the_definition_and_the_position(
    positions: list[Position], at: str, problem: str
) -> None:
    with pytest.raises(DefinitionError) as caught:
        SagaDefinition("shapes", 1, positions).validate()
    assert caught.value.definition == "shapes"
    assert caught.value.step == at
    assert problem in caught.value.problem


def test_a_wait_that_continues_may_follow_a_retriable_step() -> None:
    waits = AwaitEvent("w", "e", 1.0, on_timeout=OnTimeout.CONTINUE)
    SagaDefinition("shapes", 1, [step("a"), retriable("r"), waits, retriable("s")]).validate()


def test_a_final_group_may_hold_a_branch_without_compensation() -> None:
    group = Parallel("g", [step("a"), final("b")])
    SagaDefinition("shapes", 1, [step("first"), group]).validate()
