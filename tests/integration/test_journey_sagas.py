"""The three cross-journey sagas through the real journey services and PostgreSQL: success
and compensation paths in the test kit (saga.testing, one process, no broker); contention
and a randomized mixed workload through the coordinator and the broker, after which the
invariants of DESIGN.md are checked."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from typing import Any

import pytest

from journeys import world
from journeys.care.sagas import BOOK_APPOINTMENT, book_appointment
from journeys.health.sagas import COMPLETE_HEALTH_GOAL, complete_health_goal
from journeys.invariants import check_invariants
from journeys.plan.sagas import SUBMIT_CLAIM, submit_claim
from journeys.scenarios import CONSULTATION, SCENARIOS
from saga.machine import SagaStatus
from saga.participant import Handler, StepContext
from saga.participant.journey import JourneyService, discover_journeys
from saga.settings import Settings
from saga.stack import RunningServices, running_services
from saga.store.driver import DriverConnection
from saga.testing import SagaTestEnvironment
from tests.integration.conftest import SagaEnvironment
from tests.integration.sagas import FAST_RELAY

pytestmark = pytest.mark.integration


def with_faults(service: JourneyService) -> JourneyService:
    """The service with every handler able to fail on purpose: a payload's
    ``inject`` maps an action to how many of its attempts raise before it runs."""

    def faulty(action: str, handler: Handler) -> Handler:
        async def run(step: StepContext) -> Mapping[str, Any] | None:
            if step.attempt <= step.payload.get("inject", {}).get(action, 0):
                raise RuntimeError(f"injected fault in {action}, attempt {step.attempt}")
            return await handler(step)

        return run

    handlers = {action: faulty(action, h) for action, h in service.handlers.items()}
    return dataclasses.replace(service, handlers=handlers)


@pytest.fixture
async def services(saga_env: SagaEnvironment) -> AsyncIterator[RunningServices]:
    journeys = [with_faults(service) for service in discover_journeys().values()]
    async with running_services(
        saga_env.settings,
        database_url=saga_env.database_url,
        bootstrap_servers=saga_env.bootstrap,
        journeys=journeys,
        coordinator_options={"relay": FAST_RELAY},
        participant_options={"relay": FAST_RELAY},
    ) as running:
        yield running


@pytest.fixture
async def kit(settings: Settings, kit_database: str) -> AsyncIterator[SagaTestEnvironment]:
    async with SagaTestEnvironment(
        settings=settings,
        database_url=kit_database,
        journeys=list(discover_journeys().values()),
    ) as env:
        yield env


async def scene(services: RunningServices, build: Any) -> Any:
    return await services.database.run_driver(build)


async def rows(services: RunningServices, sql: str, *args: Any) -> list[dict[str, Any]]:
    async def fetch(conn: DriverConnection) -> list[dict[str, Any]]:
        return [dict(row) for row in await conn.fetch(sql, *args)]

    return await services.database.run_driver(fetch, transaction=False)


async def finished(services: RunningServices, saga_id: uuid.UUID) -> Any:
    return await services.coordinator.wait(saga_id, timeout=60)


async def test_scenarios_complete_and_compensate_and_keep_the_invariants(
    services: RunningServices,
) -> None:
    lines: list[str] = []
    for scenario in SCENARIOS:
        await scenario.run(services, lines.append)
    text = "\n".join(lines)
    # Each scenario's sagas, and the health goal's two children (the wellness credit).
    assert text.count(": completed in") == 4, text
    assert text.count(": compensated in") == 4, text
    assert text.count("grant_wellness_credit v1: completed in") == 1, text
    assert text.count("grant_wellness_credit v1: compensated in") == 1, text
    # The claim's review came from `saga signal`, run on the services' database and topics.
    assert '"outcome": "accepted"' in text, text
    reviews = await rows(
        services,
        "SELECT l.actor, s.reason FROM shared.saga_step_log l JOIN shared.saga_signal s "
        "ON s.saga_instance_id = l.saga_instance_id "
        "WHERE l.step_name = 'review' AND l.status = 'succeeded'",
    )
    assert reviews == [{"actor": "auditor.marina", "reason": "laudo confere"}]
    (await check_invariants(services.database)).raise_if_violated()


async def test_booking_completes_with_every_effect_once(kit: SagaTestEnvironment) -> None:
    async def build(conn: DriverConnection) -> tuple[world.Member, list[world.Slot]]:
        member = await world.create_member(conn, limit_cents=100_000)
        provider = await world.create_provider(conn)
        return member, await world.create_slots(conn, provider, 1)

    member, slots = await kit.scene(build)
    saga_id = await book_appointment(
        kit.coordinator, user_id=member.user_id, slot_id=slots[0].slot_id, amount_cents=20_000
    )
    summary = await kit.settle(saga_id)
    assert summary.status is SagaStatus.COMPLETED, summary.error
    appointments = await kit.query(
        "SELECT status, hold_expires_at, saga_id FROM care_journey.care_appointment "
        "WHERE patient_id = $1",
        member.user_id,
    )
    assert appointments == [{"status": "confirmed", "hold_expires_at": None, "saga_id": saga_id}]
    slot = await kit.query(
        "SELECT status FROM care_journey.care_slot WHERE id = $1", slots[0].slot_id
    )
    assert slot == [{"status": "booked"}]
    coverage = await kit.query(
        "SELECT used_cents, reserved_cents FROM plan_journey.plan_member_coverage WHERE id = $1",
        member.coverage_id,
    )
    assert coverage == [{"used_cents": 0, "reserved_cents": 20_000}]
    ledger = await kit.query(
        "SELECT l.points, p.xp FROM gamification.gamification_points_ledger l "
        "JOIN gamification.gamification_profile p ON p.id = l.profile_id WHERE l.saga_id = $1",
        saga_id,
    )
    assert ledger == [{"points": 10, "xp": 10}]
    audit = await kit.query(
        "SELECT table_name, operation FROM plan_journey.plan_audit_log WHERE saga_id = $1 "
        "ORDER BY changed_at, table_name",
        saga_id,
    )
    assert {(a["table_name"], a["operation"]) for a in audit} == {
        ("plan_pre_authorization", "INSERT"),
        ("plan_member_coverage", "UPDATE"),
    }


async def test_booking_refused_by_the_plan_releases_the_hold(kit: SagaTestEnvironment) -> None:
    async def build(conn: DriverConnection) -> tuple[world.Member, list[world.Slot]]:
        member = await world.create_member(conn, limit_cents=10_000)
        provider = await world.create_provider(conn)
        return member, await world.create_slots(conn, provider, 1)

    member, slots = await kit.scene(build)
    saga_id = await book_appointment(
        kit.coordinator, user_id=member.user_id, slot_id=slots[0].slot_id, amount_cents=20_000
    )
    summary = await kit.settle(saga_id)
    assert summary.status is SagaStatus.COMPENSATED
    assert summary.error is not None
    assert "not covered" in summary.error
    appointments = await kit.query(
        "SELECT status FROM care_journey.care_appointment WHERE saga_id = $1",
        saga_id,
    )
    assert appointments == [{"status": "released"}]
    slot = await kit.query(
        "SELECT status FROM care_journey.care_slot WHERE id = $1", slots[0].slot_id
    )
    assert slot == [{"status": "open"}]
    (await check_invariants(kit.database, saga_ids=[saga_id])).raise_if_violated()


async def test_fifty_concurrent_bookings_of_one_slot_confirm_exactly_one(
    services: RunningServices,
) -> None:
    async def build(conn: DriverConnection) -> tuple[list[world.Member], world.Slot]:
        members = [await world.create_member(conn) for _ in range(50)]
        provider = await world.create_provider(conn)
        return members, (await world.create_slots(conn, provider, 1))[0]

    members, slot = await scene(services, build)
    saga_ids = await asyncio.gather(
        *(
            book_appointment(
                services.coordinator,
                user_id=m.user_id,
                slot_id=slot.slot_id,
                amount_cents=15_000,
            )
            for m in members
        )
    )
    summaries = [await finished(services, s) for s in saga_ids]
    statuses = [s.status for s in summaries]
    assert statuses.count(SagaStatus.COMPLETED) == 1, statuses
    assert statuses.count(SagaStatus.COMPENSATED) == 49, statuses
    assert all(
        s.error is not None and "failed: slot taken" in s.error
        for s in summaries
        if s.status is SagaStatus.COMPENSATED
    ), {s.error for s in summaries}
    live = await rows(
        services,
        "SELECT status FROM care_journey.care_appointment WHERE slot_id = $1",
        slot.slot_id,
    )
    assert live == [{"status": "confirmed"}]
    reserved = await rows(
        services,
        "SELECT sum(reserved_cents)::bigint AS reserved "
        "FROM plan_journey.plan_member_coverage WHERE id = ANY($1)",
        [m.coverage_id for m in members],
    )
    assert reserved == [{"reserved": 15_000}]
    (await check_invariants(services.database, saga_ids=saga_ids)).raise_if_violated()


async def test_concurrent_claims_and_authorizations_never_pass_the_limit(
    services: RunningServices,
) -> None:
    limit = 100_000

    async def build(
        conn: DriverConnection,
    ) -> tuple[world.Member, list[world.Slot], list[world.CompletedAppointment]]:
        member = await world.create_member(conn, limit_cents=limit)
        provider = await world.create_provider(conn)
        slots = await world.create_slots(conn, provider, 12)
        done = [
            await world.create_completed_appointment(conn, member.user_id, provider, days_ago=d)
            for d in range(1, 13)
        ]
        return member, slots, done

    member, slots, done = await scene(services, build)
    # 12 bookings and 12 claims of 15,000 against 100,000: at most 6 of them fit.
    bookings = [
        book_appointment(
            services.coordinator, user_id=member.user_id, slot_id=s.slot_id, amount_cents=15_000
        )
        for s in slots
    ]
    claims = [
        submit_claim(
            services.coordinator,
            user_id=member.user_id,
            appointment_id=a.appointment_id,
            amount_cents=15_000,
            service_date=a.service_date,
            procedure_code=CONSULTATION,
        )
        for a in done
    ]
    mixed = [c for pair in zip(bookings, claims, strict=True) for c in pair]
    saga_ids = await asyncio.gather(*mixed)
    summaries = [await finished(services, s) for s in saga_ids]
    completed = [s for s in summaries if s.status is SagaStatus.COMPLETED]
    refused = [s for s in summaries if s.status is not SagaStatus.COMPLETED]
    assert len(completed) == limit // 15_000, [s.error for s in summaries]
    # Every saga that did not complete was refused for the limit: none lost a conflict.
    assert all(
        s.status is SagaStatus.COMPENSATED and s.error is not None and "not covered" in s.error
        for s in refused
    ), [(s.status, s.error) for s in refused]
    coverage = await rows(
        services,
        "SELECT used_cents + reserved_cents AS promised FROM plan_journey.plan_member_coverage "
        "WHERE id = $1",
        member.coverage_id,
    )
    assert coverage == [{"promised": len(completed) * 15_000}]
    # Contention there was, and it was absorbed by re-running transactions.
    assert services.journey_databases["plan"].retries.by_sqlstate["40001"] > 0
    (await check_invariants(services.database, saga_ids=saga_ids)).raise_if_violated()


async def test_randomized_mixed_workload_keeps_the_invariants(services: RunningServices) -> None:
    draw = random.Random(20261125)
    count = 240

    async def build(conn: DriverConnection) -> dict[str, Any]:
        provider = await world.create_provider(conn)
        members = [
            await world.create_member(conn, limit_cents=draw.choice([40_000, 80_000, 300_000]))
            for _ in range(30)
        ]
        uncovered = [await world.create_user(conn) for _ in range(5)]
        slots = await world.create_slots(conn, provider, 60)
        appointments = [
            (m, await world.create_completed_appointment(conn, m.user_id, provider, days_ago=d))
            for m in members
            for d in (2, 4)
        ]
        goals = [(m.user_id, await world.create_goal(conn, m.user_id)) for m in members] + [
            (u, await world.create_goal(conn, u)) for u in uncovered
        ]
        return {"members": members, "slots": slots, "appointments": appointments, "goals": goals}

    world_ = await scene(services, build)
    actions = {
        BOOK_APPOINTMENT.name: ["reserve_slot", "authorize_coverage", "award_points"],
        SUBMIT_CLAIM.name: ["create_claim", "mark_billed", "grant_achievement"],
        COMPLETE_HEALTH_GOAL.name: ["record_goal_completion", "award_points"],
    }
    compensations = ["release_slot", "void_authorization", "revoke_points", "cancel_claim"]

    def faults(definition: str) -> dict[str, int]:
        roll = draw.random()
        if roll < 0.15:  # recovers on a retry
            return {draw.choice(actions[definition]): 1}
        if roll < 0.22:  # never succeeds: the step's outcome is unknown, so it is undone
            return {draw.choice(actions[definition]): 3}
        if roll < 0.30:  # an undo that fails twice before it goes through
            return dict.fromkeys(compensations, 2)
        return {}

    async def one(n: int) -> uuid.UUID:
        kind = draw.choice([BOOK_APPOINTMENT, SUBMIT_CLAIM, COMPLETE_HEALTH_GOAL])
        inject = faults(kind.name)
        if kind is BOOK_APPOINTMENT:
            member = draw.choice(world_["members"])
            payload = {
                "user_id": str(member.user_id),
                # Slots are shared, so some bookings find theirs taken.
                "slot_id": str(draw.choice(world_["slots"]).slot_id),
                "amount_cents": draw.choice([10_000, 20_000, 30_000]),
                "points": 10,
                "source_journey": "care",
                "award_reason": "appointment_booked",
            }
        elif kind is SUBMIT_CLAIM:
            member, appointment = draw.choice(world_["appointments"])
            payload = {
                "user_id": str(member.user_id),
                "appointment_id": str(appointment.appointment_id),
                "amount_cents": draw.choice([10_000, 25_000]),
                "service_date": appointment.service_date.isoformat(),
                "procedure_code": CONSULTATION,
                "diagnosis_code": None,
                "achievement_code": "first_claim",
                "source_journey": "plan",
            }
        else:
            user_id, goal_id = draw.choice(world_["goals"])
            payload = {
                "user_id": str(user_id),
                "goal_id": str(goal_id),
                "completion_value": draw.choice(["9000", "5000"]),
                "measurement": None,
                "credit_cents": 500,
                "source_journey": "health",
                "award_reason": "goal_completed",
            }
        payload["inject"] = inject
        await asyncio.sleep(n * 0.01)
        return await services.coordinator.start(kind, payload)

    saga_ids = await asyncio.gather(*(one(n) for n in range(count)))
    summaries = [await finished(services, s) for s in saga_ids]
    by_status = {status: 0 for status in SagaStatus}
    for summary in summaries:
        by_status[summary.status] += 1
    assert by_status[SagaStatus.COMPLETED] > count // 5, by_status
    assert by_status[SagaStatus.COMPENSATED] > count // 5, by_status
    assert by_status[SagaStatus.PARKED] == 0, [s.error for s in summaries]
    report = await check_invariants(services.database, saga_ids=saga_ids, allow_parked=False)
    report.raise_if_violated()
    assert sum(report.sagas_by_status.values()) == count


async def test_a_completed_goal_credits_the_member_once(kit: SagaTestEnvironment) -> None:
    async def build(conn: DriverConnection) -> tuple[world.Member, uuid.UUID]:
        member = await world.create_member(conn)
        return member, await world.create_goal(conn, member.user_id, points_reward=40)

    member, goal = await kit.scene(build)
    recorded_at = (await kit.query("SELECT now() - interval '1 hour' AS at"))[0]["at"]
    first = await complete_health_goal(
        kit.coordinator,
        user_id=member.user_id,
        goal_id=goal,
        completion_value=Decimal(8200),
        metric_type="steps",
        recorded_at=recorded_at,
    )
    assert (await kit.settle(first)).status is SagaStatus.COMPLETED
    # The same goal again: it is no longer active, so nothing is awarded twice.
    again = await complete_health_goal(
        kit.coordinator, user_id=member.user_id, goal_id=goal, completion_value=Decimal(9000)
    )
    summary = await kit.settle(again)
    assert summary.status is SagaStatus.COMPENSATED
    assert summary.error is not None
    assert "failed: goal not active" in summary.error
    credits = await kit.query(
        "SELECT status, amount_cents FROM plan_journey.plan_wellness_credit WHERE user_id = $1",
        member.user_id,
    )
    assert credits == [{"status": "applied", "amount_cents": 500}]
    xp = await kit.query(
        "SELECT xp FROM gamification.gamification_profile WHERE user_id = $1",
        member.user_id,
    )
    assert xp == [{"xp": 40}]
    metric = await kit.query(
        "SELECT metric_type, value, recorded_at FROM health_journey.health_metric "
        "WHERE user_id = $1",
        member.user_id,
    )
    assert metric == [
        {"metric_type": "steps", "value": Decimal("8200.00"), "recorded_at": recorded_at}
    ]
