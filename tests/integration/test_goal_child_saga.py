"""complete_health_goal version 2 on the real journey services and PostgreSQL, in the test
kit: the wellness credit is its own saga (plan's ``grant_wellness_credit``), started as a
child. The goal completes with the credit granted by the child; a member without coverage
makes the child refuse and end compensated, and the parent then undoes the award and the
completion; version 1 (the credit as the parent's own last step) still runs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from journeys import world
from journeys.health.sagas import (
    COMPLETE_HEALTH_GOAL,
    WELLNESS_CREDIT,
    WELLNESS_CREDIT_CENTS,
    complete_health_goal,
)
from journeys.invariants import check_invariants
from journeys.plan.sagas import GRANT_WELLNESS_CREDIT
from saga.machine import SagaStatus
from saga.participant.journey import discover_journeys
from saga.settings import Settings
from saga.store.driver import DriverConnection
from saga.testing import SagaTestEnvironment
from tests.integration.conftest import SagaEnvironment
from tests.integration.sagas import starter

pytestmark = pytest.mark.integration


@pytest.fixture
async def kit(settings: Settings, kit_database: str) -> AsyncIterator[SagaTestEnvironment]:
    async with SagaTestEnvironment(
        settings=settings,
        database_url=kit_database,
        journeys=list(discover_journeys().values()),
    ) as env:
        yield env


async def goal_scene(kit: SagaTestEnvironment, *, covered: bool) -> tuple[uuid.UUID, uuid.UUID]:
    """A member (with active coverage, or a user without any) and an active steps goal."""

    async def build(conn: DriverConnection) -> tuple[uuid.UUID, uuid.UUID]:
        if covered:
            user_id = (await world.create_member(conn)).user_id
        else:
            user_id = await world.create_user(conn)
        return user_id, await world.create_goal(conn, user_id)

    return await kit.scene(build)


async def instance(kit: SagaTestEnvironment, saga_id: uuid.UUID) -> dict[str, Any]:
    [row] = await kit.query(
        "SELECT i.status, i.error, i.parent_id, d.name, d.version "
        "FROM shared.saga_instance i "
        "JOIN shared.saga_definition d ON d.id = i.saga_definition_id WHERE i.id = $1",
        saga_id,
    )
    return row


async def children(kit: SagaTestEnvironment, parent_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await kit.query(
        "SELECT id FROM shared.saga_instance WHERE parent_id = $1 ORDER BY started_at", parent_id
    )
    return [row["id"] for row in rows]


async def credits(kit: SagaTestEnvironment, goal_id: uuid.UUID) -> list[dict[str, Any]]:
    return await kit.query(
        "SELECT status, amount_cents, saga_id FROM plan_journey.plan_wellness_credit "
        "WHERE source_goal_id = $1 ORDER BY created_at",
        goal_id,
    )


async def goal_and_points(
    kit: SagaTestEnvironment, goal_id: uuid.UUID, parent_id: uuid.UUID
) -> tuple[str, int]:
    [goal] = await kit.query("SELECT status FROM health_journey.health_goal WHERE id = $1", goal_id)
    [ledger] = await kit.query(
        "SELECT coalesce(sum(points), 0)::bigint AS net "
        "FROM gamification.gamification_points_ledger WHERE saga_id = $1",
        parent_id,
    )
    return goal["status"], ledger["net"]


async def test_the_goal_completes_with_the_credit_granted_by_its_child(
    kit: SagaTestEnvironment,
) -> None:
    user_id, goal_id = await goal_scene(kit, covered=True)
    parent = await complete_health_goal(
        kit.coordinator,
        user_id=user_id,
        goal_id=goal_id,
        completion_value=Decimal(9500),
        metric_type="steps",
    )
    summary = await kit.settle(parent)
    assert summary.status is SagaStatus.COMPLETED, summary.error
    row = await instance(kit, parent)
    assert (row["name"], row["version"]) == ("complete_health_goal", 2)

    [child] = await children(kit, parent)
    child_row = await instance(kit, child)
    assert (child_row["name"], child_row["version"]) == GRANT_WELLNESS_CREDIT.key
    assert child_row["status"] == SagaStatus.COMPLETED
    assert child_row["parent_id"] == parent

    # The credit is the child's effect; the parent holds the child's context under the
    # position's name.
    [credit] = await credits(kit, goal_id)
    assert credit["status"] == "applied"
    assert credit["amount_cents"] == WELLNESS_CREDIT_CENTS
    assert credit["saga_id"] == child
    context = summary.context[WELLNESS_CREDIT]
    assert context["credit_cents"] == WELLNESS_CREDIT_CENTS
    status, net = await goal_and_points(kit, goal_id, parent)
    assert status == "completed"
    assert net > 0
    (await check_invariants(kit.database, saga_ids=[parent, child])).raise_if_violated()


async def test_a_refused_credit_compensates_the_child_then_the_award_and_the_completion(
    kit: SagaTestEnvironment,
) -> None:
    user_id, goal_id = await goal_scene(kit, covered=False)
    parent = await complete_health_goal(
        kit.coordinator,
        user_id=user_id,
        goal_id=goal_id,
        completion_value=Decimal(9500),
        metric_type="steps",
    )
    summary = await kit.settle(parent)
    assert summary.status is SagaStatus.COMPENSATED, summary.error

    [child] = await children(kit, parent)
    child_row = await instance(kit, child)
    assert child_row["status"] == SagaStatus.COMPENSATED
    assert "not covered" in (child_row["error"] or "")

    assert await credits(kit, goal_id) == []
    status, net = await goal_and_points(kit, goal_id, parent)
    assert status == "active"
    assert net == 0
    (await check_invariants(kit.database, saga_ids=[parent, child])).raise_if_violated()


async def test_goal_v1_still_runs_with_the_credit_as_its_own_last_step(
    kit: SagaTestEnvironment,
) -> None:
    user_id, goal_id = await goal_scene(kit, covered=True)
    payload = {
        "user_id": str(user_id),
        "goal_id": str(goal_id),
        "completion_value": "9500",
        "measurement": None,
        "credit_cents": WELLNESS_CREDIT_CENTS,
        "source_journey": "health",
        "award_reason": "goal_completed",
    }
    summary = await kit.run(COMPLETE_HEALTH_GOAL, payload)
    assert summary.status is SagaStatus.COMPLETED, summary.error
    row = await instance(kit, summary.id)
    assert (row["name"], row["version"]) == ("complete_health_goal", 1)
    assert await children(kit, summary.id) == []
    [credit] = await credits(kit, goal_id)
    assert credit["saga_id"] == summary.id
    (await check_invariants(kit.database, saga_ids=[summary.id])).raise_if_violated()


async def test_the_invariants_answer_for_the_credit_through_the_child(
    kit: SagaTestEnvironment,
) -> None:
    """The credit row names the child; a completed parent without it, or a compensated
    parent with it left applied, is reported for the parent and for the child."""
    user_id, goal_id = await goal_scene(kit, covered=True)
    completed = await complete_health_goal(
        kit.coordinator, user_id=user_id, goal_id=goal_id, completion_value=Decimal(9500)
    )
    assert (await kit.settle(completed)).status is SagaStatus.COMPLETED
    [completed_child] = await children(kit, completed)
    uncovered, other_goal = await goal_scene(kit, covered=False)
    compensated = await complete_health_goal(
        kit.coordinator, user_id=uncovered, goal_id=other_goal, completion_value=Decimal(9500)
    )
    assert (await kit.settle(compensated)).status is SagaStatus.COMPENSATED
    [compensated_child] = await children(kit, compensated)
    ids = [completed, completed_child, compensated, compensated_child]
    (await check_invariants(kit.database, saga_ids=ids)).raise_if_violated()

    async def tamper(conn: DriverConnection) -> None:
        await conn.execute(
            "UPDATE plan_journey.plan_wellness_credit SET status = 'reversed', reversed_at = now() "
            "WHERE saga_id = $1",
            completed_child,
        )
        # A credit left applied by the compensated child (the member given coverage, to
        # make the row possible).
        member = await world.create_member(conn)
        await conn.execute(
            """
            INSERT INTO plan_journey.plan_wellness_credit (
                member_coverage_id, user_id, amount_cents, reason, source_goal_id, saga_id
            ) VALUES ($1, $2, $3, 'meta de saúde concluída', $4, $5)
            """,
            member.coverage_id,
            member.user_id,
            WELLNESS_CREDIT_CENTS,
            other_goal,
            compensated_child,
        )

    await kit.scene(tamper)
    report = await check_invariants(kit.database, saga_ids=ids)
    found = "\n".join(report.violations)
    assert f"complete_health_goal saga {completed} (completed): 0 applied wellness" in found
    assert f"grant_wellness_credit saga {completed_child} (completed): 0 applied" in found
    assert f"complete_health_goal saga {compensated} (compensated): 1 applied wellness" in found
    assert f"grant_wellness_credit saga {compensated_child} (compensated): 1 applied" in found
    assert len(report.violations) == 4, report.violations


async def test_a_coordinator_that_registered_nothing_starts_the_goal_with_its_child_known(
    saga_env: SagaEnvironment,
) -> None:
    """A process that only starts sagas (the services register theirs elsewhere, maybe
    later) registers version 2 on first use, which needs its child stored first."""
    user_id, goal_id = await saga_env.database.run_driver(_member_and_goal)
    async with starter(saga_env) as coordinator:
        saga_id = await complete_health_goal(
            coordinator, user_id=user_id, goal_id=goal_id, completion_value=Decimal(9500)
        )
        known = await coordinator.definition(*GRANT_WELLNESS_CREDIT.key)
        summary = await coordinator.status(saga_id)
    assert known == GRANT_WELLNESS_CREDIT
    # No participant runs here: the saga stays at its first step.
    assert summary.status is SagaStatus.RUNNING


async def _member_and_goal(conn: DriverConnection) -> tuple[uuid.UUID, uuid.UUID]:
    user_id = (await world.create_member(conn)).user_id
    return user_id, await world.create_goal(conn, user_id)
