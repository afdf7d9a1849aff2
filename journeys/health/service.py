"""The health journey's service, run by `saga run participant --journey health`."""

from __future__ import annotations

from journeys.health.sagas import COMPLETE_HEALTH_GOAL_VERSIONS
from journeys.health.steps import HANDLERS
from journeys.plan.sagas import GRANT_WELLNESS_CREDIT
from saga import JourneyService, PartitionPolicy

SERVICE = JourneyService(
    name="health",
    schema="health_journey",
    database_role="austa_health_journey",
    handlers=HANDLERS,
    # The child saga complete_health_goal v2 starts is registered before it: the journeys
    # register in name order (health before plan), and a parent needs its child known.
    # The plan service registers it too (the same content again is a no-op).
    definitions=(GRANT_WELLNESS_CREDIT, *COMPLETE_HEALTH_GOAL_VERSIONS),
    # Health records are kept whole: no month is ever detached.
    partitions=(PartitionPolicy("health_journey.health_metric", retention_months=None),),
    # Goals change status as their sagas move.
    churning_tables=("health_journey.health_goal",),
    # complete_health_goal's payload carries the member's reading (its type and value).
    sensitive_fields=frozenset({"completion_value", "measurement"}),
)
