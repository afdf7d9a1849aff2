"""The health journey's step handlers: completing a member's goal (with the reading that
proves it) for complete_health_goal, and undoing that completion when the saga fails.

A reading is checked against the metric types of :mod:`journeys.health.metrics` before it
is written, so a bad one is refused as ``invalid metric: ...`` with its range; the
database's CHECK constraints stay the last word.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from journeys.health.metrics import METRIC_TYPES
from journeys.shared.payload import OPERATOR_TIMEZONE, payload_uuid
from saga import CheckViolation, Connection, Handler, Row, StepContext, StepRefused

# Goals met by staying at or under the target; every other goal is met at or over it.
AT_MOST_GOALS = frozenset({"weight_target", "blood_pressure_control", "blood_glucose_control"})

# Over numeric(12, 2)'s range (the goal's completion_value): refused, not overflowed.
VALUE_LIMIT = Decimal("1e10")

# "Today" for a member's goal period is the member's day, in Brazil's main time zone.
LOCK_GOAL = f"""
SELECT user_id, goal_type, target_value, unit, period_start, period_end, status,
       points_reward, (now() AT TIME ZONE '{OPERATOR_TIMEZONE}')::date AS today
FROM health_journey.health_goal
WHERE id = $1 AND deleted_at IS NULL
FOR UPDATE
"""

INSERT_METRIC = """
INSERT INTO health_journey.health_metric (
    user_id, metric_type, value, unit, recorded_at, source, notes
) VALUES ($1, $2, $3, $4, COALESCE($5::timestamptz, now()), 'manual', $6)
RETURNING id
"""

COMPLETE_GOAL = """
UPDATE health_journey.health_goal
SET status = 'completed', completed_at = now(), completion_value = $2, saga_id = $3
WHERE id = $1
RETURNING completed_at
"""

# The saga id stays on the goal, so its history shows which saga completed and undid it.
REVERT = """
WITH goal AS (
    UPDATE health_journey.health_goal
    SET status = 'active', completed_at = NULL, completion_value = NULL
    WHERE saga_id = $1 AND status = 'completed' AND deleted_at IS NULL
    RETURNING id
), metric AS (
    UPDATE health_journey.health_metric
    SET deleted_at = now()
    WHERE user_id = $2 AND deleted_at IS NULL AND (id = $3 OR notes = $4)
    RETURNING id
)
SELECT (SELECT id FROM goal) AS goal_id, (SELECT id FROM metric LIMIT 1) AS metric_id
"""


def metric_note(saga_id: uuid.UUID) -> str:
    """The note on a reading a saga recorded: how its compensation finds the reading."""
    return f"registrada pela saga {saga_id} ao concluir uma meta"


# --- Payload --------------------------------------------------------------------------------


def _decimal(data: Mapping[str, Any], key: str, label: str | None = None) -> Decimal:
    value = data.get(key)
    number: Decimal | None = None
    # bool is an int to Python, never to a saga's author.
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            number = None
    if number is None or not number.is_finite() or abs(number) >= VALUE_LIMIT:
        raise StepRefused(
            f"invalid payload: {label or key} must be a decimal number (string or number), "
            f"got {value!r}"
        )
    return number


def _recorded_at(data: Mapping[str, Any]) -> datetime | None:
    value = data.get("recorded_at")
    if value is None:
        return None
    if isinstance(value, str):
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            at = None
        if at is not None and at.tzinfo is not None:
            return at
    raise StepRefused(
        "invalid payload: measurement.recorded_at must be an ISO 8601 timestamp with "
        f"a UTC offset, or null, got {value!r}"
    )


@dataclass(frozen=True, slots=True)
class Measurement:
    """The reading a completion records; its unit is its metric type's."""

    metric_type: str
    value: Decimal
    unit: str
    recorded_at: datetime | None


def _measurement(data: Any) -> Measurement:
    """The payload's ``measurement``, refused unless its type is known and its value
    plausible for that type."""
    if not isinstance(data, Mapping):
        raise StepRefused(f"invalid payload: measurement must be an object, got {data!r}")
    metric_type = data.get("metric_type")
    if not isinstance(metric_type, str) or metric_type not in METRIC_TYPES:
        raise StepRefused(f"invalid metric: unknown metric type {metric_type!r}")
    kind = METRIC_TYPES[metric_type]
    value = _decimal(data, "value", "measurement.value")
    if not kind.accepts(value):
        raise StepRefused(
            f"invalid metric: {metric_type} {value} {kind.unit} is outside "
            f"{kind.lowest}..{kind.highest}"
        )
    return Measurement(metric_type, value, kind.unit, _recorded_at(data))


# --- Goal rules ---------------------------------------------------------------------------


def _check_goal(goal: Row, user_id: uuid.UUID, value: Decimal) -> None:
    """Refuse a goal the member may not complete now with ``value``."""
    if goal["user_id"] != user_id:
        raise StepRefused("goal not found")  # another member's goal is not theirs to see
    if goal["status"] != "active":
        raise StepRefused(f"goal not active: it is {goal['status']}")
    if goal["today"] > goal["period_end"]:
        raise StepRefused(f"goal not active: its period ended on {goal['period_end']}")
    if goal["today"] < goal["period_start"]:
        raise StepRefused(f"goal not active: its period starts on {goal['period_start']}")
    target, unit = goal["target_value"], goal["unit"]
    if goal["goal_type"] in AT_MOST_GOALS:
        if value > target:
            raise StepRefused(f"goal not met: {value} {unit} is above the target {target}")
    elif value < target:
        raise StepRefused(f"goal not met: {value} {unit} is below the target {target}")


async def _insert_metric(
    conn: Connection, step: StepContext, user_id: uuid.UUID, measurement: Measurement
) -> uuid.UUID:
    try:
        metric_id: uuid.UUID = await conn.fetchval(
            INSERT_METRIC,
            user_id,
            measurement.metric_type,
            measurement.value,
            measurement.unit,
            measurement.recorded_at,
            metric_note(step.saga_id),
        )
    except CheckViolation as exc:
        # The transaction is aborted: refuse at once.
        raise StepRefused(
            f"invalid metric: {measurement.metric_type} {measurement.value} "
            f"{measurement.unit} refused by {exc.constraint}"
        ) from None
    return metric_id


# --- Handlers ---------------------------------------------------------------------------------


async def record_goal_completion(step: StepContext) -> dict[str, Any]:
    """Complete the member's active goal with ``completion_value``, storing the reading
    in ``measurement`` when there is one."""
    goal_id = payload_uuid(step.payload, "goal_id")
    user_id = payload_uuid(step.payload, "user_id")
    value = _decimal(step.payload, "completion_value")
    if value < 0:
        raise StepRefused(f"invalid payload: completion_value must be >= 0, got {value}")
    raw_measurement = step.payload.get("measurement")
    measurement = None if raw_measurement is None else _measurement(raw_measurement)
    conn = step.connection
    goal = await conn.fetchrow(LOCK_GOAL, goal_id)
    if goal is None:
        raise StepRefused("goal not found")
    _check_goal(goal, user_id, value)
    metric_id = None
    if measurement is not None:
        metric_id = await _insert_metric(conn, step, user_id, measurement)
    completed_at: datetime = await conn.fetchval(COMPLETE_GOAL, goal_id, value, step.saga_id)
    return {
        "goal_id": str(goal_id),
        "points_reward": goal["points_reward"],
        "metric_id": None if metric_id is None else str(metric_id),
        "completed_at": completed_at.isoformat(),
    }


async def revert_goal_completion(step: StepContext) -> dict[str, Any]:
    """Compensate record_goal_completion: the goal is active again and its reading is
    soft-deleted. Safe to repeat."""
    # Not refused if malformed: the step it undoes validated it before committing.
    user_id = uuid.UUID(str(step.payload["user_id"]))
    metric_id = step.context.get("metric_id")
    row = await step.connection.fetchrow(
        REVERT,
        step.saga_id,
        user_id,
        uuid.UUID(metric_id) if isinstance(metric_id, str) else None,
        metric_note(step.saga_id),
    )
    assert row is not None  # an aggregate-free SELECT of scalar subqueries: one row
    if row["goal_id"] is None and row["metric_id"] is None:
        return {"undone": False}
    return {
        "undone": True,
        "goal_id": None if row["goal_id"] is None else str(row["goal_id"]),
        "metric_id": None if row["metric_id"] is None else str(row["metric_id"]),
    }


HANDLERS: dict[str, Handler] = {
    "record_goal_completion": record_goal_completion,
    "revert_goal_completion": revert_goal_completion,
}
