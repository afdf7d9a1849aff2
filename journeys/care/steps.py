"""The care journey's step handlers: holding, releasing and confirming a slot for the
book_appointment saga, and marking an appointment billed for submit_claim.

Each handler runs inside the step's transaction as ``austa_care_journey`` and touches
``care_journey`` only. A hold is the semantic lock other bookings see: the slot turns
``held`` and the appointment carries ``hold_expires_at``; confirming makes both final.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from journeys.shared.payload import OPERATOR_TIMEZONE, payload_uuid
from saga import (
    ExclusionViolation,
    ForeignKeyViolation,
    Handler,
    StepContext,
    StepRefused,
    UniqueViolation,
)

HOLD_MINUTES = 15


def _optional_text(source: Mapping[str, Any], key: str) -> str | None:
    value = source.get(key)
    if value is None or isinstance(value, str):
        return value
    raise StepRefused(f"invalid payload: {key} must be a string or null, got {value!r}")


def _iso(value: datetime) -> str:
    return value.isoformat()


LOCK_SLOT = """
    SELECT id, provider_id, starts_at, ends_at, status, is_telemedicine,
           starts_at <= now() AS passed,
           (starts_at AT TIME ZONE $2)::date AS service_date
    FROM care_journey.care_slot
    WHERE id = $1 AND deleted_at IS NULL
    FOR UPDATE
"""

HOLD_SLOT = f"""
    WITH appointment AS (
        INSERT INTO care_journey.care_appointment (
            id, slot_id, provider_id, patient_id, starts_at, ends_at, status,
            hold_expires_at, is_telemedicine, reason, saga_id
        ) VALUES (
            coalesce($9::uuid, gen_random_uuid()), $1, $2, $3, $4, $5, 'held',
            now() + interval '{HOLD_MINUTES} minutes', $6, $7, $8
        )
        RETURNING id, hold_expires_at
    ), held AS (
        UPDATE care_journey.care_slot SET status = 'held' WHERE id = $1
    )
    SELECT id, hold_expires_at FROM appointment
"""


async def reserve_slot(step: StepContext) -> dict[str, Any]:
    """Hold the slot for the patient: a ``held`` appointment and a ``held`` slot.

    book_appointment v2 authorizes the coverage at the same time, so its payload names the
    appointment's id and the slot's service date up front: the appointment takes that id,
    and a slot on another date is refused (the authorization would be for the wrong day).
    """
    slot_id = payload_uuid(step.payload, "slot_id")
    patient_id = payload_uuid(step.payload, "user_id")
    reason = _optional_text(step.payload, "reason")
    appointment_id = (
        payload_uuid(step.payload, "appointment_id") if "appointment_id" in step.payload else None
    )
    booked_for = _optional_text(step.payload, "service_date")
    conn = step.connection
    # The row lock makes concurrent bookings of one slot queue here; whoever comes
    # second sees the slot held (ReadCommitted reads the committed row after the wait).
    slot = await conn.fetchrow(LOCK_SLOT, slot_id, OPERATOR_TIMEZONE)
    if slot is None:
        raise StepRefused(f"slot not found: {slot_id}")
    if slot["passed"]:
        raise StepRefused(f"slot not found: it has passed (started {_iso(slot['starts_at'])})")
    if slot["status"] != "open":
        raise StepRefused(f"slot taken: the slot is {slot['status']}")
    if booked_for is not None and booked_for != slot["service_date"].isoformat():
        raise StepRefused(
            f"invalid payload: service_date {booked_for} is not the slot's "
            f"({slot['service_date'].isoformat()})"
        )
    try:
        held = await conn.fetchrow(
            HOLD_SLOT,
            slot_id,
            slot["provider_id"],
            patient_id,
            slot["starts_at"],
            slot["ends_at"],
            slot["is_telemedicine"],
            reason,
            step.saga_id,
            appointment_id,
        )
    except (UniqueViolation, ExclusionViolation):
        # Another live appointment occupies the slot or the provider's time.
        raise StepRefused("slot taken: the provider already has an appointment then") from None
    except ForeignKeyViolation:
        raise StepRefused(f"invalid payload: user_id {patient_id} is not a user") from None
    assert held is not None  # an INSERT ... VALUES always returns its row
    return {
        "appointment_id": str(held["id"]),
        "provider_id": str(slot["provider_id"]),
        "starts_at": _iso(slot["starts_at"]),
        "ends_at": _iso(slot["ends_at"]),
        "service_date": slot["service_date"].isoformat(),
        "hold_expires_at": _iso(held["hold_expires_at"]),
    }


def releasing(released: str) -> str:
    """Release the appointments the UPDATE ``released`` marks (``RETURNING id, slot_id``)
    and reopen their slots: the compensation and the worker's clean-up make the same row
    changes."""
    return f"""
    WITH released AS ({released}), reopened AS (
        -- A slot blocked by the agenda meanwhile stays blocked.
        UPDATE care_journey.care_slot AS s SET status = 'open'
        FROM released AS r
        WHERE s.id = r.slot_id AND s.status IN ('held', 'booked')
    )
    SELECT id, slot_id FROM released
    """


RELEASE = releasing(
    """
    UPDATE care_journey.care_appointment
    SET status = 'released', cancelled_reason = $2, hold_expires_at = NULL
    WHERE saga_id = $1 AND status IN ('held', 'confirmed') AND deleted_at IS NULL
    RETURNING id, slot_id
    """
)


async def release_slot(step: StepContext) -> dict[str, Any]:
    """Compensation of reserve_slot: the saga's appointment ``released``, its slot open."""
    why = f"reserva desfeita: a saga {step.saga_id} não pôde ser concluída"
    rows = await step.connection.fetch(RELEASE, step.saga_id, why)
    if not rows:
        return {"undone": False}
    return {"undone": True, "appointment_id": str(rows[0]["id"])}


CONFIRM = """
    WITH confirmed AS (
        UPDATE care_journey.care_appointment
        SET status = 'confirmed', hold_expires_at = NULL
        WHERE saga_id = $1 AND status = 'held' AND hold_expires_at > now()
          AND deleted_at IS NULL
        RETURNING id, slot_id
    ), booked AS (
        UPDATE care_journey.care_slot AS s SET status = 'booked'
        FROM confirmed AS c WHERE s.id = c.slot_id
    )
    SELECT id FROM confirmed
"""

SAGA_APPOINTMENT = """
    SELECT status, hold_expires_at FROM care_journey.care_appointment
    WHERE saga_id = $1 AND deleted_at IS NULL
    ORDER BY created_at DESC LIMIT 1
"""


async def confirm_appointment(step: StepContext) -> dict[str, Any]:
    """Make the saga's hold final: appointment ``confirmed``, slot ``booked``."""
    conn = step.connection
    appointment_id = await conn.fetchval(CONFIRM, step.saga_id)
    if appointment_id is not None:
        return {"appointment_id": str(appointment_id), "status": "confirmed"}
    # Nothing confirmed: say why (the expiry worker may have released the hold).
    found = await conn.fetchrow(SAGA_APPOINTMENT, step.saga_id)
    if found is None:
        raise StepRefused("hold expired: the saga holds no appointment")
    if found["status"] == "held":
        raise StepRefused(f"hold expired at {_iso(found['hold_expires_at'])}")
    raise StepRefused(f"hold expired: the appointment is {found['status']}")


MARK_BILLED = """
    UPDATE care_journey.care_appointment SET status = 'billed'
    WHERE id = $1 AND patient_id = $2 AND status = 'completed' AND deleted_at IS NULL
    RETURNING id
"""

PATIENT_APPOINTMENT = """
    SELECT status FROM care_journey.care_appointment
    WHERE id = $1 AND patient_id = $2 AND deleted_at IS NULL
"""


async def mark_billed(step: StepContext) -> dict[str, Any]:
    """The patient's completed appointment turns ``billed``."""
    appointment_id = payload_uuid(step.payload, "appointment_id")
    patient_id = payload_uuid(step.payload, "user_id")
    conn = step.connection
    if await conn.fetchval(MARK_BILLED, appointment_id, patient_id) is not None:
        return {"appointment_id": str(appointment_id), "status": "billed"}
    status = await conn.fetchval(PATIENT_APPOINTMENT, appointment_id, patient_id)
    if status is None:
        raise StepRefused(f"appointment not found: {appointment_id}")
    if status == "billed":
        raise StepRefused("appointment not completed: already billed")
    raise StepRefused(f"appointment not completed: it is {status}")


UNMARK_BILLED = """
    UPDATE care_journey.care_appointment SET status = 'completed'
    WHERE id = $1 AND patient_id = $2 AND status = 'billed' AND deleted_at IS NULL
    RETURNING id
"""


async def unmark_billed(step: StepContext) -> dict[str, Any]:
    """Compensation of mark_billed: the appointment back to ``completed``.

    The appointment's ``saga_id`` names the booking saga, so the row is found by the
    payload's ids; only this saga can have billed it, as its live claim (created
    before and cancelled after this step) keeps every other claim saga out.
    """
    appointment_id = payload_uuid(step.payload, "appointment_id")
    patient_id = payload_uuid(step.payload, "user_id")
    undone = await step.connection.fetchval(UNMARK_BILLED, appointment_id, patient_id)
    if undone is None:
        return {"undone": False}
    return {"undone": True, "appointment_id": str(appointment_id)}


HANDLERS: dict[str, Handler] = {
    "reserve_slot": reserve_slot,
    "release_slot": release_slot,
    "confirm_appointment": confirm_appointment,
    "mark_billed": mark_billed,
    "unmark_billed": unmark_billed,
}
