"""The health step handlers, called the way the participant runtime calls them, as the
journey's own database role on a real PostgreSQL.

What they must keep true: only the member's own active, met goal is completed; a reading
is stored only when its type is known and its value plausible; undoing a completion makes
the goal active again and soft-deletes its reading, and can run twice.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from journeys.health.service import SERVICE
from journeys.world import create_goal, create_user
from saga import Row
from saga.errors import StepRefused
from saga.store import Database
from saga.store.driver import DriverConnection
from tests.integration.conftest import SagaEnvironment
from tests.integration.journey_steps import refusal, role_database, run_step

pytestmark = pytest.mark.integration


@dataclass(frozen=True, slots=True)
class Scene:
    user_id: uuid.UUID
    goal_id: uuid.UUID  # daily_steps, 8000 steps, 50 points, this week
    other_user_id: uuid.UUID


@pytest.fixture
async def role_db(saga_env: SagaEnvironment) -> AsyncIterator[Database]:
    """The health service's own connection: its role, its privileges."""
    async with role_database(saga_env, SERVICE) as db:
        yield db


@pytest.fixture
async def scene(saga_env: SagaEnvironment) -> Scene:
    async def build(conn: DriverConnection) -> Scene:
        user_id = await create_user(conn)
        goal_id = await create_goal(conn, user_id)
        return Scene(user_id, goal_id, await create_user(conn, "Outra Pessoa"))

    return await saga_env.database.run_driver(build)


def completion(
    user_id: uuid.UUID,
    goal_id: uuid.UUID,
    value: str = "9500",
    *,
    metric_type: str | None = "steps",
    recorded_at: str | None = None,
) -> dict[str, Any]:
    """The payload complete_health_goal carries."""
    measurement = None
    if metric_type is not None:
        measurement = {"metric_type": metric_type, "value": value, "recorded_at": recorded_at}
    return {
        "user_id": str(user_id),
        "goal_id": str(goal_id),
        "completion_value": value,
        "measurement": measurement,
        "credit_cents": 500,
        "source_journey": "health",
        "award_reason": "goal_completed",
    }


async def goal(db: Database, goal_id: uuid.UUID) -> Row:
    row: Row | None = await db.run_driver(
        lambda conn: conn.fetchrow(
            "SELECT status, completed_at, completion_value, saga_id "
            "FROM health_journey.health_goal WHERE id = $1",
            goal_id,
        )
    )
    assert row is not None
    return row


async def metrics(db: Database, user_id: uuid.UUID) -> list[Row]:
    return await db.run_driver(
        lambda conn: conn.fetch(
            "SELECT * FROM health_journey.health_metric WHERE user_id = $1", user_id
        )
    )


async def update(db: Database, query: str, *args: Any) -> None:
    await db.run_driver(lambda conn: conn.execute(query, *args))


# --- record_goal_completion -----------------------------------------------------------------


async def test_completing_a_met_goal_records_the_reading_and_completes_it(
    saga_env: SagaEnvironment, role_db: Database, scene: Scene
) -> None:
    saga_id = uuid.uuid4()
    result = await run_step(
        role_db,
        SERVICE,
        "record_goal_completion",
        saga_id,
        completion(scene.user_id, scene.goal_id),
    )

    [metric] = await metrics(saga_env.database, scene.user_id)
    row = await goal(saga_env.database, scene.goal_id)
    assert result == {
        "goal_id": str(scene.goal_id),
        "points_reward": 50,
        "metric_id": str(metric["id"]),
        "completed_at": row["completed_at"].isoformat(),
    }
    assert (row["status"], row["completion_value"], row["saga_id"]) == (
        "completed",
        Decimal("9500.00"),
        saga_id,
    )
    assert (metric["metric_type"], metric["value"], metric["unit"], metric["source"]) == (
        "steps",
        Decimal("9500.00"),
        "steps",
        "manual",
    )
    assert str(saga_id) in metric["notes"]
    assert metric["deleted_at"] is None
    # recorded_at null means now: the completion's own transaction time.
    assert metric["recorded_at"] == row["completed_at"]


async def test_a_reading_keeps_its_own_time(
    saga_env: SagaEnvironment, role_db: Database, scene: Scene
) -> None:
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5)
    payload = completion(scene.user_id, scene.goal_id, recorded_at=at.isoformat())

    await run_step(role_db, SERVICE, "record_goal_completion", uuid.uuid4(), payload)

    [metric] = await metrics(saga_env.database, scene.user_id)
    assert metric["recorded_at"] == at


async def test_a_completion_without_a_reading_stores_none(
    saga_env: SagaEnvironment, role_db: Database, scene: Scene
) -> None:
    payload = completion(scene.user_id, scene.goal_id, "8000", metric_type=None)

    result = await run_step(role_db, SERVICE, "record_goal_completion", uuid.uuid4(), payload)

    assert result["metric_id"] is None
    assert await metrics(saga_env.database, scene.user_id) == []
    assert (await goal(saga_env.database, scene.goal_id))["completion_value"] == Decimal(8000)


async def test_control_goals_are_met_at_or_under_their_target(
    saga_env: SagaEnvironment, role_db: Database, scene: Scene
) -> None:
    weight_goal = await saga_env.database.run_driver(
        lambda conn: create_goal(
            conn, scene.user_id, goal_type="weight_target", unit="kg", target_value=Decimal(80)
        )
    )
    over = completion(scene.user_id, weight_goal, "80.5", metric_type="weight")
    refused = await refusal(role_db, SERVICE, "record_goal_completion", uuid.uuid4(), over)
    assert refused == "goal not met: 80.5 kg is above the target 80.00"

    under = completion(scene.user_id, weight_goal, "79.5", metric_type="weight")
    await run_step(role_db, SERVICE, "record_goal_completion", uuid.uuid4(), under)
    assert (await goal(saga_env.database, weight_goal))["status"] == "completed"


async def test_refusals_name_the_reason_and_write_nothing(
    saga_env: SagaEnvironment, role_db: Database, scene: Scene
) -> None:
    user, goal_id = scene.user_id, scene.goal_id
    cases: list[tuple[dict[str, Any], str]] = [
        (
            completion(user, goal_id, "400", metric_type="heart_rate"),
            "invalid metric: heart_rate 400 bpm is outside 20..300",
        ),
        (
            completion(user, goal_id, "250000"),
            "invalid metric: steps 250000 steps is outside 0..200000",
        ),
        (
            completion(user, goal_id, metric_type="mood"),
            "invalid metric: unknown metric type 'mood'",
        ),
        (completion(user, goal_id, "7999"), "goal not met: 7999 steps is below the target"),
        (completion(scene.other_user_id, goal_id), "goal not found"),
        (completion(user, uuid.uuid4()), "goal not found"),
        (
            {**completion(user, goal_id), "completion_value": "lots"},
            "invalid payload: completion_value must be a decimal",
        ),
        (
            {**completion(user, goal_id), "completion_value": "-1"},
            "invalid payload: completion_value must be >= 0",
        ),
        (
            completion(user, goal_id, recorded_at="2026-01-01T10:00:00"),
            "invalid payload: measurement.recorded_at must be an ISO 8601 timestamp",
        ),
        ({**completion(user, goal_id), "goal_id": 7}, "invalid payload: goal_id must be a uuid"),
    ]
    for payload, reason in cases:
        refused = await refusal(role_db, SERVICE, "record_goal_completion", uuid.uuid4(), payload)
        assert refused.startswith(reason), (payload, refused)

    row = await goal(saga_env.database, goal_id)
    assert (row["status"], row["completed_at"], row["saga_id"]) == ("active", None, None)
    assert await metrics(saga_env.database, user) == []
    assert await metrics(saga_env.database, scene.other_user_id) == []


async def test_a_goal_that_is_not_active_is_refused(
    saga_env: SagaEnvironment, role_db: Database, scene: Scene
) -> None:
    payload = completion(scene.user_id, scene.goal_id)
    await update(
        saga_env.database,
        "UPDATE health_journey.health_goal SET status = 'abandoned' WHERE id = $1",
        scene.goal_id,
    )
    refused = await refusal(role_db, SERVICE, "record_goal_completion", uuid.uuid4(), payload)
    assert refused == "goal not active: it is abandoned"

    await update(
        saga_env.database,
        "UPDATE health_journey.health_goal SET status = 'active', "
        "period_start = period_start - 14, period_end = period_end - 7 WHERE id = $1",
        scene.goal_id,
    )
    refused = await refusal(role_db, SERVICE, "record_goal_completion", uuid.uuid4(), payload)
    assert refused.startswith("goal not active: its period ended on ")
    assert await metrics(saga_env.database, scene.user_id) == []


async def test_concurrent_completions_of_one_goal_complete_it_once(
    saga_env: SagaEnvironment, role_db: Database, scene: Scene
) -> None:
    payload = completion(scene.user_id, scene.goal_id)
    outcomes = await asyncio.gather(
        *(
            run_step(role_db, SERVICE, "record_goal_completion", uuid.uuid4(), payload)
            for _ in range(3)
        ),
        return_exceptions=True,
    )

    refusals = [o.reason for o in outcomes if isinstance(o, StepRefused)]
    assert refusals == ["goal not active: it is completed"] * 2
    assert len(await metrics(saga_env.database, scene.user_id)) == 1


# --- revert_goal_completion -----------------------------------------------------------------


async def test_revert_restores_the_goal_and_soft_deletes_the_reading(
    saga_env: SagaEnvironment, role_db: Database, scene: Scene
) -> None:
    saga_id = uuid.uuid4()
    payload = completion(scene.user_id, scene.goal_id)
    recorded = await run_step(role_db, SERVICE, "record_goal_completion", saga_id, payload)

    result = await run_step(
        role_db, SERVICE, "revert_goal_completion", saga_id, payload, context=recorded
    )

    assert result == {
        "undone": True,
        "goal_id": str(scene.goal_id),
        "metric_id": recorded["metric_id"],
    }
    row = await goal(saga_env.database, scene.goal_id)
    # The saga id stays, so the goal's history shows which saga completed and undid it.
    assert (row["status"], row["completed_at"], row["completion_value"], row["saga_id"]) == (
        "active",
        None,
        None,
        saga_id,
    )
    [metric] = await metrics(saga_env.database, scene.user_id)
    assert metric["deleted_at"] is not None

    again = await run_step(
        role_db, SERVICE, "revert_goal_completion", saga_id, payload, context=recorded
    )

    assert again == {"undone": False}
    assert await metrics(saga_env.database, scene.user_id) == [metric]
    assert (await goal(saga_env.database, scene.goal_id))["status"] == "active"
    # Active again, the goal can be completed by a later saga.
    await run_step(role_db, SERVICE, "record_goal_completion", uuid.uuid4(), payload)
    assert (await goal(saga_env.database, scene.goal_id))["status"] == "completed"


async def test_revert_finds_the_reading_by_its_note_without_the_context(
    saga_env: SagaEnvironment, role_db: Database, scene: Scene
) -> None:
    saga_id, other_saga = uuid.uuid4(), uuid.uuid4()
    payload = completion(scene.user_id, scene.goal_id)
    second_goal = await saga_env.database.run_driver(lambda conn: create_goal(conn, scene.user_id))
    await run_step(role_db, SERVICE, "record_goal_completion", saga_id, payload)
    await run_step(
        role_db,
        SERVICE,
        "record_goal_completion",
        other_saga,
        completion(scene.user_id, second_goal),
    )

    result = await run_step(role_db, SERVICE, "revert_goal_completion", saga_id, payload)

    assert result["undone"] is True
    assert (await goal(saga_env.database, scene.goal_id))["status"] == "active"
    # Only this saga's goal and reading: the other saga's completion stands.
    assert (await goal(saga_env.database, second_goal))["status"] == "completed"
    deleted = {
        m["notes"]: m["deleted_at"] is not None
        for m in await metrics(saga_env.database, scene.user_id)
    }
    assert sorted(deleted.values()) == [False, True]
    assert [str(saga_id) in note for note, gone in deleted.items() if gone] == [True]


async def test_revert_of_a_saga_that_completed_nothing_does_nothing(
    saga_env: SagaEnvironment, role_db: Database, scene: Scene
) -> None:
    payload = completion(scene.user_id, scene.goal_id)
    await run_step(role_db, SERVICE, "record_goal_completion", uuid.uuid4(), payload)

    assert await run_step(role_db, SERVICE, "revert_goal_completion", uuid.uuid4(), payload) == {
        "undone": False
    }
    assert (await goal(saga_env.database, scene.goal_id))["status"] == "completed"
    [metric] = await metrics(saga_env.database, scene.user_id)
    assert metric["deleted_at"] is None
