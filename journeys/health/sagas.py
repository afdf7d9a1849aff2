"""Complete a health goal: the saga the health service starts when a goal is met.

health records the completion (and the reading that proves it, validated like every
metric) → gamification awards the goal's points → plan applies a wellness credit to the
member's coverage (Serializable).

A goal that is not the member's, not active or not met is refused (``goal ...``), a
reading out of range as ``invalid metric: ...``, a member without active coverage as
``not covered: ...``; the steps before are undone in reverse order.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from saga import Coordinator, IsolationLevel, SagaDefinition, Step

WELLNESS_CREDIT_CENTS = 500

COMPLETE_HEALTH_GOAL = SagaDefinition(
    "complete_health_goal",
    1,
    [
        Step(
            name="record_goal_completion",
            journey="health",
            action="record_goal_completion",
            compensation="revert_goal_completion",
        ),
        Step(
            name="award_points",
            journey="gamification",
            action="award_points",
            compensation="revoke_points",
        ),
        Step(
            name="apply_wellness_credit",
            journey="plan",
            action="apply_wellness_credit",
            compensation="reverse_wellness_credit",
            isolation=IsolationLevel.SERIALIZABLE,
        ),
    ],
)


async def complete_health_goal(
    coordinator: Coordinator,
    *,
    user_id: uuid.UUID,
    goal_id: uuid.UUID,
    completion_value: Decimal,
    metric_type: str | None = None,
    recorded_at: datetime | None = None,
    credit_cents: int = WELLNESS_CREDIT_CENTS,
    idempotency_key: str | None = None,
) -> uuid.UUID:
    """Start completing ``goal_id`` with ``completion_value``; with ``metric_type`` the
    value is also stored as that metric's reading at ``recorded_at``. Returns the saga id."""
    measurement = None
    if metric_type is not None:
        measurement = {
            "metric_type": metric_type,
            "value": str(completion_value),
            "recorded_at": (recorded_at.isoformat() if recorded_at else None),
        }
    payload = {
        "user_id": str(user_id),
        "goal_id": str(goal_id),
        "completion_value": str(completion_value),
        "measurement": measurement,
        "credit_cents": credit_cents,
        "source_journey": "health",
        "award_reason": "goal_completed",
    }
    return await coordinator.start(COMPLETE_HEALTH_GOAL, payload, idempotency_key=idempotency_key)
