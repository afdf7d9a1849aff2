"""The gamification journey's step handlers: points and achievements the sagas award and,
when a saga is undone, take back.

XP changes only through the append-only points ledger (a trigger adds each entry to the
profile's ``xp``); taking points back is a compensating entry that names the entry it
reverses, never a DELETE or UPDATE. After every entry the profile's level is set from its
new XP by :func:`journeys.gamification.levels.level_for`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from journeys.gamification.levels import level_for
from journeys.shared.payload import payload_uuid
from saga import Connection, Handler, StepContext, StepRefused

JOURNEYS = ("health", "care", "plan", "gamification")

# Made on the member's first points; the display name comes from the shared user.
ENSURE_PROFILE = """
INSERT INTO gamification.gamification_profile (user_id, display_name)
SELECT id, full_name FROM shared.shared_user WHERE id = $1
ON CONFLICT (user_id) DO NOTHING
"""

# Locked so that the profile's xp and level move one saga at a time.
LOCK_PROFILE = """
SELECT id, xp FROM gamification.gamification_profile
WHERE user_id = $1 AND deleted_at IS NULL
FOR UPDATE
"""

AWARD = """
WITH entry AS (
    INSERT INTO gamification.gamification_points_ledger (
        profile_id, points, reason, source_journey, source_ref, saga_id
    ) VALUES ($1, $2, $3, $4, $5, $6)
    RETURNING id, points, reason, source_journey
), event AS (
    INSERT INTO gamification.gamification_event (
        user_id, event_type, source_journey, payload, saga_id
    )
    SELECT $7, $8, source_journey,
           jsonb_build_object('points', points, 'reason', reason, 'ledger_entry_id', id), $6
    FROM entry
)
SELECT id FROM entry
"""

# Every positive entry of the saga that no entry reverses yet gets its compensating
# entry (the UNIQUE (reverses_entry_id) makes a second reversal impossible anyway).
REVOKE = """
WITH awarded AS (
    SELECT e.id, e.profile_id, e.points, e.reason, e.source_journey, e.source_ref
    FROM gamification.gamification_points_ledger e
    WHERE e.saga_id = $1 AND e.points > 0
      AND NOT EXISTS (
          SELECT FROM gamification.gamification_points_ledger r
          WHERE r.reverses_entry_id = e.id
      )
), revoked AS (
    INSERT INTO gamification.gamification_points_ledger (
        profile_id, points, reason, source_journey, source_ref, saga_id, reverses_entry_id
    )
    SELECT profile_id, -points, 'revoked: ' || reason, source_journey, source_ref, $1, id
    FROM awarded
    RETURNING id, profile_id, points, reason, source_journey, reverses_entry_id
), event AS (
    INSERT INTO gamification.gamification_event (
        user_id, event_type, source_journey, payload, saga_id
    )
    SELECT p.user_id, 'points_revoked', r.source_journey,
           jsonb_build_object(
               'points', r.points, 'reason', r.reason, 'ledger_entry_id', r.id,
               'reverses_entry_id', r.reverses_entry_id
           ),
           $1
    FROM revoked r JOIN gamification.gamification_profile p ON p.id = r.profile_id
)
SELECT id, profile_id, points FROM revoked
"""

# The live-grant partial unique index decides "already granted" in the same statement,
# also against a concurrent grant (ON CONFLICT waits for it and then does nothing).
GRANT = """
WITH achievement AS (
    SELECT id, code, name, points_reward, journey
    FROM gamification.gamification_achievement
    WHERE code = $2 AND deleted_at IS NULL
), granted AS (
    INSERT INTO gamification.gamification_user_achievement (profile_id, achievement_id, saga_id)
    SELECT $1, id, $3 FROM achievement
    ON CONFLICT (profile_id, achievement_id) WHERE revoked_at IS NULL AND deleted_at IS NULL
    DO NOTHING
    RETURNING id
)
SELECT a.code, a.name, a.points_reward, a.journey, (SELECT id FROM granted) AS grant_id
FROM achievement a
"""

WITHDRAW = """
UPDATE gamification.gamification_user_achievement ua
SET revoked_at = now()
FROM gamification.gamification_achievement a, gamification.gamification_profile p
WHERE ua.saga_id = $1 AND ua.revoked_at IS NULL AND ua.deleted_at IS NULL
  AND a.id = ua.achievement_id AND p.id = ua.profile_id
RETURNING ua.id, a.code, a.journey, p.user_id
"""

EVENT = """
INSERT INTO gamification.gamification_event (user_id, event_type, source_journey, payload, saga_id)
VALUES ($1, $2, $3, $4::jsonb, $5)
"""


# --- Payload --------------------------------------------------------------------------------


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise StepRefused(f"invalid payload: {key} must be a non-empty string, got {value!r}")
    return value


def _points(value: Any, key: str) -> int:
    # bool is an int to Python, never to a saga's author.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StepRefused(f"invalid payload: {key} must be an integer >= 0, got {value!r}")
    return value


def _source_journey(data: Mapping[str, Any]) -> str:
    journey = _text(data, "source_journey")
    if journey not in JOURNEYS:
        raise StepRefused(
            f"invalid payload: source_journey must be one of {', '.join(JOURNEYS)}, got {journey!r}"
        )
    return journey


# --- Profile, XP and level -------------------------------------------------------------------


async def _profile(conn: Connection, user_id: uuid.UUID) -> uuid.UUID:
    """The member's profile id (made if need be), locked for this transaction."""
    await conn.execute(ENSURE_PROFILE, user_id)
    row = await conn.fetchrow(LOCK_PROFILE, user_id)
    if row is None:
        raise StepRefused(f"invalid payload: user_id {user_id} is not a user")
    profile_id: uuid.UUID = row["id"]
    return profile_id


async def _settle_level(conn: Connection, profile_id: uuid.UUID) -> int:
    """Set the profile's level from its XP after ledger entries; returns the XP. The
    ledger trigger's update holds the row lock, so the XP read here stays current."""
    xp: int = await conn.fetchval(
        "SELECT xp FROM gamification.gamification_profile WHERE id = $1", profile_id
    )
    await conn.execute(
        "UPDATE gamification.gamification_profile SET level = $2 WHERE id = $1 AND level <> $2",
        profile_id,
        level_for(xp),
    )
    return xp


async def _revoke_saga_points(conn: Connection, saga_id: uuid.UUID) -> dict[str, Any]:
    """Reverse the saga's awards not reversed yet; the points taken back and the XP after."""
    rows = await conn.fetch(REVOKE, saga_id)
    xp = None
    for profile_id in dict.fromkeys(row["profile_id"] for row in rows):
        xp = await _settle_level(conn, profile_id)
    return {
        "revoked_entry_ids": [str(row["id"]) for row in rows],
        "points": sum(row["points"] for row in rows),
        "xp": xp,
    }


# --- Handlers ---------------------------------------------------------------------------------


async def award_points(step: StepContext) -> dict[str, Any]:
    """Award the goal's reward (from an earlier step) or the payload's ``points``."""
    if "points_reward" in step.context:
        points = _points(step.context["points_reward"], "points_reward")
    else:
        points = _points(step.payload.get("points"), "points")
    user_id = payload_uuid(step.payload, "user_id")
    if points == 0:
        return {"points": 0}
    reason = _text(step.payload, "award_reason")
    journey = _source_journey(step.payload)
    conn = step.connection
    profile_id = await _profile(conn, user_id)
    entry_id = await conn.fetchval(
        AWARD,
        profile_id,
        points,
        reason,
        journey,
        step.command.definition,
        step.saga_id,
        user_id,
        "points_awarded",
    )
    xp = await _settle_level(conn, profile_id)
    return {"ledger_entry_id": str(entry_id), "points": points, "xp": xp}


async def revoke_points(step: StepContext) -> dict[str, Any]:
    """Compensate award_points: a reversing entry for each of the saga's awards."""
    revoked = await _revoke_saga_points(step.connection, step.saga_id)
    if not revoked["revoked_entry_ids"]:
        return {"undone": False}
    return {"undone": True, **revoked}


async def grant_achievement(step: StepContext) -> dict[str, Any]:
    """Grant ``achievement_code`` with its points, unless the member holds it already."""
    user_id = payload_uuid(step.payload, "user_id")
    code = _text(step.payload, "achievement_code")
    conn = step.connection
    profile_id = await _profile(conn, user_id)
    row = await conn.fetchrow(GRANT, profile_id, code, step.saga_id)
    if row is None:
        raise StepRefused(f"unknown achievement: {code!r}")
    if row["grant_id"] is None:
        return {"granted": False, "points": 0}
    points: int = row["points_reward"]
    journey: str = row["journey"]
    if points > 0:
        await conn.fetchval(
            AWARD,
            profile_id,
            points,
            f"Conquista: {row['name']}",
            journey,
            f"achievement:{code}",
            step.saga_id,
            user_id,
            "points_awarded",
        )
        await _settle_level(conn, profile_id)
    await conn.execute(
        EVENT,
        user_id,
        "achievement_granted",
        journey,
        _json({"achievement": code, "points": points, "user_achievement_id": row["grant_id"]}),
        step.saga_id,
    )
    return {"user_achievement_id": str(row["grant_id"]), "granted": True, "points": points}


async def withdraw_achievement(step: StepContext) -> dict[str, Any]:
    """Compensate grant_achievement: revoke the saga's grant and reverse its points."""
    conn = step.connection
    withdrawn = await conn.fetch(WITHDRAW, step.saga_id)
    revoked = await _revoke_saga_points(conn, step.saga_id)
    for row in withdrawn:
        await conn.execute(
            EVENT,
            row["user_id"],
            "achievement_withdrawn",
            row["journey"],
            _json({"achievement": row["code"], "user_achievement_id": row["id"]}),
            step.saga_id,
        )
    if not withdrawn and not revoked["revoked_entry_ids"]:
        return {"undone": False}
    return {
        "undone": True,
        "user_achievement_ids": [str(row["id"]) for row in withdrawn],
        **revoked,
    }


def _json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, default=str)


HANDLERS: dict[str, Handler] = {
    "award_points": award_points,
    "revoke_points": revoke_points,
    "grant_achievement": grant_achievement,
    "withdraw_achievement": withdraw_achievement,
}
