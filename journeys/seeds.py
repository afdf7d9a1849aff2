"""The seed data ``saga db seed`` loads (entry point ``saga.seeders``), in dependency order.

Reference data first (roles and permissions, then each journey's catalogues), then the
sample data, which refers to it: the sample people first, then what they did in each
journey; plan's claims bill care's appointments, and gamification replays all of it.
"""

from __future__ import annotations

from journeys.care import seeds as care
from journeys.gamification import seeds as gamification
from journeys.health import seeds as health
from journeys.plan import seeds as plan
from journeys.shared import seeds as shared
from saga import Seeder

SEEDERS: list[Seeder] = [
    shared.REFERENCE,
    health.REFERENCE,
    care.REFERENCE,
    plan.REFERENCE,
    gamification.REFERENCE,
    shared.SAMPLES,
    health.SAMPLES,
    care.SAMPLES,
    plan.SAMPLES,
    gamification.SAMPLES,
]
