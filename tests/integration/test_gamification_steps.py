"""The gamification step handlers, called the way the participant runtime calls them, as
the journey's own database role on a real PostgreSQL.

What they must keep true: XP is the sum of the ledger and the level follows it; taking
points back is a compensating entry, never a change to the ledger; a member holds at most
one live grant of an achievement; a compensation can run twice.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from journeys.gamification.levels import level_for
from journeys.gamification.service import SERVICE
from journeys.health.sagas import COMPLETE_HEALTH_GOAL
from journeys.world import create_user
from saga import Row
from saga.store import Database
from tests.integration.conftest import SagaEnvironment
from tests.integration.journey_steps import refusal, role_database, run_step

pytestmark = pytest.mark.integration


@pytest.fixture
async def role_db(saga_env: SagaEnvironment) -> AsyncIterator[Database]:
    """The gamification service's own connection: its role, its privileges."""
    async with role_database(saga_env, SERVICE) as db:
        yield db


@pytest.fixture
async def user_id(saga_env: SagaEnvironment) -> uuid.UUID:
    return await saga_env.database.run_driver(lambda conn: create_user(conn, "Ana Souza"))


def booking(user_id: uuid.UUID, points: int = 10) -> dict[str, Any]:
    return {
        "user_id": str(user_id),
        "points": points,
        "source_journey": "care",
        "award_reason": "appointment_booked",
    }


def claim(user_id: uuid.UUID, code: str = "first_claim") -> dict[str, Any]:
    return {"user_id": str(user_id), "achievement_code": code, "source_journey": "plan"}


async def fetch(db: Database, query: str, *args: Any) -> list[Row]:
    return await db.run_driver(lambda conn: conn.fetch(query, *args))


async def profile(db: Database, user_id: uuid.UUID) -> Row | None:
    rows = await fetch(
        db,
        "SELECT id, display_name, xp, level FROM gamification.gamification_profile "
        "WHERE user_id = $1",
        user_id,
    )
    return rows[0] if rows else None


async def ledger(db: Database, user_id: uuid.UUID) -> list[Row]:
    return await fetch(
        db,
        """
        SELECT l.* FROM gamification.gamification_points_ledger l
        JOIN gamification.gamification_profile p ON p.id = l.profile_id
        WHERE p.user_id = $1 ORDER BY l.created_at, l.points DESC
        """,
        user_id,
    )


async def events(db: Database, saga_id: uuid.UUID) -> list[Row]:
    return await fetch(
        db,
        "SELECT user_id, event_type, source_journey, payload::text AS payload "
        "FROM gamification.gamification_event WHERE saga_id = $1 ORDER BY occurred_at",
        saga_id,
    )


async def assert_xp_is_the_ledger(db: Database, user_id: uuid.UUID) -> int:
    row = await profile(db, user_id)
    assert row is not None
    assert row["xp"] == sum(entry["points"] for entry in await ledger(db, user_id))
    assert row["level"] == row["xp"] // 100 + 1
    xp: int = row["xp"]
    return xp


# --- award_points ---------------------------------------------------------------------------


async def test_award_points_makes_the_profile_and_records_entry_and_event(
    saga_env: SagaEnvironment, role_db: Database, user_id: uuid.UUID
) -> None:
    saga_id = uuid.uuid4()
    result = await run_step(role_db, SERVICE, "award_points", saga_id, booking(user_id, 30))

    entries = await ledger(saga_env.database, user_id)
    assert len(entries) == 1
    entry = entries[0]
    assert result == {"ledger_entry_id": str(entry["id"]), "points": 30, "xp": 30}
    assert (entry["points"], entry["reason"], entry["source_journey"]) == (
        30,
        "appointment_booked",
        "care",
    )
    assert (entry["source_ref"], entry["saga_id"], entry["reverses_entry_id"]) == (
        "book_appointment",
        saga_id,
        None,
    )
    row = await profile(saga_env.database, user_id)
    assert row is not None
    assert (row["display_name"], row["xp"], row["level"]) == ("Ana Souza", 30, 1)
    [event] = await events(saga_env.database, saga_id)
    assert (event["user_id"], event["event_type"], event["source_journey"]) == (
        user_id,
        "points_awarded",
        "care",
    )
    assert '"points": 30' in event["payload"]
    assert '"reason": "appointment_booked"' in event["payload"]


async def test_award_points_prefers_the_goal_reward_and_raises_the_level(
    saga_env: SagaEnvironment, role_db: Database, user_id: uuid.UUID
) -> None:
    saga_id = uuid.uuid4()
    payload = {**booking(user_id, 10), "source_journey": "health", "award_reason": "goal"}
    result = await run_step(
        role_db,
        SERVICE,
        "award_points",
        saga_id,
        payload,
        context={"points_reward": 250},
        definition=COMPLETE_HEALTH_GOAL,
    )

    assert (result["points"], result["xp"]) == (250, 250)
    [entry] = await ledger(saga_env.database, user_id)
    assert (entry["points"], entry["source_ref"], entry["source_journey"]) == (
        250,
        "complete_health_goal",
        "health",
    )
    row = await profile(saga_env.database, user_id)
    assert row is not None
    assert row["level"] == 3 == level_for(250)


async def test_award_of_zero_points_records_nothing(
    saga_env: SagaEnvironment, role_db: Database, user_id: uuid.UUID
) -> None:
    saga_id = uuid.uuid4()
    result = await run_step(
        role_db, SERVICE, "award_points", saga_id, booking(user_id), context={"points_reward": 0}
    )

    assert result == {"points": 0}
    assert await profile(saga_env.database, user_id) is None
    assert await events(saga_env.database, saga_id) == []


async def test_award_points_refuses_a_bad_payload_and_writes_nothing(
    saga_env: SagaEnvironment, role_db: Database, user_id: uuid.UUID
) -> None:
    stranger = uuid.uuid4()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"user_id": str(stranger)}, f"invalid payload: user_id {stranger} is not a user"),
        ({"user_id": "not-a-uuid"}, "invalid payload: user_id must be a uuid"),
        ({"points": "10"}, "invalid payload: points must be an integer >= 0"),
        ({"points": True}, "invalid payload: points must be an integer >= 0"),
        ({"points": -5}, "invalid payload: points must be an integer >= 0"),
        ({"points": None}, "invalid payload: points must be an integer >= 0"),
        ({"source_journey": "billing"}, "invalid payload: source_journey must be one of"),
        ({"award_reason": ""}, "invalid payload: award_reason must be a non-empty string"),
    ]
    for change, reason in cases:
        saga_id = uuid.uuid4()
        refused = await refusal(
            role_db, SERVICE, "award_points", saga_id, {**booking(user_id), **change}
        )

        assert refused.startswith(reason), change
        assert await events(saga_env.database, saga_id) == []
    # Not even the profile made on the way: the refusal rolled it back.
    assert await fetch(saga_env.database, "SELECT FROM gamification.gamification_profile") == []


# --- revoke_points --------------------------------------------------------------------------


async def test_revoke_points_appends_a_compensating_entry_and_is_harmless_twice(
    saga_env: SagaEnvironment, role_db: Database, user_id: uuid.UUID
) -> None:
    kept, undone = uuid.uuid4(), uuid.uuid4()
    await run_step(role_db, SERVICE, "award_points", kept, booking(user_id, 30))
    award = await run_step(role_db, SERVICE, "award_points", undone, booking(user_id, 150))
    assert award["xp"] == 180
    before = {row["id"]: dict(row) for row in await ledger(saga_env.database, user_id)}

    result = await run_step(role_db, SERVICE, "revoke_points", undone, booking(user_id, 150))

    entries = await ledger(saga_env.database, user_id)
    assert len(entries) == 3
    # Nothing already in the ledger changed: the revoke only appended.
    assert {row["id"]: dict(row) for row in entries if row["id"] in before} == before
    [revoke] = [row for row in entries if row["id"] not in before]
    assert result == {
        "undone": True,
        "revoked_entry_ids": [str(revoke["id"])],
        "points": -150,
        "xp": 30,
    }
    assert (revoke["points"], revoke["reverses_entry_id"], revoke["saga_id"]) == (
        -150,
        uuid.UUID(award["ledger_entry_id"]),
        undone,
    )
    assert (revoke["reason"], revoke["source_ref"], revoke["source_journey"]) == (
        "revoked: appointment_booked",
        "book_appointment",
        "care",
    )
    assert sum(row["points"] for row in entries if row["saga_id"] == undone) == 0
    assert await assert_xp_is_the_ledger(saga_env.database, user_id) == 30
    assert [e["event_type"] for e in await events(saga_env.database, undone)] == [
        "points_awarded",
        "points_revoked",
    ]

    again = await run_step(role_db, SERVICE, "revoke_points", undone, booking(user_id, 150))

    assert again == {"undone": False}
    assert len(await ledger(saga_env.database, user_id)) == 3
    assert len(await events(saga_env.database, undone)) == 2
    assert await assert_xp_is_the_ledger(saga_env.database, user_id) == 30


async def test_revoke_of_a_saga_that_awarded_nothing_does_nothing(
    saga_env: SagaEnvironment, role_db: Database, user_id: uuid.UUID
) -> None:
    await run_step(role_db, SERVICE, "award_points", uuid.uuid4(), booking(user_id, 30))

    assert await run_step(role_db, SERVICE, "revoke_points", uuid.uuid4(), booking(user_id)) == {
        "undone": False
    }
    assert await assert_xp_is_the_ledger(saga_env.database, user_id) == 30


async def test_xp_is_the_ledger_sum_through_awards_and_revokes(
    saga_env: SagaEnvironment, role_db: Database, user_id: uuid.UUID
) -> None:
    sagas = [uuid.uuid4() for _ in range(6)]
    points = [10, 95, 40, 120, 5, 60]
    # Concurrent awards to one member: the profile lock serialises them.
    await asyncio.gather(
        *(
            run_step(role_db, SERVICE, "award_points", s, booking(user_id, p))
            for s, p in zip(sagas, points, strict=True)
        )
    )
    assert await assert_xp_is_the_ledger(saga_env.database, user_id) == sum(points)

    for saga_id in sagas[1::2]:
        await run_step(role_db, SERVICE, "revoke_points", saga_id, booking(user_id))

    assert await assert_xp_is_the_ledger(saga_env.database, user_id) == 10 + 40 + 5
    row = await profile(saga_env.database, user_id)
    assert row is not None
    assert row["level"] == 1


# --- grant_achievement / withdraw_achievement -----------------------------------------------


async def test_grant_achievement_grants_it_with_its_points(
    saga_env: SagaEnvironment, role_db: Database, user_id: uuid.UUID
) -> None:
    saga_id = uuid.uuid4()
    result = await run_step(role_db, SERVICE, "grant_achievement", saga_id, claim(user_id))

    [grant] = await fetch(
        saga_env.database,
        "SELECT ua.id, ua.saga_id, ua.revoked_at, a.code "
        "FROM gamification.gamification_user_achievement ua "
        "JOIN gamification.gamification_achievement a ON a.id = ua.achievement_id",
    )
    assert result == {"user_achievement_id": str(grant["id"]), "granted": True, "points": 30}
    assert (grant["code"], grant["saga_id"], grant["revoked_at"]) == ("first_claim", saga_id, None)
    [entry] = await ledger(saga_env.database, user_id)
    assert (entry["points"], entry["source_ref"], entry["source_journey"], entry["saga_id"]) == (
        30,
        "achievement:first_claim",
        "plan",
        saga_id,
    )
    assert await assert_xp_is_the_ledger(saga_env.database, user_id) == 30
    # One transaction, one now(): the events' order is their type's.
    assert sorted(e["event_type"] for e in await events(saga_env.database, saga_id)) == [
        "achievement_granted",
        "points_awarded",
    ]


async def test_an_achievement_without_points_writes_no_ledger_entry(
    saga_env: SagaEnvironment, role_db: Database, user_id: uuid.UUID
) -> None:
    result = await run_step(
        role_db, SERVICE, "grant_achievement", uuid.uuid4(), claim(user_id, "level_5")
    )

    assert (result["granted"], result["points"]) == (True, 0)
    assert await ledger(saga_env.database, user_id) == []


async def test_granting_twice_keeps_one_live_grant(
    saga_env: SagaEnvironment, role_db: Database, user_id: uuid.UUID
) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    await run_step(role_db, SERVICE, "grant_achievement", first, claim(user_id))

    result = await run_step(role_db, SERVICE, "grant_achievement", second, claim(user_id))

    assert result == {"granted": False, "points": 0}
    assert len(await fetch(saga_env.database, LIVE_GRANTS)) == 1
    assert await assert_xp_is_the_ledger(saga_env.database, user_id) == 30
    assert await events(saga_env.database, second) == []
    # Its compensation then finds nothing of its own to undo, and leaves the first grant.
    assert await run_step(role_db, SERVICE, "withdraw_achievement", second, claim(user_id)) == {
        "undone": False
    }
    assert len(await fetch(saga_env.database, LIVE_GRANTS)) == 1


LIVE_GRANTS = (
    "SELECT id FROM gamification.gamification_user_achievement "
    "WHERE revoked_at IS NULL AND deleted_at IS NULL"
)


async def test_concurrent_grants_of_one_achievement_grant_it_once(
    saga_env: SagaEnvironment, role_db: Database, user_id: uuid.UUID
) -> None:
    results = await asyncio.gather(
        *(
            run_step(role_db, SERVICE, "grant_achievement", uuid.uuid4(), claim(user_id))
            for _ in range(4)
        )
    )

    assert sorted(r["granted"] for r in results) == [False, False, False, True]
    assert len(await fetch(saga_env.database, LIVE_GRANTS)) == 1
    assert await assert_xp_is_the_ledger(saga_env.database, user_id) == 30


async def test_an_unknown_achievement_is_refused_and_nothing_is_written(
    saga_env: SagaEnvironment, role_db: Database, user_id: uuid.UUID
) -> None:
    refused = await refusal(
        role_db, SERVICE, "grant_achievement", uuid.uuid4(), claim(user_id, "moon_landing")
    )

    assert refused.startswith("unknown achievement")
    # The profile made on the way was rolled back with the refusal.
    assert await profile(saga_env.database, user_id) is None


async def test_withdraw_achievement_revokes_the_grant_and_its_points(
    saga_env: SagaEnvironment, role_db: Database, user_id: uuid.UUID
) -> None:
    saga_id = uuid.uuid4()
    await run_step(role_db, SERVICE, "award_points", uuid.uuid4(), booking(user_id, 10))
    granted = await run_step(role_db, SERVICE, "grant_achievement", saga_id, claim(user_id))

    result = await run_step(role_db, SERVICE, "withdraw_achievement", saga_id, claim(user_id))

    assert result["undone"] is True
    assert result["user_achievement_ids"] == [granted["user_achievement_id"]]
    assert (result["points"], result["xp"]) == (-30, 10)
    assert await fetch(saga_env.database, LIVE_GRANTS) == []
    entries = [e for e in await ledger(saga_env.database, user_id) if e["saga_id"] == saga_id]
    assert sorted(e["points"] for e in entries) == [-30, 30]
    assert await assert_xp_is_the_ledger(saga_env.database, user_id) == 10
    assert sorted(e["event_type"] for e in await events(saga_env.database, saga_id)) == [
        "achievement_granted",
        "achievement_withdrawn",
        "points_awarded",
        "points_revoked",
    ]

    assert await run_step(role_db, SERVICE, "withdraw_achievement", saga_id, claim(user_id)) == {
        "undone": False
    }
    assert await assert_xp_is_the_ledger(saga_env.database, user_id) == 10
    # A withdrawn grant no longer counts: a later claim earns the achievement again.
    again = await run_step(role_db, SERVICE, "grant_achievement", uuid.uuid4(), claim(user_id))
    assert (again["granted"], again["points"]) == (True, 30)
