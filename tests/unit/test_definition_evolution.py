"""Definitions that can evolve: a stored definition keeps its document and content hash
when the engine gains optional fields, so re-registering it after an upgrade is a no-op
rather than a :class:`~saga.errors.DefinitionConflict`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import pytest

from journeys.care.sagas import BOOK_APPOINTMENT
from journeys.health.sagas import COMPLETE_HEALTH_GOAL
from journeys.plan.sagas import SUBMIT_CLAIM
from saga import ConfigurationError, NoCompensation, RetryPolicy, SagaDefinition, Step

# The hashes these definitions were stored with before documents could evolve (computed
# at commit 7ba1e2f). If one changes, every database that stored it refuses the next
# deploy's register: publish a new version instead, or make the new field optional.
PINNED_HASHES = {
    "book_appointment": "a323ec6e0a5abda4a80891cb995372af4e75fc91198bd5ee557f22775545488b",
    "submit_claim": "a57f9fad46928af9625cda21de54a303920f6fe375e38979aa55648e54afcd0e",
    "complete_health_goal": "5f1b8df463fe89230b39c373cc19830cfe57a0617ab03685ffefca35bddbd9a9",
}


@pytest.mark.parametrize(
    "definition", [BOOK_APPOINTMENT, SUBMIT_CLAIM, COMPLETE_HEALTH_GOAL], ids=lambda d: d.name
)
def test_the_journey_sagas_keep_their_stored_hashes(definition: SagaDefinition) -> None:
    assert definition.content_hash == PINNED_HASHES[definition.name]


class Lane(StrEnum):
    NORMAL = "normal"
    EXPRESS = "express"


# What a later engine's Step might look like: two optional fields more.
@dataclass(frozen=True, slots=True, kw_only=True)
class LaterStep(Step):
    priority: int = 0
    lane: Lane | None = None
    fallback_retry: RetryPolicy | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LaterRetryPolicy(RetryPolicy):
    give_up_after: float | None = None


def step_of(kind: type[Step], **extra: object) -> Step:
    return kind(name="reserve", journey="care", action="reserve", compensation="release", **extra)  # type: ignore[arg-type]


def saga_of(step: Step) -> SagaDefinition:
    last = Step(
        name="confirm", journey="care", action="confirm", no_compensation=NoCompensation.LAST
    )
    return SagaDefinition("evolving", 1, [step, last])


def test_a_new_optional_field_at_its_default_changes_neither_document_nor_hash() -> None:
    today, later = step_of(Step), step_of(LaterStep)
    assert later.to_document() == today.to_document()
    assert saga_of(later).content_hash == saga_of(today).content_hash


def test_a_new_field_in_use_is_stored_and_read_back() -> None:
    fallback = RetryPolicy(max_attempts=7)
    later = step_of(LaterStep, priority=3, lane=Lane.EXPRESS, fallback_retry=fallback)
    document = later.to_document()
    assert document["priority"] == 3
    assert document["lane"] == "express"
    assert document["fallback_retry"]["max_attempts"] == 7
    assert saga_of(later).content_hash != saga_of(step_of(Step)).content_hash
    assert LaterStep.from_document(document) == later


def test_a_document_stored_before_a_field_existed_reads_with_its_default() -> None:
    stored = step_of(Step).to_document()
    assert LaterStep.from_document(stored) == step_of(LaterStep)


def test_a_new_retry_policy_field_at_its_default_keeps_the_hash() -> None:
    today = step_of(Step, retry=RetryPolicy(max_attempts=4))
    later = step_of(Step, retry=LaterRetryPolicy(max_attempts=4))
    assert saga_of(later).content_hash == saga_of(today).content_hash
    used = step_of(Step, retry=LaterRetryPolicy(max_attempts=4, give_up_after=9.0))
    assert used.to_document()["retry"]["give_up_after"] == 9.0
    assert saga_of(used).content_hash != saga_of(today).content_hash


def test_a_field_this_engine_does_not_know_is_refused_not_ignored() -> None:
    stored = step_of(LaterStep, priority=3).to_document()
    with pytest.raises(ConfigurationError, match="does not know: priority; a newer engine"):
        Step.from_document(stored)
