"""Submit a claim for a completed appointment: the saga the plan service starts.

plan creates the claim, validated and counted against the coverage's limit
(Serializable) → care marks the appointment billed → gamification grants the
achievement for a claim made in the app (and its points).

An invalid claim is refused with what is wrong (``claim invalid: ...``), a claim past the
limit with ``not covered: ...``, an appointment that did not happen with
``appointment not completed``; the steps before are undone in reverse order.

Version 2 (what :func:`submit_claim` starts): a claim above the review threshold (the
setting ``CLAIM_REVIEW_THRESHOLD_CENTS``, or what the caller passes) waits,
after it is created, for the event ``claim_reviewed`` from a plan auditor (payload
``{"approved": true|false, "reason": "..."}``). Approved, the claim goes on; rejected,
plan's next step (``apply_review``) refuses it as ``claim rejected by the plan auditor:
<reason>`` and the claim is cancelled; no review within :data:`CLAIM_REVIEW_TIMEOUT_SECONDS`,
the saga is compensated with ``wait 'review': no 'claim_reviewed' signal within ...``.
A claim at or under the threshold skips the wait (create_claim's ``needs_review`` says so).

Version 1 (still registered, so that claims started before the upgrade finish): the three
steps, no review.
"""

from __future__ import annotations

import uuid
from datetime import date

from saga import (
    AwaitEvent,
    Coordinator,
    IsolationLevel,
    OnTimeout,
    SagaDefinition,
    Step,
    UsageError,
)

CLAIM_ACHIEVEMENT = "first_claim"


CLAIM_REVIEW_TIMEOUT_SECONDS = 3 * 24 * 3600.0
"""How long a claim waits for its review before it is compensated (part of the
definition: changing it is a new version)."""

CLAIM_REVIEWED = "claim_reviewed"
"""The event a plan auditor signals, with ``{"approved": bool, "reason": str}``."""

REVIEW = "review"
"""The wait's name: the auditor's payload lands in the context under it."""

CREATE_CLAIM = Step(
    name="create_claim",
    journey="plan",
    action="create_claim",
    compensation="cancel_claim",
    isolation=IsolationLevel.SERIALIZABLE,
)
MARK_BILLED = Step(
    name="mark_billed",
    journey="care",
    action="mark_billed",
    compensation="unmark_billed",
)
GRANT_ACHIEVEMENT = Step(
    name="grant_achievement",
    journey="gamification",
    action="grant_achievement",
    compensation="withdraw_achievement",
)

# Its stored document and hash are pinned (tests/unit/test_definition_evolution.py).
SEARCHABLE = ("user_id", "appointment_id")
"""What operators find claims by (``saga ls --attr user_id=...``, the console)."""

SUBMIT_CLAIM = SagaDefinition(
    "submit_claim",
    1,
    [CREATE_CLAIM, MARK_BILLED, GRANT_ACHIEVEMENT],
    search_attributes=SEARCHABLE,
)

SUBMIT_CLAIM_V2 = SagaDefinition(
    "submit_claim",
    2,
    [
        CREATE_CLAIM,
        AwaitEvent(
            REVIEW,
            CLAIM_REVIEWED,
            CLAIM_REVIEW_TIMEOUT_SECONDS,
            on_timeout=OnTimeout.COMPENSATE,
            when="context.needs_review",
        ),
        # Undoing an accepted review is cancelling the claim (cancel_claim is idempotent:
        # create_claim's own compensation then finds nothing left to cancel).
        Step(
            name="apply_review",
            journey="plan",
            action="apply_review",
            compensation="cancel_claim",
            isolation=IsolationLevel.SERIALIZABLE,
        ),
        MARK_BILLED,
        GRANT_ACHIEVEMENT,
    ],
    search_attributes=SEARCHABLE,
)

SUBMIT_CLAIM_VERSIONS = (SUBMIT_CLAIM, SUBMIT_CLAIM_V2)
"""Every registered version, oldest first: the plan service registers them all."""

# Grant a wellness credit: its own saga, so that any flow can start it as a child
# (complete_health_goal v2 does). One Serializable step, undone by reversing the credit:
# fully compensable, so a parent may start it at a position it may later need to undo.
# Payload: user_id, goal_id (the credit is granted once per goal) and credit_cents; a
# member without active coverage is refused as ``not covered: ...``.
GRANT_WELLNESS_CREDIT = SagaDefinition(
    "grant_wellness_credit",
    1,
    [
        Step(
            name="apply_wellness_credit",
            journey="plan",
            action="apply_wellness_credit",
            compensation="reverse_wellness_credit",
            isolation=IsolationLevel.SERIALIZABLE,
        )
    ],
    search_attributes=("user_id", "goal_id"),
)


async def submit_claim(
    coordinator: Coordinator,
    *,
    user_id: uuid.UUID,
    appointment_id: uuid.UUID,
    amount_cents: int,
    service_date: date,
    procedure_code: str,
    diagnosis_code: str | None = None,
    achievement_code: str = CLAIM_ACHIEVEMENT,
    review_threshold_cents: int | None = None,
    idempotency_key: str | None = None,
) -> uuid.UUID:
    """Start claiming ``amount_cents`` for ``appointment_id`` (version 2); returns the saga
    id. Above ``review_threshold_cents`` (by default the setting
    ``CLAIM_REVIEW_THRESHOLD_CENTS``, R$ 5.000,00) the claim waits for ``claim_reviewed``."""
    if review_threshold_cents is None:
        review_threshold_cents = coordinator.settings.claim_review_threshold_cents
    if (
        not isinstance(review_threshold_cents, int)
        or isinstance(review_threshold_cents, bool)
        or review_threshold_cents < 0
    ):
        raise UsageError(
            "review_threshold_cents must be a non-negative integer of cents, "
            f"got {review_threshold_cents!r}"
        )
    payload = {
        "user_id": str(user_id),
        "appointment_id": str(appointment_id),
        "amount_cents": amount_cents,
        "service_date": service_date.isoformat(),
        "procedure_code": procedure_code,
        "diagnosis_code": diagnosis_code,
        "achievement_code": achievement_code,
        "source_journey": "plan",
        "review_threshold_cents": review_threshold_cents,
    }
    return await coordinator.start(SUBMIT_CLAIM_V2, payload, idempotency_key=idempotency_key)
