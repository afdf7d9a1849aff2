"""The health package's copy of the metric types agrees with the migration that made the
database's CHECK constraints, and with the units the health seeds record readings in."""

from __future__ import annotations

import importlib
from decimal import Decimal

from journeys.health.metrics import METRIC_TYPES
from journeys.health.seeds import METRIC_UNITS
from journeys.shared.payload import OPERATOR_TIMEZONE

MIGRATION = "migrations.versions.20261125150100_add_health_journey_schema"


def test_metric_types_mirror_the_migration() -> None:
    migration = importlib.import_module(MIGRATION)
    assert {name: (t.unit, t.lowest, t.highest) for name, t in METRIC_TYPES.items()} == {
        name: (unit, Decimal(lowest), Decimal(highest))
        for name, (unit, lowest, highest) in migration.METRIC_TYPES.items()
    }


def test_seed_units_are_the_metric_types_units() -> None:
    assert {name: METRIC_TYPES[name].unit for name in METRIC_UNITS} == METRIC_UNITS


def test_ranges_are_inclusive() -> None:
    steps = METRIC_TYPES["steps"]
    assert steps.accepts(Decimal(0))
    assert steps.accepts(Decimal(200000))
    assert not steps.accepts(Decimal(-1))
    assert not steps.accepts(Decimal("200000.01"))


def test_the_rollup_days_are_the_members_days() -> None:
    """The rollup migration buckets days in the zone the journey reads them in."""
    rollup = importlib.import_module("migrations.versions.20261203120000_add_health_metric_rollup")
    assert rollup.MEMBER_TIMEZONE == OPERATOR_TIMEZONE
