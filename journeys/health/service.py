"""The health journey's service, run by `saga run participant --journey health`."""

from __future__ import annotations

from journeys.health.sagas import COMPLETE_HEALTH_GOAL
from journeys.health.steps import HANDLERS
from saga import JourneyService, PartitionPolicy

SERVICE = JourneyService(
    name="health",
    schema="health_journey",
    database_role="austa_health_journey",
    handlers=HANDLERS,
    definitions=(COMPLETE_HEALTH_GOAL,),
    # Health records are kept whole: no month is ever detached.
    partitions=(PartitionPolicy("health_journey.health_metric", retention_months=None),),
    # complete_health_goal's payload carries the member's reading (its type and value).
    sensitive_fields=frozenset({"completion_value", "measurement"}),
)
