"""The health journey's service, run by `saga run participant --journey health`."""

from __future__ import annotations

from journeys.health.sagas import COMPLETE_HEALTH_GOAL
from journeys.health.steps import HANDLERS
from saga.participant.journey import JourneyService

SERVICE = JourneyService(
    name="health",
    schema="health_journey",
    database_role="austa_health_journey",
    handlers=HANDLERS,
    definitions=(COMPLETE_HEALTH_GOAL,),
)
