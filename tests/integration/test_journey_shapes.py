"""Version 2 of the journeys' sagas on the real journey services and PostgreSQL, in the test
kit (one process, no broker, a test clock): book_appointment's parallel group (slot and
coverage at once) and submit_claim's wait for a plan auditor's ``claim_reviewed``
(approved, rejected, never reviewed, reviewed before the wait, under the threshold).
Version 1 of both stays registered and still runs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from journeys import world
from journeys.care.sagas import BOOK_APPOINTMENT, BOOK_APPOINTMENT_V2, book_appointment
from journeys.invariants import check_invariants
from journeys.plan.sagas import (
    CLAIM_REVIEW_TIMEOUT_SECONDS,
    CLAIM_REVIEWED,
    SUBMIT_CLAIM,
    SUBMIT_CLAIM_V2,
    submit_claim,
)
from journeys.scenarios import CONSULTATION
from saga.coordinator import SagaSummary, SignalOutcome
from saga.errors import SignalRefused
from saga.machine import SagaStatus
from saga.participant.journey import discover_journeys
from saga.settings import Settings
from saga.store.driver import DriverConnection
from saga.testing import SagaTestEnvironment

pytestmark = pytest.mark.integration

THRESHOLD = 50_000


@pytest.fixture
async def kit(settings: Settings, kit_database: str) -> AsyncIterator[SagaTestEnvironment]:
    async with SagaTestEnvironment(
        settings=settings,
        database_url=kit_database,
        journeys=list(discover_journeys().values()),
    ) as env:
        yield env


async def definition_of(kit: SagaTestEnvironment, saga_id: uuid.UUID) -> tuple[str, int]:
    [row] = await kit.query(
        "SELECT d.name, d.version FROM shared.saga_instance i "
        "JOIN shared.saga_definition d ON d.id = i.saga_definition_id WHERE i.id = $1",
        saga_id,
    )
    return row["name"], row["version"]


async def coverage(kit: SagaTestEnvironment, member: world.Member) -> dict[str, Any]:
    [row] = await kit.query(
        "SELECT used_cents, reserved_cents FROM plan_journey.plan_member_coverage WHERE id = $1",
        member.coverage_id,
    )
    return row


async def executed(kit: SagaTestEnvironment, saga_id: uuid.UUID) -> list[tuple[str, str, str]]:
    rows = await kit.query(
        "SELECT step_name, action, status FROM shared.saga_step_log "
        "WHERE saga_instance_id = $1 AND status IN ('succeeded', 'failed') "
        "ORDER BY created_at, step_index",
        saga_id,
    )
    return [(r["step_name"], r["action"], r["status"]) for r in rows]


# -- book_appointment v2 -------------------------------------------------------------


async def booking_scene(
    kit: SagaTestEnvironment, *, limit_cents: int = 100_000
) -> tuple[world.Member, world.Slot]:
    async def build(conn: DriverConnection) -> tuple[world.Member, world.Slot]:
        member = await world.create_member(conn, limit_cents=limit_cents)
        provider = await world.create_provider(conn)
        return member, (await world.create_slots(conn, provider, 1))[0]

    return await kit.scene(build)


async def book(
    kit: SagaTestEnvironment, member: world.Member, slot: world.Slot, amount_cents: int = 20_000
) -> uuid.UUID:
    return await book_appointment(
        kit.coordinator,
        user_id=member.user_id,
        slot_id=slot.slot_id,
        amount_cents=amount_cents,
        service_date=slot.service_date,
    )


async def test_booking_v2_holds_and_authorizes_in_one_group_then_confirms(
    kit: SagaTestEnvironment,
) -> None:
    member, slot = await booking_scene(kit)
    saga_id = await book(kit, member, slot)
    summary = await kit.settle(saga_id)

    assert summary.status is SagaStatus.COMPLETED, summary.error
    assert await definition_of(kit, saga_id) == ("book_appointment", 2)
    # Each branch's result under its own name; the appointment is the one the payload named.
    held, authorized = summary.context["reserve_slot"], summary.context["authorize_coverage"]
    [appointment] = await kit.query(
        "SELECT id, status FROM care_journey.care_appointment WHERE saga_id = $1", saga_id
    )
    assert (str(appointment["id"]), appointment["status"]) == (
        held["appointment_id"],
        "confirmed",
    )
    [authorization] = await kit.query(
        "SELECT appointment_id, status FROM plan_journey.plan_pre_authorization WHERE saga_id = $1",
        saga_id,
    )
    assert authorization == {"appointment_id": appointment["id"], "status": "approved"}
    assert authorized["authorized_cents"] == 20_000
    assert await coverage(kit, member) == {"used_cents": 0, "reserved_cents": 20_000}
    # Both branches went out in one transition: one dispatch row each, same log version.
    dispatched = await kit.query(
        "SELECT step_name, branch FROM shared.saga_step_log "
        "WHERE saga_instance_id = $1 AND step_index = 0 AND status = 'dispatched' "
        "ORDER BY branch",
        saga_id,
    )
    assert [(r["step_name"], r["branch"]) for r in dispatched] == [
        ("reserve_slot", 0),
        ("authorize_coverage", 1),
    ]
    (await check_invariants(kit.database, saga_ids=[saga_id])).raise_if_violated()


async def test_booking_v2_refused_by_the_plan_releases_the_hold_taken_meanwhile(
    kit: SagaTestEnvironment,
) -> None:
    member, slot = await booking_scene(kit, limit_cents=10_000)
    saga_id = await book(kit, member, slot)
    summary = await kit.settle(saga_id)

    assert summary.status is SagaStatus.COMPENSATED
    assert "not covered" in (summary.error or "")
    appointments = await kit.query(
        "SELECT status FROM care_journey.care_appointment WHERE saga_id = $1", saga_id
    )
    assert appointments == [{"status": "released"}]
    assert await kit.query(
        "SELECT status FROM care_journey.care_slot WHERE id = $1", slot.slot_id
    ) == [{"status": "open"}]
    assert await coverage(kit, member) == {"used_cents": 0, "reserved_cents": 0}
    (await check_invariants(kit.database, saga_ids=[saga_id])).raise_if_violated()


async def test_booking_v2_of_a_taken_slot_voids_the_authorization_given_meanwhile(
    kit: SagaTestEnvironment,
) -> None:
    member, slot = await booking_scene(kit)
    first = await book(kit, member, slot)
    assert (await kit.settle(first)).status is SagaStatus.COMPLETED
    second = await book(kit, member, slot)
    summary = await kit.settle(second)

    assert summary.status is SagaStatus.COMPENSATED
    assert "slot taken" in (summary.error or "")
    voided = await kit.query(
        "SELECT status FROM plan_journey.plan_pre_authorization WHERE saga_id = $1", second
    )
    assert voided == [{"status": "voided"}]
    assert await coverage(kit, member) == {"used_cents": 0, "reserved_cents": 20_000}
    (await check_invariants(kit.database, saga_ids=[first, second])).raise_if_violated()


async def test_booking_v2_refuses_a_service_date_that_is_not_the_slots(
    kit: SagaTestEnvironment,
) -> None:
    member, slot = await booking_scene(kit)
    saga_id = await book_appointment(
        kit.coordinator,
        user_id=member.user_id,
        slot_id=slot.slot_id,
        amount_cents=20_000,
        service_date=slot.service_date.replace(year=slot.service_date.year + 1),
    )
    summary = await kit.settle(saga_id)
    assert summary.status is SagaStatus.COMPENSATED
    assert "is not the slot's" in (summary.error or "")
    (await check_invariants(kit.database, saga_ids=[saga_id])).raise_if_violated()


async def test_booking_v1_still_runs_for_sagas_started_before_the_upgrade(
    kit: SagaTestEnvironment,
) -> None:
    member, slot = await booking_scene(kit)
    saga_id = await book_appointment(
        kit.coordinator, user_id=member.user_id, slot_id=slot.slot_id, amount_cents=20_000
    )
    summary = await kit.settle(saga_id)
    assert summary.status is SagaStatus.COMPLETED, summary.error
    assert await definition_of(kit, saga_id) == ("book_appointment", 1)
    assert BOOK_APPOINTMENT.version == 1
    assert BOOK_APPOINTMENT_V2.version == 2
    (await check_invariants(kit.database, saga_ids=[saga_id])).raise_if_violated()


# -- submit_claim v2 ------------------------------------------------------------------


async def claim_scene(kit: SagaTestEnvironment) -> tuple[world.Member, world.CompletedAppointment]:
    async def build(conn: DriverConnection) -> tuple[world.Member, world.CompletedAppointment]:
        member = await world.create_member(conn, limit_cents=1_000_000)
        provider = await world.create_provider(conn)
        done = await world.create_completed_appointment(conn, member.user_id, provider)
        return member, done

    return await kit.scene(build)


async def claim(
    kit: SagaTestEnvironment,
    member: world.Member,
    done: world.CompletedAppointment,
    amount_cents: int,
) -> uuid.UUID:
    return await submit_claim(
        kit.coordinator,
        user_id=member.user_id,
        appointment_id=done.appointment_id,
        amount_cents=amount_cents,
        service_date=done.service_date,
        procedure_code=CONSULTATION,
        review_threshold_cents=THRESHOLD,
    )


async def until_waiting(kit: SagaTestEnvironment, saga_id: uuid.UUID) -> SagaSummary:
    await kit.deliver()
    summary = await kit.coordinator.status(saga_id)
    assert summary.status is SagaStatus.WAITING, (summary.status, summary.error)
    return summary


async def claim_status(kit: SagaTestEnvironment, saga_id: uuid.UUID) -> list[str]:
    rows = await kit.query("SELECT status FROM plan_journey.plan_claim WHERE saga_id = $1", saga_id)
    return [r["status"] for r in rows]


async def test_a_claim_under_the_threshold_goes_on_without_waiting(
    kit: SagaTestEnvironment,
) -> None:
    member, done = await claim_scene(kit)
    saga_id = await claim(kit, member, done, THRESHOLD)
    summary = await kit.settle(saga_id)

    assert summary.status is SagaStatus.COMPLETED, summary.error
    assert await definition_of(kit, saga_id) == ("submit_claim", 2)
    assert summary.context["needs_review"] is False
    assert "review" not in summary.context
    assert summary.context["reviewed"] is False
    assert await claim_status(kit, saga_id) == ["approved"]
    (await check_invariants(kit.database, saga_ids=[saga_id])).raise_if_violated()


async def test_a_claim_above_the_threshold_waits_and_goes_on_when_approved(
    kit: SagaTestEnvironment,
) -> None:
    member, done = await claim_scene(kit)
    saga_id = await claim(kit, member, done, THRESHOLD + 1)
    await until_waiting(kit, saga_id)
    receipt = await kit.coordinator.signal(
        saga_id,
        CLAIM_REVIEWED,
        {"approved": True, "reason": "laudo confere"},
        signal_id=f"review-{saga_id}",
        actor="auditor.ana",
    )
    summary = await kit.settle(saga_id)

    assert receipt.outcome is SignalOutcome.ACCEPTED
    assert summary.status is SagaStatus.COMPLETED, summary.error
    assert summary.context["review"] == {"approved": True, "reason": "laudo confere"}
    assert summary.context["reviewed"] is True
    assert await claim_status(kit, saga_id) == ["approved"]
    assert await coverage(kit, member) == {"used_cents": THRESHOLD + 1, "reserved_cents": 0}
    (await check_invariants(kit.database, saga_ids=[saga_id])).raise_if_violated()


async def test_a_rejected_claim_is_refused_by_plan_and_cancelled(
    kit: SagaTestEnvironment,
) -> None:
    member, done = await claim_scene(kit)
    saga_id = await claim(kit, member, done, THRESHOLD + 1)
    await until_waiting(kit, saga_id)
    await kit.coordinator.signal(
        saga_id,
        CLAIM_REVIEWED,
        {"approved": False, "reason": "procedimento sem cobertura"},
        signal_id=f"review-{saga_id}",
        actor="auditor.ana",
    )
    summary = await kit.settle(saga_id)

    assert summary.status is SagaStatus.COMPENSATED
    assert "claim rejected by the plan auditor: procedimento sem cobertura" in (summary.error or "")
    assert await executed(kit, saga_id) == [
        ("create_claim", "execute", "succeeded"),
        ("review", "execute", "succeeded"),
        ("apply_review", "execute", "failed"),
        ("create_claim", "compensate", "succeeded"),
    ]
    assert await claim_status(kit, saga_id) == ["cancelled"]
    assert await coverage(kit, member) == {"used_cents": 0, "reserved_cents": 0}
    (await check_invariants(kit.database, saga_ids=[saga_id])).raise_if_violated()


async def test_a_review_that_does_not_say_approved_true_or_false_refuses_the_claim(
    kit: SagaTestEnvironment,
) -> None:
    member, done = await claim_scene(kit)
    saga_id = await claim(kit, member, done, THRESHOLD + 1)
    await until_waiting(kit, saga_id)
    await kit.coordinator.signal(
        saga_id, CLAIM_REVIEWED, {"approved": "yes"}, signal_id="typo", actor="auditor.ana"
    )
    summary = await kit.settle(saga_id)

    assert summary.status is SagaStatus.COMPENSATED
    assert "the review must say approved true or false" in (summary.error or "")
    assert await claim_status(kit, saga_id) == ["cancelled"]
    (await check_invariants(kit.database, saga_ids=[saga_id])).raise_if_violated()


async def test_a_claim_never_reviewed_is_compensated_with_that_reason(
    kit: SagaTestEnvironment,
) -> None:
    member, done = await claim_scene(kit)
    saga_id = await claim(kit, member, done, THRESHOLD + 1)
    await until_waiting(kit, saga_id)
    # Three days pass on the kit's clock; the timeout worker's sweep finds the wait overdue.
    await kit.advance(CLAIM_REVIEW_TIMEOUT_SECONDS + 1)
    assert await kit.sweep()
    summary = await kit.settle(saga_id)

    assert summary.status is SagaStatus.COMPENSATED
    assert "wait 'review': no 'claim_reviewed' signal within" in (summary.error or "")
    # The auditor comes too late: the finished saga refuses the review, nothing is stored.
    with pytest.raises(SignalRefused):
        await kit.coordinator.signal(
            saga_id, CLAIM_REVIEWED, {"approved": True}, signal_id="late", actor="auditor.ana"
        )
    assert await kit.query("SELECT 1 FROM shared.saga_signal WHERE signal_id = 'late'") == []
    assert await claim_status(kit, saga_id) == ["cancelled"]
    assert await coverage(kit, member) == {"used_cents": 0, "reserved_cents": 0}
    (await check_invariants(kit.database, saga_ids=[saga_id])).raise_if_violated()


async def test_a_review_sent_before_the_wait_is_kept_and_applied_there(
    kit: SagaTestEnvironment,
) -> None:
    member, done = await claim_scene(kit)
    saga_id = await claim(kit, member, done, THRESHOLD + 1)
    # Nothing delivered yet: the claim is still being created.
    early = await kit.coordinator.signal(
        saga_id, CLAIM_REVIEWED, {"approved": True}, signal_id="early", actor="auditor.bia"
    )
    again = await kit.coordinator.signal(
        saga_id, CLAIM_REVIEWED, {"approved": True}, signal_id="early", actor="auditor.bia"
    )
    summary = await kit.settle(saga_id)

    assert early.outcome is SignalOutcome.KEPT
    assert again.repeated
    assert summary.status is SagaStatus.COMPLETED, summary.error
    assert summary.context["review"] == {"approved": True}
    (await check_invariants(kit.database, saga_ids=[saga_id])).raise_if_violated()


async def test_claim_v1_still_runs_without_a_review(kit: SagaTestEnvironment) -> None:
    member, done = await claim_scene(kit)
    payload = {
        "user_id": str(member.user_id),
        "appointment_id": str(done.appointment_id),
        "amount_cents": THRESHOLD * 10,
        "service_date": done.service_date.isoformat(),
        "procedure_code": CONSULTATION,
        "diagnosis_code": None,
        "achievement_code": "first_claim",
        "source_journey": "plan",
    }
    summary = await kit.run(SUBMIT_CLAIM, payload)
    assert summary.status is SagaStatus.COMPLETED, summary.error
    assert SUBMIT_CLAIM_V2.version == 2
    (await check_invariants(kit.database, saga_ids=[summary.id])).raise_if_violated()
