"""Complete a health goal: the saga the health service starts when a goal is met.

Version 2 (what :func:`complete_health_goal` starts): health records the completion (and
the reading that proves it, validated like every metric) → gamification awards the goal's
points → the wellness credit, started as a child saga: plan's ``grant_wellness_credit``
(one Serializable step crediting the member's coverage), which other flows start too.
The child's final context lands in the parent's under ``wellness_credit``.

Version 1 (still registered, so that goals completed before the upgrade finish): the
same three steps in one saga, the credit last.

A goal that is not the member's, not active or not met is refused (``goal ...``), a
reading out of range as ``invalid metric: ...``, a member without active coverage as
``not covered: ...`` (in version 2 the child is compensated with that reason, and the
parent then undoes the award and the completion); the steps before are undone in reverse
order.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from journeys.plan.sagas import GRANT_WELLNESS_CREDIT
from saga import Coordinator, IsolationLevel, SagaDefinition, Step, SubSaga, UnknownDefinition

WELLNESS_CREDIT_CENTS = 500

RECORD_GOAL_COMPLETION = Step(
    name="record_goal_completion",
    journey="health",
    action="record_goal_completion",
    compensation="revert_goal_completion",
)
AWARD_POINTS = Step(
    name="award_points",
    journey="gamification",
    action="award_points",
    compensation="revoke_points",
)

SEARCHABLE = ("user_id", "goal_id")
"""What operators find goal completions by (``saga ls --attr user_id=...``, the console)."""

# Its stored document and hash are pinned (tests/unit/test_definition_evolution.py).
COMPLETE_HEALTH_GOAL = SagaDefinition(
    "complete_health_goal",
    1,
    [
        RECORD_GOAL_COMPLETION,
        AWARD_POINTS,
        Step(
            name="apply_wellness_credit",
            journey="plan",
            action="apply_wellness_credit",
            compensation="reverse_wellness_credit",
            isolation=IsolationLevel.SERIALIZABLE,
        ),
    ],
    search_attributes=SEARCHABLE,
)

WELLNESS_CREDIT = "wellness_credit"
"""The child saga's position: the credit's result lands in the context under it."""

# The child is the final position, as the credit step was in v1: nothing after it can
# fail, so a completed child is never undone by this parent; it is fully compensable
# all the same, since other flows may start it where they need it undone.
COMPLETE_HEALTH_GOAL_V2 = SagaDefinition(
    "complete_health_goal",
    2,
    [
        RECORD_GOAL_COMPLETION,
        AWARD_POINTS,
        SubSaga(
            WELLNESS_CREDIT,
            GRANT_WELLNESS_CREDIT.key,
            payload={
                "user_id": "payload.user_id",
                "goal_id": "payload.goal_id",
                "credit_cents": "payload.credit_cents",
            },
        ),
    ],
    search_attributes=SEARCHABLE,
)

COMPLETE_HEALTH_GOAL_VERSIONS = (COMPLETE_HEALTH_GOAL, COMPLETE_HEALTH_GOAL_V2)
"""Every registered version, oldest first: the health service registers them all, after
the child they start (:data:`GRANT_WELLNESS_CREDIT`, the plan journey's saga)."""


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
    """Start completing ``goal_id`` with ``completion_value`` (version 2: the credit as a
    child saga); with ``metric_type`` the value is also stored as that metric's reading at
    ``recorded_at``. Returns the saga id."""
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
    await _know_the_child(coordinator)
    return await coordinator.start(
        COMPLETE_HEALTH_GOAL_V2, payload, idempotency_key=idempotency_key
    )


async def _know_the_child(coordinator: Coordinator) -> None:
    """Register the child saga unless it is stored: starting the parent registers it on
    first use, which needs its child known (the services register both; a coordinator
    that only starts sagas may come first). A stored definition is then cached."""
    try:
        await coordinator.definition(*GRANT_WELLNESS_CREDIT.key)
    except UnknownDefinition:
        await coordinator.register(GRANT_WELLNESS_CREDIT)
