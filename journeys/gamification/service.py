"""The gamification journey's service, run by `saga run participant --journey gamification`."""

from __future__ import annotations

from journeys.gamification.steps import HANDLERS
from saga.participant.journey import JourneyService

SERVICE = JourneyService(
    name="gamification",
    schema="gamification",
    database_role="austa_gamification",
    handlers=HANDLERS,
    definitions=(),
)
