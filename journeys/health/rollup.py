"""Reading the daily rollup of a member's metrics: one row per day with readings.

``health_journey.health_metric_daily`` (migration 20261203120000, add_health_metric_rollup)
is a continuous aggregate on TimescaleDB and a materialized view the worker refreshes
otherwise (``refresh_health_metric_daily``); either way it is read the same, by the
health journey's own role, which may read it and nothing more. A day is the member's day
in the operator's time zone, as the goals' periods are.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from journeys.health.metrics import METRIC_TYPES
from journeys.shared.payload import OPERATOR_TIMEZONE
from saga import Connection

DAILY_METRICS = f"""
SELECT (day AT TIME ZONE '{OPERATOR_TIMEZONE}')::date AS day,
       readings, min_value, max_value, avg_value, sum_value
FROM health_journey.health_metric_daily
WHERE user_id = $1
  AND metric_type = $2
  AND day >= $3::date::timestamp AT TIME ZONE '{OPERATOR_TIMEZONE}'
  AND day < ($4::date + 1)::timestamp AT TIME ZONE '{OPERATOR_TIMEZONE}'
ORDER BY day
"""


@dataclass(frozen=True, slots=True)
class DailyMetric:
    """One member's readings of one metric type on one day."""

    day: date
    readings: int
    min_value: Decimal
    max_value: Decimal
    avg_value: Decimal
    sum_value: Decimal


async def daily_metrics(
    conn: Connection, user_id: uuid.UUID, metric_type: str, since: date, until: date
) -> list[DailyMetric]:
    """The member's days from ``since`` to ``until`` (both included) that have readings
    of ``metric_type``, oldest first, as of the rollup's last refresh."""
    if metric_type not in METRIC_TYPES:
        raise ValueError(
            f"daily_metrics: unknown metric type {metric_type!r} "
            f"(one of {', '.join(sorted(METRIC_TYPES))})"
        )
    if since > until:
        raise ValueError(f"daily_metrics: since {since} is after until {until}")
    rows = await conn.fetch(DAILY_METRICS, user_id, metric_type, since, until)
    return [DailyMetric(**dict(row)) for row in rows]
