"""The invariant check (journeys/invariants.py): a clean scene of the three sagas passes,
each kind of violation crafted on its own is reported, and the sample seeds pass."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypeVar

import pytest

from journeys.care.sagas import BOOK_APPOINTMENT, BOOKING_POINTS
from journeys.health.sagas import COMPLETE_HEALTH_GOAL, WELLNESS_CREDIT_CENTS
from journeys.invariants import (
    MAX_MESSAGE_LINES,
    InvariantReport,
    InvariantViolation,
    check_invariants,
)
from journeys.plan.sagas import CLAIM_ACHIEVEMENT, SUBMIT_CLAIM, SUBMIT_CLAIM_V2
from journeys.world import (
    create_completed_appointment,
    create_goal,
    create_member,
    create_provider,
    create_slots,
)
from saga.definition import SagaDefinition
from saga.store import Database
from saga.store.definitions import register
from saga.store.driver import DriverConnection
from saga.store.seeding import discover_seeders, run_seeders
from tests.integration.conftest import SagaEnvironment

pytestmark = pytest.mark.integration

T = TypeVar("T")

AMOUNT_CENTS = 15_000
CLAIM_CENTS = 20_000
GOAL_POINTS = 50


@dataclass(frozen=True)
class Scene:
    """One saga of each kind in a state its handlers would leave, plus a parked one."""

    user_id: uuid.UUID
    coverage_id: uuid.UUID
    provider_id: uuid.UUID
    booked: uuid.UUID  # book_appointment, completed
    booked_appointment: uuid.UUID
    booked_slot: uuid.UUID
    unbooked: uuid.UUID  # book_appointment, compensated
    unbooked_appointment: uuid.UUID
    spare_slot: uuid.UUID
    claimed: uuid.UUID  # submit_claim, completed
    goal_done: uuid.UUID  # complete_health_goal, completed
    parked: uuid.UUID  # book_appointment, parked

    @property
    def sagas(self) -> list[uuid.UUID]:
        return [self.booked, self.unbooked, self.claimed, self.goal_done, self.parked]


async def driver(database: Database, unit: Callable[[DriverConnection], Awaitable[T]]) -> T:
    return await database.run_driver(unit)


async def insert_saga(
    conn: DriverConnection,
    definition: SagaDefinition,
    status: str,
    payload: dict[str, Any],
    *,
    error: str | None = None,
    current_step: int = 0,
) -> uuid.UUID:
    stored = await register(conn, definition)
    finished = status in ("completed", "compensated")
    saga_id: uuid.UUID = await conn.fetchval(
        """
        INSERT INTO shared.saga_instance (
            saga_definition_id, definition_name, definition_version, status, current_step,
            payload, error, finished_at
        ) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, CASE WHEN $8 THEN now() END)
        RETURNING id
        """,
        stored.id,
        definition.name,
        definition.version,
        status,
        current_step,
        json.dumps(payload),
        error,
        finished,
    )
    return saga_id


async def profile_of(conn: DriverConnection, user_id: uuid.UUID) -> uuid.UUID:
    profile_id: uuid.UUID = await conn.fetchval(
        """
        INSERT INTO gamification.gamification_profile (user_id, display_name)
        VALUES ($1, 'Paciente') ON CONFLICT (user_id) DO UPDATE SET display_name = 'Paciente'
        RETURNING id
        """,
        user_id,
    )
    return profile_id


async def award(
    conn: DriverConnection, user_id: uuid.UUID, saga_id: uuid.UUID, points: int, source_ref: str
) -> uuid.UUID:
    entry_id: uuid.UUID = await conn.fetchval(
        """
        INSERT INTO gamification.gamification_points_ledger
            (profile_id, points, reason, source_journey, source_ref, saga_id)
        VALUES ($1, $2, 'teste', 'care', $3, $4) RETURNING id
        """,
        await profile_of(conn, user_id),
        points,
        source_ref,
        saga_id,
    )
    return entry_id


async def revoke(conn: DriverConnection, entry_id: uuid.UUID) -> None:
    await conn.execute(
        """
        INSERT INTO gamification.gamification_points_ledger
            (profile_id, points, reason, source_journey, source_ref, saga_id, reverses_entry_id)
        SELECT profile_id, -points, 'revoked: ' || reason, source_journey, source_ref, saga_id, id
        FROM gamification.gamification_points_ledger WHERE id = $1
        """,
        entry_id,
    )


async def appointment_on(
    conn: DriverConnection,
    slot_id: uuid.UUID,
    patient_id: uuid.UUID,
    status: str,
    saga_id: uuid.UUID | None,
    *,
    shift: timedelta = timedelta(0),
) -> uuid.UUID:
    appointment_id: uuid.UUID = await conn.fetchval(
        """
        INSERT INTO care_journey.care_appointment (
            slot_id, provider_id, patient_id, starts_at, ends_at, status, hold_expires_at, saga_id
        )
        SELECT id, provider_id, $2, starts_at + $5::interval, ends_at + $5::interval, $3,
               CASE WHEN $3 = 'held' THEN now() + interval '15 minutes' END, $4
        FROM care_journey.care_slot WHERE id = $1
        RETURNING id
        """,
        slot_id,
        patient_id,
        status,
        saga_id,
        shift,
    )
    return appointment_id


async def pre_authorize(
    conn: DriverConnection,
    coverage_id: uuid.UUID,
    user_id: uuid.UUID,
    appointment_id: uuid.UUID,
    saga_id: uuid.UUID,
    status: str,
) -> None:
    await conn.execute(
        """
        INSERT INTO plan_journey.plan_pre_authorization (
            member_coverage_id, user_id, appointment_id, amount_cents, status, decided_at, saga_id
        ) VALUES ($1, $2, $3, $4, $5, now(), $6)
        """,
        coverage_id,
        user_id,
        appointment_id,
        AMOUNT_CENTS,
        status,
        saga_id,
    )
    if status == "approved":
        await conn.execute(
            "UPDATE plan_journey.plan_member_coverage SET reserved_cents = reserved_cents + $2 "
            "WHERE id = $1",
            coverage_id,
            AMOUNT_CENTS,
        )


def booking_payload(user_id: uuid.UUID, slot_id: uuid.UUID) -> dict[str, Any]:
    return {
        "user_id": str(user_id),
        "slot_id": str(slot_id),
        "amount_cents": AMOUNT_CENTS,
        "reason": None,
        "points": BOOKING_POINTS,
        "source_journey": "care",
        "award_reason": "appointment_booked",
    }


async def build_scene(conn: DriverConnection) -> Scene:
    member = await create_member(conn)
    user = member.user_id
    provider = await create_provider(conn)
    slots = await create_slots(conn, provider, 3)

    # book_appointment, completed: confirmed appointment, approved pre-authorization
    # (reserved on the coverage), points awarded once.
    booked = await insert_saga(
        conn, BOOK_APPOINTMENT, "completed", booking_payload(user, slots[0].slot_id)
    )
    booked_appointment = await appointment_on(conn, slots[0].slot_id, user, "confirmed", booked)
    await conn.execute(
        "UPDATE care_journey.care_slot SET status = 'booked' WHERE id = $1", slots[0].slot_id
    )
    await pre_authorize(conn, member.coverage_id, user, booked_appointment, booked, "approved")
    await award(conn, user, booked, BOOKING_POINTS, "book_appointment")

    # book_appointment, compensated: the hold released, the authorization voided, the
    # points revoked.
    unbooked = await insert_saga(
        conn, BOOK_APPOINTMENT, "compensated", booking_payload(user, slots[1].slot_id)
    )
    unbooked_appointment = await appointment_on(conn, slots[1].slot_id, user, "released", unbooked)
    await pre_authorize(conn, member.coverage_id, user, unbooked_appointment, unbooked, "voided")
    await revoke(conn, await award(conn, user, unbooked, BOOKING_POINTS, "book_appointment"))

    # submit_claim, completed: an approved claim counted in used_cents, the appointment
    # billed, the achievement granted with its points.
    visit = await create_completed_appointment(conn, user, provider)
    claimed = await insert_saga(
        conn,
        SUBMIT_CLAIM,
        "completed",
        {
            "user_id": str(user),
            "appointment_id": str(visit.appointment_id),
            "amount_cents": CLAIM_CENTS,
            "service_date": visit.service_date.isoformat(),
            "procedure_code": "10101012",
            "diagnosis_code": None,
            "achievement_code": CLAIM_ACHIEVEMENT,
            "source_journey": "plan",
        },
    )
    await conn.execute(
        """
        INSERT INTO plan_journey.plan_claim (
            member_coverage_id, user_id, appointment_id, amount_cents, approved_cents,
            service_date, status, procedure_code, decided_at, saga_id
        ) VALUES ($1, $2, $3, $4, $4, $5, 'approved', '10101012', now(), $6)
        """,
        member.coverage_id,
        user,
        visit.appointment_id,
        CLAIM_CENTS,
        visit.service_date,
        claimed,
    )
    await conn.execute(
        "UPDATE plan_journey.plan_member_coverage SET used_cents = used_cents + $2 WHERE id = $1",
        member.coverage_id,
        CLAIM_CENTS,
    )
    await conn.execute(
        "UPDATE care_journey.care_appointment SET status = 'billed' WHERE id = $1",
        visit.appointment_id,
    )
    achievement = await conn.fetchrow(
        "SELECT id, points_reward FROM gamification.gamification_achievement WHERE code = $1",
        CLAIM_ACHIEVEMENT,
    )
    assert achievement is not None
    assert achievement["points_reward"] > 0
    await conn.execute(
        """
        INSERT INTO gamification.gamification_user_achievement (profile_id, achievement_id, saga_id)
        VALUES ($1, $2, $3)
        """,
        await profile_of(conn, user),
        achievement["id"],
        claimed,
    )
    await award(
        conn, user, claimed, achievement["points_reward"], f"achievement:{CLAIM_ACHIEVEMENT}"
    )

    # complete_health_goal, completed: the goal completed by it, a credit applied, the
    # goal's points awarded.
    goal_id = await create_goal(conn, user, points_reward=GOAL_POINTS)
    goal_done = await insert_saga(
        conn,
        COMPLETE_HEALTH_GOAL,
        "completed",
        {
            "user_id": str(user),
            "goal_id": str(goal_id),
            "completion_value": "9000",
            "measurement": None,
            "credit_cents": WELLNESS_CREDIT_CENTS,
            "source_journey": "health",
            "award_reason": "goal_completed",
        },
    )
    await conn.execute(
        """
        UPDATE health_journey.health_goal
        SET status = 'completed', completed_at = now(), completion_value = $2, saga_id = $3
        WHERE id = $1
        """,
        goal_id,
        Decimal(9000),
        goal_done,
    )
    await conn.execute(
        """
        INSERT INTO plan_journey.plan_wellness_credit (
            member_coverage_id, user_id, amount_cents, reason, source_goal_id, saga_id
        ) VALUES ($1, $2, $3, 'meta de saúde concluída', $4, $5)
        """,
        member.coverage_id,
        user,
        WELLNESS_CREDIT_CENTS,
        goal_id,
        goal_done,
    )
    await award(conn, user, goal_done, GOAL_POINTS, "complete_health_goal")

    parked = await insert_saga(
        conn,
        BOOK_APPOINTMENT,
        "parked",
        booking_payload(user, slots[2].slot_id),
        error="compensation of reserve_slot failed 5 times",
    )
    return Scene(
        user_id=user,
        coverage_id=member.coverage_id,
        provider_id=provider,
        booked=booked,
        booked_appointment=booked_appointment,
        booked_slot=slots[0].slot_id,
        unbooked=unbooked,
        unbooked_appointment=unbooked_appointment,
        spare_slot=slots[2].slot_id,
        claimed=claimed,
        goal_done=goal_done,
        parked=parked,
    )


@pytest.fixture
async def scene(saga_env: SagaEnvironment) -> Scene:
    return await driver(saga_env.database, build_scene)


async def execute(database: Database, *statements: str) -> None:
    async def unit(conn: DriverConnection) -> None:
        for statement in statements:
            await conn.execute(statement)

    await driver(database, unit)


def only(report: InvariantReport, tag: str) -> list[str]:
    """The violations of one invariant; and no other kind was reported."""
    assert report.violations, "expected a violation"
    assert all(v.startswith(tag) for v in report.violations), report.violations
    return report.violations


async def test_a_clean_scene_passes(saga_env: SagaEnvironment, scene: Scene) -> None:
    report = await check_invariants(saga_env.database)

    assert report.violations == []
    assert report.ok
    report.raise_if_violated()
    assert report.sagas_by_status == {
        "running": 0,
        "compensating": 0,
        "completed": 3,
        "compensated": 1,
        "parked": 1,
        "aborted": 0,
        "waiting": 0,
    }
    assert report.parked == [(scene.parked, "compensation of reserve_slot failed 5 times")]

    some = await check_invariants(saga_env.database, saga_ids=[scene.booked, scene.unbooked])
    assert some.ok
    assert some.sagas_by_status["completed"] == 1
    assert some.sagas_by_status["compensated"] == 1
    assert some.parked == []

    missing = uuid.uuid4()
    unknown = await check_invariants(saga_env.database, saga_ids=[scene.booked, missing])
    assert only(unknown, "[terminal]") == [
        f"[terminal] saga {missing} was asked for but does not exist"
    ]


async def test_running_and_parked_sagas(saga_env: SagaEnvironment, scene: Scene) -> None:
    parked = f"[terminal] saga {scene.parked} (book_appointment) parked"
    reason = "compensation of reserve_slot failed 5 times"

    # Parked with a reason: reported, and a violation only when parking is not allowed.
    report = await check_invariants(saga_env.database, allow_parked=False)
    assert only(report, "[terminal]") == [f"{parked}: {reason}"]
    assert report.parked == [(scene.parked, reason)]

    # Parked without a reason is a violation either way.
    await execute(
        saga_env.database,
        f"UPDATE shared.saga_instance SET error = '  ' WHERE id = '{scene.parked}'",
    )
    report = await check_invariants(saga_env.database, saga_ids=[scene.parked])
    assert only(report, "[terminal]") == [f"{parked} without a reason"]

    async def start(conn: DriverConnection) -> uuid.UUID:
        payload = booking_payload(scene.user_id, scene.spare_slot)
        return await insert_saga(conn, BOOK_APPOINTMENT, "running", payload, current_step=1)

    running = await driver(saga_env.database, start)
    report = await check_invariants(saga_env.database, saga_ids=[running, scene.booked])

    assert only(report, "[terminal]") == [
        f"[terminal] saga {running} (book_appointment) left running at step 1"
    ]
    assert report.sagas_by_status["running"] == 1
    with pytest.raises(InvariantViolation, match="left running"):
        report.raise_if_violated()


async def test_a_completed_booking_without_its_appointment(
    saga_env: SagaEnvironment, scene: Scene
) -> None:
    await execute(
        saga_env.database,
        "UPDATE care_journey.care_appointment SET status = 'cancelled' "
        f"WHERE id = '{scene.booked_appointment}'",
    )

    report = await check_invariants(saga_env.database)

    assert only(report, "[effects]") == [
        f"[effects] book_appointment saga {scene.booked} (completed): 0 live "
        "confirmed/completed/billed appointments (none), expected exactly 1"
    ]
    assert report.effect_problems() == {"lost": 1}


async def test_a_completed_booking_awarded_twice(saga_env: SagaEnvironment, scene: Scene) -> None:
    async def again(conn: DriverConnection) -> None:
        await award(conn, scene.user_id, scene.booked, BOOKING_POINTS, "book_appointment:again")

    await driver(saga_env.database, again)

    report = await check_invariants(saga_env.database)

    prefix = f"[effects] book_appointment saga {scene.booked} (completed)"
    assert only(report, "[effects]") == [
        f"{prefix}: ledger nets 20 points, the payload awards 10",
        f"{prefix}: 2 un-reversed awards in the ledger, expected 1",
    ]
    assert report.effect_problems() == {"duplicated": 2}


async def test_a_compensated_booking_that_left_its_hold(
    saga_env: SagaEnvironment, scene: Scene
) -> None:
    await execute(
        saga_env.database,
        "UPDATE care_journey.care_appointment "
        "SET status = 'held', hold_expires_at = now() + interval '10 minutes' "
        f"WHERE id = '{scene.unbooked_appointment}'",
    )

    report = await check_invariants(saga_env.database)

    effects, hold = report.violations
    assert effects == (
        f"[effects] book_appointment saga {scene.unbooked} (compensated): "
        f"1 live appointments left ({scene.unbooked_appointment} held)"
    )
    assert hold.startswith(f"[hold] appointment {scene.unbooked_appointment} is still held")
    assert hold.endswith(f"though its book_appointment saga {scene.unbooked} is compensated")
    assert report.effect_problems() == {"not undone": 1}


async def test_claim_and_goal_sagas_with_missing_or_leftover_effects(
    saga_env: SagaEnvironment, scene: Scene
) -> None:
    # Completed, but the claim billed nothing and the goal is still active.
    await execute(
        saga_env.database,
        "UPDATE care_journey.care_appointment SET status = 'completed' WHERE status = 'billed'",
        "UPDATE health_journey.health_goal SET status = 'active', completed_at = NULL "
        f"WHERE saga_id = '{scene.goal_done}'",
    )
    report = await check_invariants(saga_env.database)

    goal, claim = only(report, "[effects]")
    assert goal.startswith(f"[effects] complete_health_goal saga {scene.goal_done} (completed)")
    assert "is active (saga " in goal
    assert goal.endswith("not completed by this saga")
    assert claim.startswith(f"[effects] submit_claim saga {scene.claimed} (completed)")
    assert claim.endswith("is completed, not billed")
    assert report.effect_problems() == {"wrong": 2}

    # As if their compensation had been recorded without undoing the rest.
    await execute(
        saga_env.database,
        "UPDATE shared.saga_instance SET status = 'compensated' "
        f"WHERE id IN ('{scene.claimed}', '{scene.goal_done}')",
    )
    report = await check_invariants(saga_env.database)

    found = only(report, "[effects]")
    goal_prefix = f"[effects] complete_health_goal saga {scene.goal_done} (compensated): "
    claim_prefix = f"[effects] submit_claim saga {scene.claimed} (compensated): "
    assert [v.split(": ", 1)[0] + ": " for v in found] == [goal_prefix] * 2 + [claim_prefix] * 3
    assert [v.split(": ", 1)[1].split(" (")[0] for v in found] == [
        "1 applied wellness credits left",
        f"ledger nets {GOAL_POINTS} points, expected 0",
        "1 claims not cancelled",
        "1 live achievement grants left",
        "ledger nets 30 points, expected 0",
    ]
    assert report.effect_problems() == {"not undone": 5}


async def test_xp_that_disagrees_with_the_ledger(saga_env: SagaEnvironment, scene: Scene) -> None:
    # The guard trigger refuses a direct xp update; the owner switches it off to desync.
    await execute(
        saga_env.database,
        "ALTER TABLE gamification.gamification_profile "
        "DISABLE TRIGGER gamification_profile_xp_guard",
        "UPDATE gamification.gamification_profile SET xp = xp + 5 "
        f"WHERE user_id = '{scene.user_id}'",
        "ALTER TABLE gamification.gamification_profile "
        "ENABLE TRIGGER gamification_profile_xp_guard",
    )

    report = await check_invariants(saga_env.database)

    total = BOOKING_POINTS + 30 + GOAL_POINTS
    [violation] = only(report, "[xp]")
    assert violation.endswith(
        f"(user {scene.user_id}) has xp {total + 5}, its ledger sums to {total}"
    )


async def test_overlapping_and_doubled_appointments(
    saga_env: SagaEnvironment, scene: Scene
) -> None:
    # The constraints forbid both; dropped here to craft what they would have prevented.
    await execute(
        saga_env.database,
        "ALTER TABLE care_journey.care_appointment "
        "DROP CONSTRAINT care_appointment_no_double_booking",
        "DROP INDEX care_journey.care_appointment_slot_id_key",
    )

    async def double(conn: DriverConnection) -> tuple[uuid.UUID, uuid.UUID]:
        # Another live appointment on the booked slot, and one on the spare slot (an hour
        # later) moved to overlap the booked one by twenty minutes.
        twin = await appointment_on(conn, scene.booked_slot, scene.user_id, "confirmed", None)
        shifted = await appointment_on(
            conn, scene.spare_slot, scene.user_id, "held", None, shift=timedelta(minutes=-50)
        )
        return twin, shifted

    twin, shifted = await driver(saga_env.database, double)

    report = await check_invariants(saga_env.database)

    overlaps = [v for v in report.violations if v.startswith("[double-booking]")]
    slots = [v for v in report.violations if v.startswith("[slot]")]
    assert len(overlaps) + len(slots) == len(report.violations)
    first, second = sorted([scene.booked_appointment, twin])
    assert len(overlaps) == 2
    assert f"appointment {second} " in overlaps[0]
    assert f"overlaps {first} " in overlaps[0]
    assert f"appointment {shifted} " in overlaps[1]
    assert f"overlaps {first} " in overlaps[1]
    assert slots == [
        f"[slot] slot {scene.booked_slot} has several live appointments: "
        + ", ".join(f"{a} confirmed" for a in sorted([scene.booked_appointment, twin]))
    ]


async def test_coverage_that_disagrees_with_its_claims_and_authorizations(
    saga_env: SagaEnvironment, scene: Scene
) -> None:
    coverage = f"UPDATE plan_journey.plan_member_coverage SET {{}} WHERE id = '{scene.coverage_id}'"

    await execute(saga_env.database, coverage.format("used_cents = used_cents + 100"))
    [used] = only(await check_invariants(saga_env.database), "[coverage]")
    assert used.startswith(f"[coverage] coverage {scene.coverage_id} ")
    assert used.endswith(
        f"used_cents is {CLAIM_CENTS + 100}, its approved/paid claims sum to {CLAIM_CENTS}"
    )

    # A live claim linking the booking's pre-authorization converts its reservation:
    # it no longer counts in reserved_cents.
    await execute(
        saga_env.database,
        coverage.format("used_cents = used_cents - 100"),
        "UPDATE plan_journey.plan_claim SET pre_authorization_id = ("
        "SELECT id FROM plan_journey.plan_pre_authorization "
        f"WHERE saga_id = '{scene.booked}') WHERE saga_id = '{scene.claimed}'",
    )
    [reserved] = only(await check_invariants(saga_env.database), "[coverage]")
    assert reserved.endswith(
        f"reserved_cents is {AMOUNT_CENTS}, its unclaimed approved pre-authorizations sum to 0"
    )

    await execute(saga_env.database, coverage.format("reserved_cents = 0"))
    assert (await check_invariants(saga_env.database)).ok


def test_the_message_lists_fifty_violations_and_counts_the_rest() -> None:
    report = InvariantReport({}, [], [f"[xp] violation {n}" for n in range(60)])

    with pytest.raises(InvariantViolation) as raised:
        report.raise_if_violated()

    lines = str(raised.value).splitlines()
    assert lines[0] == "60 invariant violation(s):"
    assert lines[1:-1] == [f"  - [xp] violation {n}" for n in range(MAX_MESSAGE_LINES)]
    assert lines[-1] == "  ... and 10 more"


async def test_the_sample_seeds_pass(saga_env: SagaEnvironment) -> None:
    report = await saga_env.database.run(
        lambda conn: run_seeders(conn, discover_seeders(), include_samples=True), name="seed"
    )
    assert report.inserted["care.samples"]["care_journey.care_appointment"] > 0
    assert report.inserted["plan.samples"]["plan_journey.plan_claim"] > 0
    assert report.inserted["gamification.samples"]["gamification.gamification_points_ledger"] > 0

    checked = await check_invariants(saga_env.database)

    assert checked.violations == []
    assert sum(checked.sagas_by_status.values()) == 0


async def test_a_saga_left_waiting_or_overdue_on_its_wait(
    saga_env: SagaEnvironment, scene: Scene
) -> None:
    async def start(conn: DriverConnection) -> uuid.UUID:
        payload = {"user_id": str(scene.user_id), "amount_cents": CLAIM_CENTS}
        return await insert_saga(conn, SUBMIT_CLAIM_V2, "waiting", payload, current_step=1)

    waiting = await driver(saga_env.database, start)
    await execute(
        saga_env.database,
        'UPDATE shared.saga_instance SET shape_state = \'{"waiting_for": "claim_reviewed"}\', '
        f"step_deadline = now() + interval '1 hour' WHERE id = '{waiting}'",
    )
    saga = f"[terminal] saga {waiting} (submit_claim)"

    report = await check_invariants(saga_env.database, saga_ids=[waiting])
    assert only(report, "[terminal]") == [f"{saga} left waiting for claim_reviewed at step 1"]
    assert report.sagas_by_status["waiting"] == 1
    # A workload still under way may allow waits its timeout worker will end.
    assert (await check_invariants(saga_env.database, saga_ids=[waiting], allow_waiting=True)).ok

    # Past its deadline (beyond the grace) no one drove it: a violation even when allowed.
    await execute(
        saga_env.database,
        "UPDATE shared.saga_instance SET step_deadline = now() - interval '5 minutes' "
        f"WHERE id = '{waiting}'",
    )
    report = await check_invariants(saga_env.database, saga_ids=[waiting], allow_waiting=True)
    [overdue] = only(report, "[terminal]")
    assert overdue.startswith(f"{saga} waits for claim_reviewed past its deadline")
    assert (
        await check_invariants(
            saga_env.database, saga_ids=[waiting], allow_waiting=True, overdue_grace=3600
        )
    ).ok


async def test_a_claim_completed_against_or_without_its_review(
    saga_env: SagaEnvironment, scene: Scene
) -> None:
    prefix = f"[effects] submit_claim saga {scene.claimed} (completed)"
    context = {"needs_review": True, "review": {"approved": False, "reason": "sem laudo"}}
    await execute(
        saga_env.database,
        f"UPDATE shared.saga_instance SET context = '{json.dumps(context)}'::jsonb "
        f"WHERE id = '{scene.claimed}'",
    )
    report = await check_invariants(saga_env.database)
    assert only(report, "[effects]") == [
        f"{prefix}: completed though the plan auditor rejected it",
        f"{prefix}: completed above the review threshold without an approving review",
    ]

    await execute(
        saga_env.database,
        "UPDATE shared.saga_instance SET context = '{\"needs_review\": true}'::jsonb "
        f"WHERE id = '{scene.claimed}'",
    )
    report = await check_invariants(saga_env.database)
    assert only(report, "[effects]") == [
        f"{prefix}: completed above the review threshold without an approving review"
    ]

    await execute(
        saga_env.database,
        "UPDATE shared.saga_instance SET context = "
        '\'{"needs_review": true, "review": {"approved": true}}\'::jsonb '
        f"WHERE id = '{scene.claimed}'",
    )
    assert (await check_invariants(saga_env.database)).ok


async def test_a_parallel_booking_completed_under_another_appointment(
    saga_env: SagaEnvironment, scene: Scene
) -> None:
    chosen = uuid.uuid4()
    await execute(
        saga_env.database,
        "UPDATE shared.saga_instance "
        f'SET payload = payload || \'{{"appointment_id": "{chosen}"}}\'::jsonb '
        f"WHERE id = '{scene.booked}'",
    )
    report = await check_invariants(saga_env.database)
    assert only(report, "[effects]") == [
        f"[effects] book_appointment saga {scene.booked} (completed): booked appointment "
        f"{scene.booked_appointment}, not the {chosen} its payload chose"
    ]
