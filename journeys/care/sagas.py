"""Book an appointment: the saga the care service starts when a patient books a slot.

Version 2 (what :func:`book_appointment` starts when it is given the slot's date): care
reserves the slot and plan authorizes the coverage *at the same time*, in one parallel
group, since neither needs the other's result (the appointment's id is chosen up front);
then gamification awards points and care confirms. If either branch is refused, the
other is undone once it has answered.

Version 1 (still registered, so that bookings started before the upgrade finish): the
same steps one after another: care reserves the slot (a hold that expires: the semantic
lock other bookings see) → plan authorizes the consultation's price against the
patient's coverage (Serializable) → gamification awards points for booking → care
confirms the appointment.

A slot someone else holds or booked is refused as ``slot taken``; a coverage that cannot
pay as ``not covered: ...``. Either way the steps before are undone in reverse order.
"""

from __future__ import annotations

import uuid
from datetime import date

from saga import Coordinator, IsolationLevel, NoCompensation, Parallel, SagaDefinition, Step

BOOKING_POINTS = 10

RESERVE_SLOT = Step(
    name="reserve_slot",
    journey="care",
    action="reserve_slot",
    compensation="release_slot",
)
AUTHORIZE_COVERAGE = Step(
    name="authorize_coverage",
    journey="plan",
    action="authorize_coverage",
    compensation="void_authorization",
    isolation=IsolationLevel.SERIALIZABLE,
)
AWARD_POINTS = Step(
    name="award_points",
    journey="gamification",
    action="award_points",
    compensation="revoke_points",
)
# Confirming is the point of no return: nothing after it could fail.
CONFIRM_APPOINTMENT = Step(
    name="confirm_appointment",
    journey="care",
    action="confirm_appointment",
    no_compensation=NoCompensation.LAST,
)

# Its stored document and hash are pinned (tests/integration/test_definition_upgrade.py).
SEARCHABLE = ("user_id", "slot_id")
"""What operators find bookings by (``saga ls --attr user_id=...``, the console)."""

BOOK_APPOINTMENT = SagaDefinition(
    "book_appointment",
    1,
    [RESERVE_SLOT, AUTHORIZE_COVERAGE, AWARD_POINTS, CONFIRM_APPOINTMENT],
    search_attributes=SEARCHABLE,
)

HOLD_AND_AUTHORIZE = "hold_and_authorize"

BOOK_APPOINTMENT_V2 = SagaDefinition(
    "book_appointment",
    2,
    [
        Parallel(HOLD_AND_AUTHORIZE, [RESERVE_SLOT, AUTHORIZE_COVERAGE]),
        AWARD_POINTS,
        CONFIRM_APPOINTMENT,
    ],
    search_attributes=SEARCHABLE,
)

BOOK_APPOINTMENT_VERSIONS = (BOOK_APPOINTMENT, BOOK_APPOINTMENT_V2)
"""Every registered version, oldest first: the care service registers them all."""


async def book_appointment(
    coordinator: Coordinator,
    *,
    user_id: uuid.UUID,
    slot_id: uuid.UUID,
    amount_cents: int,
    service_date: date | None = None,
    reason: str | None = None,
    points: int = BOOKING_POINTS,
    idempotency_key: str | None = None,
) -> uuid.UUID:
    """Start booking ``slot_id`` for patient ``user_id``; returns the saga id.

    With ``service_date`` (the slot's date, in the operator's time zone) the booking is
    version 2: the slot and the coverage at the same time, under an appointment id chosen
    here; a slot on another date is refused. Without it, version 1, which learns the date
    from the reserved slot before it authorizes.
    """
    payload: dict[str, object] = {
        "user_id": str(user_id),
        "slot_id": str(slot_id),
        "amount_cents": amount_cents,
        "reason": reason,
        "points": points,
        "source_journey": "care",
        "award_reason": "appointment_booked",
    }
    if service_date is None:
        return await coordinator.start(BOOK_APPOINTMENT, payload, idempotency_key=idempotency_key)
    payload["appointment_id"] = str(uuid.uuid4())
    payload["service_date"] = service_date.isoformat()
    return await coordinator.start(BOOK_APPOINTMENT_V2, payload, idempotency_key=idempotency_key)
