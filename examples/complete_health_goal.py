"""Complete a health goal: the saga the health service starts when a member meets a goal.

health record_goal_completion (and the reading that proves it, validated like every
metric) → gamification award_points → the child saga grant_wellness_credit (plan
apply_wellness_credit, Serializable: a credit on the member's coverage), its own saga
so that other flows can start it too. A goal that is not met is refused (``goal ...``),
a reading out of range as ``invalid metric: ...``; a member without coverage makes the
child refuse as ``not covered: ...`` and end compensated, and the parent then undoes the
award and the completion in reverse order.

The health service starts it through one call that builds the payload and returns the
saga's id at once; whoever wants the outcome waits for it:

    saga_id = await complete_health_goal(
        coordinator,
        user_id=member.user_id,
        goal_id=goal_id,
        completion_value=Decimal(9500),
        metric_type="steps",  # also stored as the day's steps reading
    )
    outcome = await coordinator.wait(saga_id)  # completed, compensated or parked

This script prints the parent's definition and its child's, then completes a member's
goal (completes, and so does its child) and the goal of a member without coverage to
credit (the child and then the parent compensated), printing the timeline of each parent
and of its child (``saga show <parent>`` lists the child) and the rows they touched. It
runs against DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS when they are set
(the database migrated), else against an embedded PostgreSQL and broker started for the
run:

    .venv/bin/python examples/complete_health_goal.py

It exits non-zero if a saga ends otherwise than described.
"""

from __future__ import annotations

import sys

from outline import print_outline

from journeys.health.sagas import COMPLETE_HEALTH_GOAL_V2, complete_health_goal
from journeys.plan.sagas import GRANT_WELLNESS_CREDIT
from journeys.scenarios import SCENARIOS
from saga import run_standalone

if __name__ == "__main__":
    print_outline(COMPLETE_HEALTH_GOAL_V2, complete_health_goal)
    print_outline(GRANT_WELLNESS_CREDIT, None)
    sys.exit(run_standalone([s for s in SCENARIOS if s.name == "complete_health_goal"]))
