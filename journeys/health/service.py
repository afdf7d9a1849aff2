"""The health journey's service, run by `saga run participant --journey health`."""

from __future__ import annotations

from journeys.health.maintenance import REFRESH_METRIC_DAILY
from journeys.health.sagas import COMPLETE_HEALTH_GOAL_VERSIONS
from journeys.health.steps import HANDLERS
from journeys.plan.sagas import GRANT_WELLNESS_CREDIT
from saga import JourneyService, PartitionExpiry, PartitionPolicy, Settings


def metric_retention_months(settings: Settings) -> int | None:
    """HEALTH_METRICS_RETENTION_MONTHS: unset keeps every month of readings."""
    return settings.health_metrics_retention_months


def metric_retention_expiry(settings: Settings) -> PartitionExpiry:
    """HEALTH_METRICS_RETENTION_MODE: expired months detached (kept aside) or dropped."""
    return settings.health_metrics_retention_mode


SERVICE = JourneyService(
    name="health",
    schema="health_journey",
    database_role="austa_health_journey",
    handlers=HANDLERS,
    # The child saga complete_health_goal v2 starts is registered before it: the journeys
    # register in name order (health before plan), and a parent needs its child known.
    # The plan service registers it too (the same content again is a no-op).
    definitions=(GRANT_WELLNESS_CREDIT, *COMPLETE_HEALTH_GOAL_VERSIONS),
    maintenance=(REFRESH_METRIC_DAILY,),
    # Goals change status as their sagas move.
    churning_tables=("health_journey.health_goal",),
    # Readings are kept whole unless the operator sets a retention: the settings decide
    # at each run of the worker's partition maintenance.
    partitions=(
        PartitionPolicy(
            "health_journey.health_metric",
            retention_months=metric_retention_months,
            expiry=metric_retention_expiry,
        ),
    ),
    # complete_health_goal's payload carries the member's reading (its type and value).
    sensitive_fields=frozenset({"completion_value", "measurement"}),
)
