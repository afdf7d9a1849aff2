"""The care journey's step handlers, called directly as ``austa_care_journey`` the way the
participant runtime calls them: one transaction each, at the step's isolation level."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from journeys import world
from journeys.care.service import SERVICE
from saga import Row
from saga.errors import StepRefused
from saga.store import Database
from saga.store.driver import DriverConnection
from tests.integration.conftest import SagaEnvironment
from tests.integration.journey_steps import refusal, role_database, run_step

pytestmark = pytest.mark.integration


async def row(db: Database, query: str, *args: Any) -> Row:
    found = await db.run_driver(lambda conn: conn.fetchrow(query, *args))
    assert found is not None, f"no row for {query} {args}"
    return found


async def execute(db: Database, query: str, *args: Any) -> None:
    await db.run_driver(lambda conn: conn.execute(query, *args))


async def appointment(db: Database, appointment_id: Any) -> Row:
    return await row(
        db, "SELECT * FROM care_journey.care_appointment WHERE id = $1::uuid", appointment_id
    )


async def slot_status(db: Database, slot_id: uuid.UUID) -> str:
    status = (await row(db, "SELECT status FROM care_journey.care_slot WHERE id = $1", slot_id))[
        "status"
    ]
    assert isinstance(status, str)
    return status


async def appointments_of_slot(db: Database, slot_id: uuid.UUID) -> int:
    counted = await db.run_driver(
        lambda conn: conn.fetchval(
            "SELECT count(*) FROM care_journey.care_appointment WHERE slot_id = $1", slot_id
        )
    )
    assert isinstance(counted, int)
    return counted


@pytest.fixture
async def care(saga_env: SagaEnvironment) -> AsyncIterator[Database]:
    """A Database logged in as the care journey's own role."""
    async with role_database(saga_env, SERVICE) as db:
        yield db


async def new_user(owner: Database) -> uuid.UUID:
    return await owner.run_driver(world.create_user)


async def new_slots(owner: Database, count: int = 1, **options: Any) -> list[world.Slot]:
    async def unit(conn: DriverConnection) -> list[world.Slot]:
        provider = await world.create_provider(conn)
        return await world.create_slots(conn, provider, count, **options)

    return await owner.run_driver(unit)


def booking(slot: world.Slot, user_id: uuid.UUID, reason: str | None = None) -> dict[str, Any]:
    return {"slot_id": str(slot.slot_id), "user_id": str(user_id), "reason": reason}


# -- reserve_slot ---------------------------------------------------------------------


async def test_reserve_slot_holds_the_slot_for_fifteen_minutes(
    care: Database, owner: Database
) -> None:
    user = await new_user(owner)
    # 01:00 UTC is still the evening before in São Paulo (UTC-3): the service date.
    day = datetime.now(UTC).date() + timedelta(days=2)
    (slot,) = await new_slots(owner, first=datetime.combine(day, time(1), UTC))
    saga_id = uuid.uuid4()
    before = datetime.now(UTC)

    result = await run_step(
        care, SERVICE, "reserve_slot", saga_id, booking(slot, user, "dor de cabeça")
    )

    held = await appointment(owner, result["appointment_id"])
    assert dict(result) == {
        "appointment_id": str(held["id"]),
        "provider_id": str(slot.provider_id),
        "starts_at": slot.starts_at.isoformat(),
        "ends_at": slot.ends_at.isoformat(),
        "service_date": (day - timedelta(days=1)).isoformat(),
        "hold_expires_at": held["hold_expires_at"].isoformat(),
    }
    assert held["status"] == "held"
    assert held["saga_id"] == saga_id
    assert held["patient_id"] == user
    assert held["slot_id"] == slot.slot_id
    assert held["provider_id"] == slot.provider_id
    assert (held["starts_at"], held["ends_at"]) == (slot.starts_at, slot.ends_at)
    assert held["reason"] == "dor de cabeça"
    hold = held["hold_expires_at"] - before
    assert timedelta(minutes=14) < hold < timedelta(minutes=16)
    assert await slot_status(owner, slot.slot_id) == "held"


async def test_reserve_slot_refusals_write_nothing(care: Database, owner: Database) -> None:
    user = await new_user(owner)
    open_slot, blocked, taken = await new_slots(owner, 3)
    (past,) = await new_slots(owner, first=datetime.now(UTC) - timedelta(hours=2))
    await execute(
        owner, "UPDATE care_journey.care_slot SET status = 'blocked' WHERE id = $1", blocked.slot_id
    )
    await run_step(care, SERVICE, "reserve_slot", uuid.uuid4(), booking(taken, user))

    unknown = world.Slot(uuid.uuid4(), open_slot.provider_id, past.starts_at, past.ends_at)
    assert (
        await refusal(care, SERVICE, "reserve_slot", uuid.uuid4(), booking(unknown, user))
    ).startswith("slot not found")
    reason = await refusal(care, SERVICE, "reserve_slot", uuid.uuid4(), booking(past, user))
    assert reason.startswith("slot not found: it has passed")
    reason = await refusal(care, SERVICE, "reserve_slot", uuid.uuid4(), booking(blocked, user))
    assert reason.startswith("slot taken")
    reason = await refusal(
        care, SERVICE, "reserve_slot", uuid.uuid4(), booking(taken, await new_user(owner))
    )
    assert reason.startswith("slot taken")
    stranger = booking(open_slot, uuid.uuid4())
    reason = await refusal(care, SERVICE, "reserve_slot", uuid.uuid4(), stranger)
    assert reason.startswith("invalid payload: user_id")
    reason = await refusal(
        care, SERVICE, "reserve_slot", uuid.uuid4(), {"slot_id": "nope", "user_id": str(user)}
    )
    assert reason == "invalid payload: slot_id must be a uuid string, got 'nope'"

    for slot, status, count in (
        (past, "open", 0),
        (blocked, "blocked", 0),
        (taken, "held", 1),
        (open_slot, "open", 0),
    ):
        assert await slot_status(owner, slot.slot_id) == status
        assert await appointments_of_slot(owner, slot.slot_id) == count


async def test_concurrent_reservations_of_one_slot_only_one_wins(
    care: Database, owner: Database
) -> None:
    (slot,) = await new_slots(owner)
    users = [await new_user(owner) for _ in range(10)]

    outcomes = await asyncio.gather(
        *(
            run_step(care, SERVICE, "reserve_slot", uuid.uuid4(), booking(slot, user))
            for user in users
        ),
        return_exceptions=True,
    )

    won = [o for o in outcomes if isinstance(o, Mapping)]
    lost = [o for o in outcomes if isinstance(o, StepRefused)]
    assert len(won) == 1, outcomes
    assert len(lost) == 9, outcomes
    assert all(refusal.reason.startswith("slot taken") for refusal in lost)
    assert await appointments_of_slot(owner, slot.slot_id) == 1
    winner = await appointment(owner, won[0]["appointment_id"])
    assert winner["status"] == "held"
    assert await slot_status(owner, slot.slot_id) == "held"


# -- release_slot ---------------------------------------------------------------------


async def test_release_slot_gives_the_slot_back_and_is_harmless_twice(
    care: Database, owner: Database
) -> None:
    slot, theirs = await new_slots(owner, 2)
    saga_id = uuid.uuid4()
    held = await run_step(
        care, SERVICE, "reserve_slot", saga_id, booking(slot, await new_user(owner))
    )
    other = await run_step(
        care, SERVICE, "reserve_slot", uuid.uuid4(), booking(theirs, await new_user(owner))
    )

    first = await run_step(care, SERVICE, "release_slot", saga_id)
    again = await run_step(care, SERVICE, "release_slot", saga_id)

    assert first == {"undone": True, "appointment_id": held["appointment_id"]}
    assert again == {"undone": False}
    released = await appointment(owner, held["appointment_id"])
    assert released["status"] == "released"
    assert released["hold_expires_at"] is None
    assert str(saga_id) in released["cancelled_reason"]
    assert await slot_status(owner, slot.slot_id) == "open"
    # Another saga's hold is left alone.
    assert (await appointment(owner, other["appointment_id"]))["status"] == "held"
    assert await slot_status(owner, theirs.slot_id) == "held"
    # The slot can be booked again by someone else.
    rebooked = await run_step(
        care, SERVICE, "reserve_slot", uuid.uuid4(), booking(slot, await new_user(owner))
    )
    assert rebooked["appointment_id"] != held["appointment_id"]


# -- confirm_appointment --------------------------------------------------------------


async def test_confirm_appointment_books_the_slot_and_release_undoes_it(
    care: Database, owner: Database
) -> None:
    (slot,) = await new_slots(owner)
    saga_id = uuid.uuid4()
    held = await run_step(
        care, SERVICE, "reserve_slot", saga_id, booking(slot, await new_user(owner))
    )

    result = await run_step(care, SERVICE, "confirm_appointment", saga_id)

    assert result == {"appointment_id": held["appointment_id"], "status": "confirmed"}
    confirmed = await appointment(owner, held["appointment_id"])
    assert confirmed["status"] == "confirmed"
    assert confirmed["hold_expires_at"] is None
    assert await slot_status(owner, slot.slot_id) == "booked"
    # A confirmed appointment is released too when the saga is compensated.
    assert (await run_step(care, SERVICE, "release_slot", saga_id))["undone"] is True
    assert (await appointment(owner, held["appointment_id"]))["status"] == "released"
    assert await slot_status(owner, slot.slot_id) == "open"


async def test_confirm_appointment_refuses_an_expired_or_missing_hold(
    care: Database, owner: Database
) -> None:
    expired_slot, released_slot = await new_slots(owner, 2)
    user = await new_user(owner)
    expired_saga, released_saga = uuid.uuid4(), uuid.uuid4()
    expired = await run_step(
        care, SERVICE, "reserve_slot", expired_saga, booking(expired_slot, user)
    )
    await run_step(care, SERVICE, "reserve_slot", released_saga, booking(released_slot, user))
    await execute(
        owner,
        "UPDATE care_journey.care_appointment SET hold_expires_at = now() - interval '1 second' "
        "WHERE saga_id = $1",
        expired_saga,
    )
    await run_step(care, SERVICE, "release_slot", released_saga)

    assert (await refusal(care, SERVICE, "confirm_appointment", expired_saga)).startswith(
        "hold expired"
    )
    assert (await refusal(care, SERVICE, "confirm_appointment", released_saga)).startswith(
        "hold expired"
    )
    assert (await refusal(care, SERVICE, "confirm_appointment", uuid.uuid4())).startswith(
        "hold expired"
    )

    assert (await appointment(owner, expired["appointment_id"]))["status"] == "held"
    assert await slot_status(owner, expired_slot.slot_id) == "held"
    assert await slot_status(owner, released_slot.slot_id) == "open"


# -- mark_billed / unmark_billed --------------------------------------------------------


async def completed_appointment(owner: Database) -> tuple[uuid.UUID, uuid.UUID]:
    """(patient, appointment) of an appointment that took place three days ago."""
    # Not world.create_completed_appointment: its slot insert leaves $2 untyped, which
    # PostgreSQL infers as an interval (reported to the lead).
    first = datetime.now(UTC) - timedelta(days=3)

    async def unit(conn: DriverConnection) -> tuple[uuid.UUID, uuid.UUID]:
        patient = await world.create_user(conn)
        provider = await world.create_provider(conn)
        (slot,) = await world.create_slots(conn, provider, 1, first=first)
        appointment_id = await conn.fetchval(
            """
            WITH booked AS (
                UPDATE care_journey.care_slot SET status = 'booked' WHERE id = $1
            )
            INSERT INTO care_journey.care_appointment (
                slot_id, provider_id, patient_id, starts_at, ends_at, status
            ) VALUES ($1, $2, $3, $4, $5, 'completed') RETURNING id
            """,
            slot.slot_id,
            provider,
            patient,
            slot.starts_at,
            slot.ends_at,
        )
        return patient, appointment_id

    return await owner.run_driver(unit)


def claim_payload(patient: uuid.UUID, appointment_id: uuid.UUID) -> dict[str, Any]:
    return {"appointment_id": str(appointment_id), "user_id": str(patient)}


async def test_mark_billed_refusals(care: Database, owner: Database) -> None:
    patient, appointment_id = await completed_appointment(owner)
    (slot,) = await new_slots(owner)
    held = await run_step(care, SERVICE, "reserve_slot", uuid.uuid4(), booking(slot, patient))
    stranger = await new_user(owner)

    reason = await refusal(
        care, SERVICE, "mark_billed", uuid.uuid4(), claim_payload(stranger, appointment_id)
    )
    assert reason.startswith("appointment not found")
    reason = await refusal(
        care, SERVICE, "mark_billed", uuid.uuid4(), claim_payload(patient, uuid.uuid4())
    )
    assert reason.startswith("appointment not found")
    reason = await refusal(
        care,
        SERVICE,
        "mark_billed",
        uuid.uuid4(),
        claim_payload(patient, held["appointment_id"]),
    )
    assert reason == "appointment not completed: it is held"
    reason = await refusal(
        care, SERVICE, "mark_billed", uuid.uuid4(), {"appointment_id": str(appointment_id)}
    )
    assert reason == "invalid payload: user_id must be a uuid string, got None"

    assert (await appointment(owner, appointment_id))["status"] == "completed"
    assert (await appointment(owner, held["appointment_id"]))["status"] == "held"


async def test_mark_billed_and_unmark_billed(care: Database, owner: Database) -> None:
    patient, appointment_id = await completed_appointment(owner)
    saga_id = uuid.uuid4()
    payload = claim_payload(patient, appointment_id)

    billed = await run_step(care, SERVICE, "mark_billed", saga_id, payload)

    assert billed == {"appointment_id": str(appointment_id), "status": "billed"}
    assert (await appointment(owner, appointment_id))["status"] == "billed"
    reason = await refusal(care, SERVICE, "mark_billed", uuid.uuid4(), payload)
    assert reason == "appointment not completed: already billed"

    first = await run_step(care, SERVICE, "unmark_billed", saga_id, payload)
    again = await run_step(care, SERVICE, "unmark_billed", saga_id, payload)

    assert first == {"undone": True, "appointment_id": str(appointment_id)}
    assert again == {"undone": False}
    assert (await appointment(owner, appointment_id))["status"] == "completed"
