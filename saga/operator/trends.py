"""Figures over time for the console's stats page: sagas started per time bucket by
outcome, step latency per bucket, and every definition's sagas by status.

Buckets come from PostgreSQL's ``date_bin`` (14+), counted from ``since``, so the first
bucket starts at ``since`` and a bucket is labelled by its start. A window is refused
(:class:`~saga.errors.ConfigurationError`) when it is empty, when the bucket is not
positive, or when it would hold more than :data:`MAX_BUCKETS` buckets: a chart of more
bars than pixels helps nobody and costs the database as much as it costs the page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from saga.errors import ConfigurationError
from saga.machine import SagaStatus
from saga.operator.queries import OUTCOMES
from saga.store.driver import DriverConnection

MAX_BUCKETS = 500


@dataclass(frozen=True, slots=True)
class OutcomeBucket:
    """Sagas of one definition started in one bucket that are now in one status."""

    bucket: datetime
    definition: str
    status: SagaStatus
    sagas: int


@dataclass(frozen=True, slots=True)
class StepLatencyBucket:
    """Attempts of one step (in one phase) that ended in one bucket."""

    bucket: datetime
    definition: str
    step_name: str
    action: str
    """``execute`` or ``compensate``."""
    answers: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


def check_window(since: datetime, until: datetime, bucket: timedelta) -> int:
    """How many buckets ``[since, until)`` holds; raises
    :class:`~saga.errors.ConfigurationError` naming what is wrong with the window."""
    if until <= since:
        raise ConfigurationError(
            f"until ({until.isoformat()}) must be after since ({since.isoformat()})"
        )
    if bucket <= timedelta(0):
        raise ConfigurationError(f"bucket must be positive; got {bucket}")
    buckets = math.ceil((until - since) / bucket)
    if buckets > MAX_BUCKETS:
        raise ConfigurationError(
            f"{buckets} buckets of {bucket} from {since.isoformat()} to {until.isoformat()}; "
            f"at most {MAX_BUCKETS}: choose a longer bucket or a shorter window"
        )
    return buckets


# saga_instance_started_at_idx serves the window; only sagas started in it are read.
_OUTCOMES = """
SELECT date_bin($3::interval, started_at, $1::timestamptz) AS bucket,
       definition_name, status, count(*) AS sagas
FROM shared.saga_instance
WHERE started_at >= $1 AND started_at < $2
  AND ($4::text[] IS NULL OR definition_name = ANY($4::text[]))
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""

# The rows ``saga stats`` measures (queries._STEP_STATS): attempts a participant or the
# timeout answered, not rows an operator wrote by hand.
_STEP_LATENCY = f"""
SELECT date_bin($3::interval, l.finished_at, $1::timestamptz) AS bucket,
       i.definition_name, l.step_name, l.action,
       count(*) AS answers,
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY l.duration_ms)
           AS percentiles,
       max(l.duration_ms) AS max_ms
FROM shared.saga_step_log l
JOIN shared.saga_instance i ON i.id = l.saga_instance_id
WHERE l.status IN ({", ".join(f"'{s}'" for s in OUTCOMES)})
  AND l.actor IS NULL
  AND l.finished_at >= $1 AND l.finished_at < $2
  AND ($4::text[] IS NULL OR i.definition_name = ANY($4::text[]))
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, min(l.step_index), l.action DESC, 3
"""

_DEFINITION_STATUS_COUNTS = """
SELECT definition_name, definition_version, status, count(*) AS sagas
FROM shared.saga_instance
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""


async def outcomes_over_time(
    conn: DriverConnection,
    *,
    since: datetime,
    until: datetime,
    bucket: timedelta,
    definitions: Sequence[str] = (),
) -> list[OutcomeBucket]:
    """Sagas started in ``[since, until)`` per bucket, definition and current status,
    oldest bucket first; buckets with no saga are absent."""
    check_window(since, until, bucket)
    rows = await conn.fetch(_OUTCOMES, since, until, bucket, list(definitions) or None)
    return [
        OutcomeBucket(
            row["bucket"], row["definition_name"], SagaStatus(row["status"]), row["sagas"]
        )
        for row in rows
    ]


async def step_latency_over_time(
    conn: DriverConnection,
    *,
    since: datetime,
    until: datetime,
    bucket: timedelta,
    definitions: Sequence[str] = (),
) -> list[StepLatencyBucket]:
    """Attempts that ended in ``[since, until)``, per bucket (of ``finished_at``),
    definition, step and phase, with their latency percentiles.

    Like ``saga stats``, this reads the step log by ``finished_at``, which no index
    covers: it scans the log's rows (finished sagas' rows leave it with retention)."""
    check_window(since, until, bucket)
    rows = await conn.fetch(_STEP_LATENCY, since, until, bucket, list(definitions) or None)
    return [
        StepLatencyBucket(
            bucket=row["bucket"],
            definition=row["definition_name"],
            step_name=row["step_name"],
            action=row["action"],
            answers=row["answers"],
            p50_ms=row["percentiles"][0],
            p95_ms=row["percentiles"][1],
            p99_ms=row["percentiles"][2],
            max_ms=row["max_ms"],
        )
        for row in rows
    ]


async def definition_status_counts(conn: DriverConnection) -> dict[tuple[str, int], dict[str, int]]:
    """``{(name, version): {status: sagas}}`` over every saga in ``saga_instance``.

    For the definitions page. No index holds a saga's definition and status together, so
    this reads the whole table: bounded by retention, which moves finished sagas to the
    archive, but a cost per call all the same; cache it or call it sparingly. (The
    in-flight and parked figures alone come cheaper from
    :func:`saga.operator.queries.definitions`.)"""
    counts: dict[tuple[str, int], dict[str, int]] = {}
    for row in await conn.fetch(_DEFINITION_STATUS_COUNTS):
        key = (row["definition_name"], row["definition_version"])
        counts.setdefault(key, {})[row["status"]] = row["sagas"]
    return counts
