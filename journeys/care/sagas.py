"""Book an appointment: the saga the care service starts when a patient books a slot.

care reserves the slot (a hold that expires: the semantic lock other bookings see) →
plan authorizes the consultation's price against the patient's coverage (Serializable) →
gamification awards points for booking → care confirms the appointment.

A slot someone else holds or booked is refused as ``slot taken``; a coverage that cannot
pay as ``not covered: ...``. Either way the steps before are undone in reverse order.
"""

from __future__ import annotations

import uuid

from saga import Coordinator, IsolationLevel, NoCompensation, SagaDefinition, Step

BOOKING_POINTS = 10

BOOK_APPOINTMENT = SagaDefinition(
    "book_appointment",
    1,
    [
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
        ),
        Step(
            name="award_points",
            journey="gamification",
            action="award_points",
            compensation="revoke_points",
        ),
        # Confirming is the point of no return: nothing after it could fail.
        Step(
            name="confirm_appointment",
            journey="care",
            action="confirm_appointment",
            no_compensation=NoCompensation.LAST,
        ),
    ],
)


async def book_appointment(
    coordinator: Coordinator,
    *,
    user_id: uuid.UUID,
    slot_id: uuid.UUID,
    amount_cents: int,
    reason: str | None = None,
    points: int = BOOKING_POINTS,
    idempotency_key: str | None = None,
) -> uuid.UUID:
    """Start booking ``slot_id`` for patient ``user_id``; returns the saga id."""
    payload = {
        "user_id": str(user_id),
        "slot_id": str(slot_id),
        "amount_cents": amount_cents,
        "reason": reason,
        "points": points,
        "source_journey": "care",
        "award_reason": "appointment_booked",
    }
    return await coordinator.start(BOOK_APPOINTMENT, payload, idempotency_key=idempotency_key)
