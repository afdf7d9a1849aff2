"""Submit a claim for a completed appointment: the saga the plan service starts.

plan creates the claim, validated and counted against the coverage's limit
(Serializable) → care marks the appointment billed → gamification grants the
achievement for a claim made in the app (and its points).

An invalid claim is refused with what is wrong (``claim invalid: ...``), a claim past the
limit with ``not covered: ...``, an appointment that did not happen with
``appointment not completed``; the steps before are undone in reverse order.
"""

from __future__ import annotations

import uuid
from datetime import date

from saga import Coordinator, IsolationLevel, SagaDefinition, Step

CLAIM_ACHIEVEMENT = "first_claim"

SUBMIT_CLAIM = SagaDefinition(
    "submit_claim",
    1,
    [
        Step(
            name="create_claim",
            journey="plan",
            action="create_claim",
            compensation="cancel_claim",
            isolation=IsolationLevel.SERIALIZABLE,
        ),
        Step(
            name="mark_billed",
            journey="care",
            action="mark_billed",
            compensation="unmark_billed",
        ),
        Step(
            name="grant_achievement",
            journey="gamification",
            action="grant_achievement",
            compensation="withdraw_achievement",
        ),
    ],
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
    idempotency_key: str | None = None,
) -> uuid.UUID:
    """Start claiming ``amount_cents`` for ``appointment_id``; returns the saga id."""
    payload = {
        "user_id": str(user_id),
        "appointment_id": str(appointment_id),
        "amount_cents": amount_cents,
        "service_date": service_date.isoformat(),
        "procedure_code": procedure_code,
        "diagnosis_code": diagnosis_code,
        "achievement_code": achievement_code,
        "source_journey": "plan",
    }
    return await coordinator.start(SUBMIT_CLAIM, payload, idempotency_key=idempotency_key)
