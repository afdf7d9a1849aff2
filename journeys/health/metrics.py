"""The health metric types a reading may have: unit and plausible range of each.

A Python copy of ``METRIC_TYPES`` in migration 20261125150100 (add_health_journey_schema),
whose CHECK constraints refuse other units and values out of range. It lets a step refuse
a bad reading with a clear reason before the database does; a unit test keeps the two
equal, so change them together (with a migration for the database's side).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class MetricType:
    unit: str
    lowest: Decimal
    highest: Decimal

    def accepts(self, value: Decimal) -> bool:
        return self.lowest <= value <= self.highest


# metric_type -> (unit, lowest plausible value, highest plausible value), as the migration.
METRIC_TYPES: dict[str, MetricType] = {
    name: MetricType(unit, Decimal(lowest), Decimal(highest))
    for name, (unit, lowest, highest) in {
        "heart_rate": ("bpm", "20", "300"),
        "blood_pressure_systolic": ("mmHg", "50", "300"),
        "blood_pressure_diastolic": ("mmHg", "20", "200"),
        "blood_glucose": ("mg/dL", "10", "1000"),
        "weight": ("kg", "0.5", "500"),
        "steps": ("steps", "0", "200000"),
        "sleep_hours": ("h", "0", "24"),
        "oxygen_saturation": ("%", "50", "100"),
        "body_temperature": ("°C", "30", "45"),
    }.items()
}
