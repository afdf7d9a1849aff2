"""Saga definitions: validation names the definition and the step; documents round-trip."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, cast

import pytest

from saga.definition import IsolationLevel, NoCompensation, SagaDefinition, Step
from saga.errors import ConfigurationError, DefinitionError
from saga.retry import RetryPolicy

NAME = "book_appointment"


def compensatable(name: str, **overrides: Any) -> Step:
    fields: dict[str, Any] = {
        "name": name,
        "journey": "care",
        "action": name,
        "compensation": f"undo_{name}",
    }
    fields.update(overrides)
    return Step(**fields)


def last(name: str, **overrides: Any) -> Step:
    return compensatable(name, compensation=None, no_compensation=NoCompensation.LAST, **overrides)


def retriable(name: str, **overrides: Any) -> Step:
    return compensatable(
        name, compensation=None, no_compensation=NoCompensation.RETRIABLE, **overrides
    )


def book_appointment(**overrides: Any) -> SagaDefinition:
    """The shipped shape: three compensatable steps, then a final step that needs no undo."""
    steps = [
        Step(
            name="reserve_slot",
            journey="care",
            action="reserve_slot",
            compensation="release_slot",
        ),
        Step(
            name="authorize_coverage",
            journey="plan",
            action="authorize_coverage",
            compensation="void_authorization",
            isolation=IsolationLevel.SERIALIZABLE,
            timeout=2.5,
            retry=RetryPolicy(max_attempts=4, initial_delay=0.1, max_delay=1.0),
        ),
        Step(
            name="award_points",
            journey="gamification",
            action="award_points",
            compensation="revoke_points",
            compensation_retry=RetryPolicy(max_attempts=20, initial_delay=0.2, max_delay=10.0),
        ),
        Step(
            name="confirm_appointment",
            journey="care",
            action="confirm_appointment",
            no_compensation=NoCompensation.LAST,
        ),
    ]
    return SagaDefinition(NAME, 1, steps, **overrides)


# --- valid definitions -------------------------------------------------------------------


@pytest.mark.parametrize(
    "definition",
    [
        pytest.param(book_appointment(), id="book-appointment"),
        pytest.param(book_appointment(timeout=30.0), id="with-saga-timeout"),
        pytest.param(SagaDefinition("one", 1, [compensatable("a")]), id="one-compensatable"),
        pytest.param(SagaDefinition("one", 1, [last("a")]), id="only-a-last-step"),
        pytest.param(
            SagaDefinition("tail", 3, [compensatable("a"), retriable("b"), retriable("c")]),
            id="retriable-tail",
        ),
        pytest.param(
            SagaDefinition("all.comp-2", 1, [compensatable("a"), compensatable("b")]),
            id="dots-and-dashes-in-name",
        ),
    ],
)
def test_a_valid_definition_passes_and_returns_itself(definition: SagaDefinition) -> None:
    assert definition.validate() is definition


def test_steps_are_stored_as_a_tuple() -> None:
    steps = [compensatable("a"), last("b")]
    definition = SagaDefinition("x", 1, steps)
    steps.append(compensatable("c"))
    assert definition.steps == (compensatable("a"), last("b"))
    assert definition.key == ("x", 1)


def test_step_properties() -> None:
    step = compensatable("a", timeout=2.5)
    assert step.compensatable
    assert not step.retriable_only
    assert step.timeout_ms == 2500
    assert not last("b").compensatable
    assert retriable("c").retriable_only
    assert compensatable("d", timeout=0.0001).timeout_ms == 1


def test_each_attempt_waits_twice_as_long_for_its_reply_up_to_four_timeouts() -> None:
    step = compensatable("reserve_slot", timeout=5.0)
    waits = [step.reply_wait(attempt) for attempt in range(1, 6)]
    assert waits == [5.0, 10.0, 20.0, 20.0, 20.0]
    assert step.timeout_ms == 5000  # the participant's statement timeout does not grow


def test_to_document_is_plain_json() -> None:
    document = book_appointment().to_document()
    assert json.loads(json.dumps(document)) == document
    assert document[1] == {
        "name": "authorize_coverage",
        "journey": "plan",
        "action": "authorize_coverage",
        "compensation": "void_authorization",
        "no_compensation": None,
        "isolation": "SERIALIZABLE",
        "timeout": 2.5,
        "retry": {
            "max_attempts": 4,
            "initial_delay": 0.1,
            "multiplier": 2.0,
            "max_delay": 1.0,
            "jitter": 1.0,
        },
        "compensation_retry": {
            "max_attempts": 10,
            "initial_delay": 0.05,
            "multiplier": 2.0,
            "max_delay": 5.0,
            "jitter": 1.0,
        },
    }
    assert document[3]["no_compensation"] == "last"
    assert document[3]["compensation"] is None


@pytest.mark.parametrize("through_json", [False, True], ids=["in-memory", "through-json"])
def test_round_trip_through_the_document_keeps_content_and_hash(through_json: bool) -> None:
    original = book_appointment(timeout=60.0)
    document = original.to_document()
    if through_json:
        document = json.loads(json.dumps(document))
    copy = SagaDefinition.from_document(NAME, 1, document, timeout=60.0)
    assert copy == original
    assert copy.steps == original.steps
    assert copy.content_hash == original.content_hash
    assert copy.validate() is copy
    assert copy.steps[3].no_compensation is NoCompensation.LAST
    assert copy.steps[1].isolation is IsolationLevel.SERIALIZABLE


def test_round_trip_of_a_retriable_tail() -> None:
    original = SagaDefinition("tail", 2, [compensatable("a"), retriable("b")])
    copy = SagaDefinition.from_document("tail", 2, json.loads(json.dumps(original.to_document())))
    assert copy == original
    assert copy.content_hash == original.content_hash
    assert copy.steps[1].retriable_only


def test_round_trip_keeps_the_hash_when_a_timeout_is_a_whole_number() -> None:
    original = SagaDefinition("x", 1, [compensatable("a", timeout=5)])
    copy = SagaDefinition.from_document("x", 1, original.to_document())
    assert copy.content_hash == original.content_hash


def test_content_hash_is_stable() -> None:
    first, second = book_appointment(), book_appointment()
    assert first is not second
    assert first.content_hash == second.content_hash
    assert first.content_hash == first.content_hash
    assert len(first.content_hash) == 64
    int(first.content_hash, 16)
    same_values = dataclasses.replace(first.steps[1], isolation=IsolationLevel.SERIALIZABLE)
    rebuilt = SagaDefinition(NAME, 1, [first.steps[0], same_values, *first.steps[2:]])
    assert rebuilt.content_hash == first.content_hash


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"isolation": IsolationLevel.REPEATABLE_READ}, id="isolation"),
        pytest.param({"timeout": 2.75}, id="timeout"),
        pytest.param(
            {"retry": RetryPolicy(max_attempts=5, initial_delay=0.1, max_delay=1.0)},
            id="retry-max-attempts",
        ),
        pytest.param(
            {"retry": RetryPolicy(max_attempts=4, initial_delay=0.1, max_delay=1.0, jitter=0.5)},
            id="retry-jitter",
        ),
        pytest.param(
            {"compensation_retry": RetryPolicy(max_attempts=11, initial_delay=0.05, max_delay=5)},
            id="compensation-retry",
        ),
        pytest.param({"compensation": "cancel_authorization"}, id="compensation"),
        pytest.param({"action": "authorize_cover"}, id="action"),
        pytest.param({"journey": "health"}, id="journey"),
        pytest.param({"name": "authorize"}, id="name"),
        pytest.param(
            {"compensation": None, "no_compensation": NoCompensation.RETRIABLE},
            id="compensation-to-retriable",
        ),
    ],
)
def test_content_hash_changes_with_any_step_field(change: dict[str, Any]) -> None:
    original = book_appointment()
    changed_step = dataclasses.replace(original.steps[1], **change)
    assert changed_step != original.steps[1]
    changed = SagaDefinition(NAME, 1, [original.steps[0], changed_step, *original.steps[2:]])
    assert changed.content_hash != original.content_hash


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(SagaDefinition(NAME, 2, book_appointment().steps), id="version"),
        pytest.param(SagaDefinition("book_visit", 1, book_appointment().steps), id="name"),
        pytest.param(book_appointment(timeout=10.0), id="saga-timeout"),
        pytest.param(
            SagaDefinition(NAME, 1, [book_appointment().steps[i] for i in (1, 0, 2, 3)]),
            id="step-order",
        ),
        pytest.param(SagaDefinition(NAME, 1, book_appointment().steps[:3]), id="fewer-steps"),
    ],
)
def test_content_hash_changes_with_the_definition(changed: SagaDefinition) -> None:
    assert changed.content_hash != book_appointment().content_hash


# --- mistakes ------------------------------------------------------------------------------


def test_a_step_with_bad_values_can_be_built_validation_comes_later() -> None:
    step = Step(
        name="Bad Name",
        journey="",
        action="",
        compensation="",
        no_compensation=NoCompensation.LAST,
        isolation=cast(Any, "CHAOS"),
        timeout=-1,
    )
    assert step.timeout == -1
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.timeout = 1.0  # type: ignore[misc]


STEP_MISTAKES = [
    pytest.param(
        [compensatable("a"), compensatable("a", action="other")],
        "a",
        "used twice",
        id="duplicate-step-names",
    ),
    pytest.param(
        [compensatable("a"), compensatable("b", compensation=None)],
        "b",
        "no compensation",
        id="missing-compensation-no-marker",
    ),
    pytest.param(
        [compensatable("a"), last("b"), compensatable("c")],
        "b",
        "not the final step",
        id="last-on-a-non-final-step",
    ),
    pytest.param(
        [compensatable("a"), retriable("b"), compensatable("c")],
        "c",
        "retriable-only step 'b'",
        id="compensatable-after-retriable",
    ),
    pytest.param(
        [compensatable("a"), retriable("b"), last("c")],
        "c",
        "retriable-only step 'b'",
        id="last-after-retriable",
    ),
    pytest.param(
        [compensatable("a", no_compensation=NoCompensation.LAST)],
        "a",
        "names a compensation and says it needs none",
        id="compensation-and-no-compensation",
    ),
    pytest.param(
        [compensatable("a", no_compensation=NoCompensation.RETRIABLE)],
        "a",
        "names a compensation and says it needs none",
        id="compensation-and-retriable",
    ),
    pytest.param(
        [compensatable("a", compensation="a")],
        "a",
        "compensation is the action itself",
        id="compensation-equals-action",
    ),
    pytest.param(
        [compensatable("a", compensation="Undo A")],
        "a",
        "the compensation must be a lower-case identifier",
        id="bad-compensation-name",
    ),
    pytest.param(
        [compensatable("a", isolation=cast(Any, "CHAOS"))],
        "a",
        "unknown isolation level 'CHAOS'",
        id="unknown-isolation-string",
    ),
    pytest.param(
        [compensatable("a", isolation=cast(Any, "SERIALIZABLE"))],
        "a",
        "isolation must be an IsolationLevel",
        id="isolation-as-plain-string",
    ),
    pytest.param(
        [compensatable("a", timeout=0)],
        "a",
        "timeout must be a finite number > 0 seconds, got 0",
        id="timeout-zero",
    ),
    pytest.param(
        [compensatable("a", timeout=-1)],
        "a",
        "timeout must be a finite number > 0 seconds, got -1",
        id="timeout-negative",
    ),
    pytest.param(
        [compensatable("a", timeout=True)],
        "a",
        "timeout must be a finite number > 0 seconds, got True",
        id="timeout-bool",
    ),
    pytest.param(
        [compensatable("a", timeout=float("nan"))],
        "a",
        "timeout must be a finite number > 0 seconds",
        id="timeout-nan",
    ),
    pytest.param(
        [compensatable("a", timeout=cast(Any, "5"))],
        "a",
        "timeout must be a finite number > 0 seconds, got '5'",
        id="timeout-string",
    ),
    pytest.param(
        [compensatable("a"), compensatable("Reserve Slot")],
        "Reserve Slot",
        "step name must be",
        id="step-name-with-capitals-and-space",
    ),
    pytest.param(
        [compensatable("1st")],
        "1st",
        "step name must be",
        id="step-name-starting-with-a-digit",
    ),
    pytest.param(
        [compensatable("a" * 101)],
        "a" * 101,
        "step name must be",
        id="step-name-too-long",
    ),
    pytest.param(
        [compensatable("a", journey="Care")],
        "a",
        "the journey must be a lower-case identifier, got 'Care'",
        id="bad-journey",
    ),
    pytest.param(
        [compensatable("a", journey="")],
        "a",
        "the journey must be a lower-case identifier, got ''",
        id="empty-journey",
    ),
    pytest.param(
        [compensatable("a", action="reserve slot")],
        "a",
        "the action must be a lower-case identifier, got 'reserve slot'",
        id="bad-action",
    ),
    pytest.param(
        [compensatable("a", action=cast(Any, None))],
        "a",
        "the action must be a lower-case identifier, got None",
        id="action-none",
    ),
    pytest.param(
        [compensatable("a", retry=cast(Any, {"max_attempts": 3}))],
        "a",
        "retry must be a RetryPolicy",
        id="retry-not-a-policy",
    ),
    pytest.param(
        [compensatable("a", compensation=None, no_compensation=cast(Any, "last"))],
        "a",
        "unknown no_compensation 'last'",
        id="no-compensation-as-plain-string",
    ),
]


@pytest.mark.parametrize(("steps", "step", "problem"), STEP_MISTAKES)
def test_a_step_mistake_names_the_definition_and_the_step(
    steps: list[Step], step: str, problem: str
) -> None:
    definition = SagaDefinition(NAME, 1, steps)
    with pytest.raises(DefinitionError) as caught:
        definition.validate()
    error = caught.value
    assert isinstance(error, ConfigurationError)
    assert error.definition == NAME
    assert error.step == step
    assert problem in error.problem
    message = str(error)
    assert message.startswith(f"saga definition {NAME!r}, step {step!r}: ")
    assert problem in message


DEFINITION_MISTAKES = [
    pytest.param(SagaDefinition(NAME, 1, []), "it has no steps", id="no-steps"),
    pytest.param(
        SagaDefinition(NAME, 0, [compensatable("a")]),
        "version must be an integer >= 1, got 0",
        id="version-zero",
    ),
    pytest.param(
        SagaDefinition(NAME, -3, [compensatable("a")]),
        "version must be an integer >= 1, got -3",
        id="version-negative",
    ),
    pytest.param(
        SagaDefinition(NAME, True, [compensatable("a")]),
        "version must be an integer >= 1, got True",
        id="version-bool",
    ),
    pytest.param(
        SagaDefinition(NAME, cast(Any, "1"), [compensatable("a")]),
        "version must be an integer >= 1, got '1'",
        id="version-string",
    ),
    pytest.param(
        SagaDefinition(NAME, 1, [compensatable("a")], timeout=0),
        "saga timeout must be a finite number > 0 seconds, got 0",
        id="saga-timeout-zero",
    ),
    pytest.param(
        SagaDefinition(NAME, 1, [compensatable("a")], timeout=-5.0),
        "saga timeout must be a finite number > 0 seconds, got -5.0",
        id="saga-timeout-negative",
    ),
    pytest.param(
        SagaDefinition(NAME, 1, [cast(Any, {"name": "a"})]),
        "step 0 is a dict, not a Step",
        id="step-not-a-step",
    ),
]


@pytest.mark.parametrize(("definition", "problem"), DEFINITION_MISTAKES)
def test_a_definition_mistake_names_the_definition(
    definition: SagaDefinition, problem: str
) -> None:
    with pytest.raises(DefinitionError) as caught:
        definition.validate()
    error = caught.value
    assert error.definition == NAME
    assert error.step is None
    assert problem in error.problem
    assert str(error) == f"saga definition {NAME!r}: {error.problem}"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("BookAppointment", id="capitals"),
        pytest.param("book appointment", id="space"),
        pytest.param("9lives", id="starts-with-digit"),
        pytest.param("_private", id="starts-with-underscore"),
        pytest.param("b" * 101, id="too-long"),
        pytest.param("book/appointment", id="slash"),
    ],
)
def test_a_bad_definition_name_is_refused_and_named(name: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        SagaDefinition(name, 1, [compensatable("a")]).validate()
    assert caught.value.definition == name
    assert caught.value.step is None
    assert str(caught.value).startswith(f"saga definition {name!r}: the name must be")


def test_the_first_mistake_is_reported() -> None:
    definition = SagaDefinition(
        NAME, 1, [compensatable("a", timeout=0), compensatable("b", compensation=None)]
    )
    with pytest.raises(DefinitionError, match="step 'a'"):
        definition.validate()


def test_an_empty_step_name_still_says_which_step() -> None:
    definition = SagaDefinition(NAME, 1, [compensatable("a"), compensatable("")])
    with pytest.raises(DefinitionError) as caught:
        definition.validate()
    assert caught.value.step  # something that identifies the second step, e.g. its index
    assert "step" in str(caught.value).split(":")[0]


def test_a_bool_saga_timeout_is_refused() -> None:
    with pytest.raises(DefinitionError, match="saga timeout"):
        SagaDefinition(NAME, 1, [compensatable("a")], timeout=True).validate()


def test_an_infinite_step_timeout_is_refused() -> None:
    with pytest.raises(DefinitionError, match="timeout"):
        SagaDefinition(NAME, 1, [compensatable("a", timeout=float("inf"))]).validate()
