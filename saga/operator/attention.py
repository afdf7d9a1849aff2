"""What needs an operator now: parked sagas by reason, sagas stuck in flight by how long,
and compensations that keep failing. The console's first page reads it.

Every query starts from the unfinished sagas only, through the indexes made for them
(``saga_instance_status_created_at_idx`` for a status, the partial
``saga_instance_in_flight_idx`` for what is in flight) and, for the step log, the per-saga
``saga_step_log_saga_instance_id_idx``; a log of millions of finished sagas costs them
nothing. Run them inside :func:`saga.operator.queries.read_only`, so the three lists come
from one snapshot.

Reasons and errors are shown by their safe head only (:func:`saga.masking.summarize`):
the text after the first ``": "`` may quote a patient's data.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from saga.errors import ConfigurationError
from saga.machine import SagaStatus
from saga.masking import summarize
from saga.store.connection import Row
from saga.store.driver import DriverConnection

STUCK_EDGES = (timedelta(minutes=30), timedelta(hours=2), timedelta(days=1))
"""Where one stuck bucket ends and the next begins (the first starts at ``stuck_after``)."""

COMPENSATION_FAILURES = ("failed", "retried", "timed_out")
"""Step-log statuses of a compensation attempt that did not undo its step."""


@dataclass(frozen=True, slots=True)
class ParkedGroup:
    """Parked sagas of one definition that stopped for the same reason."""

    definition: str
    reason: str
    """The safe head of the saga's ``error`` (:func:`~saga.masking.summarize`)."""
    sagas: int
    oldest_started_at: datetime
    first_parked_at: datetime
    last_parked_at: datetime
    """From the rows' ``updated_at``: when they were parked, unless touched since."""
    saga_ids: Sequence[uuid.UUID]
    """Up to ``sample`` of them, newest first (by ``started_at``)."""


@dataclass(frozen=True, slots=True)
class StuckSaga:
    saga_id: uuid.UUID
    definition: str
    status: SagaStatus
    since: datetime
    """When its current attempt was dispatched (``step_started_at``)."""


@dataclass(frozen=True, slots=True)
class StuckGroup:
    """In-flight sagas whose current attempt was dispatched between ``lower`` and
    ``upper`` ago (``upper`` is ``None`` for the last, open-ended bucket)."""

    lower: timedelta
    upper: timedelta | None
    sagas: int
    compensating: int
    """How many of them are stuck undoing a step (the rest are running)."""
    definitions: Sequence[tuple[str, int]]
    """Each definition with how many of its sagas are in the bucket, most first."""
    oldest_since: datetime
    samples: Sequence[StuckSaga]
    """Up to ``sample`` of them, longest stuck first."""

    @property
    def label(self) -> str:
        if self.upper is None:
            return f"over {_span(self.lower)}"
        return f"{_span(self.lower)} to {_span(self.upper)}"


@dataclass(frozen=True, slots=True)
class FailingCompensation:
    """A saga whose current compensation keeps failing (or is already parked)."""

    saga_id: uuid.UUID
    definition: str
    status: SagaStatus
    """``compensating``, or ``parked`` while compensating."""
    step_index: int
    step_name: str
    """The step (or, in a parallel group, the branch) being undone."""
    compensation: str | None
    """The compensating action, from the stored definition (``None`` for a group)."""
    attempts: int
    failures: int
    """Compensation attempts of this step that erred, timed out or were refused."""
    last_error: str | None
    """The safe head of the latest failure's error."""
    since: datetime | None
    """When the step's compensation was first dispatched."""


@dataclass(frozen=True, slots=True)
class Attention:
    now: datetime
    """The moment the ages count from."""
    parked: Sequence[ParkedGroup]
    stuck: Sequence[StuckGroup]
    failing_compensations: Sequence[FailingCompensation]
    """Up to ``sample`` of them, longest failing first."""
    failing_total: int
    """How many there are in all."""

    @property
    def empty(self) -> bool:
        """Nothing needs an operator."""
        return not (self.parked or self.stuck or self.failing_total)


_PARKED = """
SELECT definition_name,
       split_part(split_part(error, E'\\n', 1), ': ', 1) AS reason,
       count(*) AS sagas,
       min(started_at) AS oldest_started_at,
       min(updated_at) AS first_parked_at,
       max(updated_at) AS last_parked_at,
       (array_agg(id ORDER BY started_at DESC, id))[1:$1] AS saga_ids
FROM shared.saga_instance
WHERE status = 'parked'
GROUP BY 1, 2
ORDER BY count(*) DESC, 1, 2
"""

# One row per bucket and definition, each with its longest-stuck sagas; the buckets are
# put together in Python. width_bucket numbers them 1.. from the thresholds given.
_STUCK = """
SELECT width_bucket(extract(epoch FROM $1::timestamptz - step_started_at)::float8,
                    $2::float8[]) AS bucket,
       definition_name,
       count(*) AS sagas,
       count(*) FILTER (WHERE status = 'compensating') AS compensating,
       min(step_started_at) AS oldest_since,
       (array_agg(id ORDER BY step_started_at, id))[1:$4] AS saga_ids,
       (array_agg(status ORDER BY step_started_at, id))[1:$4] AS statuses,
       (array_agg(step_started_at ORDER BY step_started_at, id))[1:$4] AS sinces
FROM shared.saga_instance
WHERE status IN ('running', 'compensating')
  AND step_started_at <= $1::timestamptz - $3::interval
GROUP BY 1, 2
ORDER BY 1, 2
"""

_FAILURE_STATUSES = ", ".join(f"'{s}'" for s in COMPENSATION_FAILURES)
# An operator's hand-written rows record decisions, not attempts, so they are not counted.
_BAD = f"l.action = 'compensate' AND l.actor IS NULL AND l.status IN ({_FAILURE_STATUSES})"

# A parked saga is in its compensation when the last row its current step logged is one
# (the reading ``phase_sql`` makes); a compensating saga is by its status.
_FAILING = f"""
SELECT i.id, i.definition_name, i.status, i.current_step,
       d.steps -> i.current_step ->> 'name' AS position_name,
       d.steps -> i.current_step ->> 'compensation' AS compensation,
       greatest(i.step_attempt, coalesce(c.attempts, 0)) AS attempts,
       c.failures, c.since, c.step_name, c.last_error,
       count(*) OVER () AS total
FROM shared.saga_instance i
JOIN shared.saga_definition d ON d.id = i.saga_definition_id
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE {_BAD}) AS failures,
           max(l.attempt) FILTER (WHERE l.action = 'compensate') AS attempts,
           min(l.started_at) FILTER (WHERE l.action = 'compensate') AS since,
           (array_agg(l.action ORDER BY l.created_at DESC, l.started_at DESC))[1]
               AS last_action,
           (array_agg(l.step_name ORDER BY l.created_at DESC, l.started_at DESC)
               FILTER (WHERE l.action = 'compensate'))[1] AS step_name,
           (array_agg(l.error ORDER BY l.created_at DESC, l.started_at DESC)
               FILTER (WHERE {_BAD}))[1] AS last_error
    FROM shared.saga_step_log l
    WHERE l.saga_instance_id = i.id AND l.step_index = i.current_step
      AND l.status <> 'ignored'
) c
WHERE i.status IN ('compensating', 'parked')
  AND (i.status = 'compensating' OR c.last_action = 'compensate')
  AND (greatest(i.step_attempt, coalesce(c.attempts, 0)) >= $1 OR c.failures >= $1)
ORDER BY c.since NULLS LAST, i.id
LIMIT $2
"""


async def needs_attention(
    conn: DriverConnection,
    *,
    now: datetime | None = None,
    stuck_after: timedelta = timedelta(minutes=5),
    failing_after: int = 3,
    sample: int = 20,
) -> Attention:
    """Parked sagas by definition and reason; running or compensating sagas whose current
    attempt was dispatched at least ``stuck_after`` before ``now`` (the database's clock
    unless given), by how long; sagas whose current compensation has been attempted
    ``failing_after`` times, or failed that often. Each list keeps ``sample`` sagas per
    entry at most."""
    if stuck_after <= timedelta(0):
        raise ConfigurationError(f"stuck_after must be positive; got {stuck_after}")
    if failing_after < 1:
        raise ConfigurationError(f"failing_after must be at least 1; got {failing_after}")
    if sample < 1:
        raise ConfigurationError(f"sample must be at least 1; got {sample}")
    if now is None:
        now = cast("datetime", await conn.fetchval("SELECT now()"))
    failing = await conn.fetch(_FAILING, failing_after, sample)
    return Attention(
        now=now,
        parked=[_parked(row) for row in await conn.fetch(_PARKED, sample)],
        stuck=await _stuck(conn, now, stuck_after, sample),
        failing_compensations=[_failing(row) for row in failing],
        failing_total=failing[0]["total"] if failing else 0,
    )


def stuck_edges(stuck_after: timedelta) -> list[timedelta]:
    """Where the stuck buckets begin: ``stuck_after``, then each of :data:`STUCK_EDGES`
    beyond it."""
    return [stuck_after, *(edge for edge in STUCK_EDGES if edge > stuck_after)]


def _parked(row: Row) -> ParkedGroup:
    return ParkedGroup(
        definition=row["definition_name"],
        # Already cut in SQL (so the grouping is by it); summarize again so what is shown
        # never depends on the SQL and the Python readings agreeing.
        reason=summarize(row["reason"]) or "",
        sagas=row["sagas"],
        oldest_started_at=row["oldest_started_at"],
        first_parked_at=row["first_parked_at"],
        last_parked_at=row["last_parked_at"],
        saga_ids=list(row["saga_ids"]),
    )


async def _stuck(
    conn: DriverConnection, now: datetime, stuck_after: timedelta, sample: int
) -> list[StuckGroup]:
    edges = stuck_edges(stuck_after)
    rows = await conn.fetch(
        _STUCK, now, [edge.total_seconds() for edge in edges], stuck_after, sample
    )
    by_bucket: dict[int, list[Row]] = defaultdict(list)
    for row in rows:
        by_bucket[row["bucket"]].append(row)
    return [
        _stuck_group(
            edges[bucket - 1], edges[bucket] if bucket < len(edges) else None, group, sample
        )
        for bucket, group in sorted(by_bucket.items())
    ]


def _stuck_group(
    lower: timedelta, upper: timedelta | None, rows: Sequence[Row], sample: int
) -> StuckGroup:
    samples = sorted(
        (
            StuckSaga(saga_id, row["definition_name"], SagaStatus(status), since)
            for row in rows
            for saga_id, status, since in zip(
                row["saga_ids"], row["statuses"], row["sinces"], strict=True
            )
        ),
        key=lambda s: (s.since, str(s.saga_id)),
    )
    definitions = sorted(
        ((row["definition_name"], row["sagas"]) for row in rows), key=lambda d: (-d[1], d[0])
    )
    return StuckGroup(
        lower=lower,
        upper=upper,
        sagas=sum(row["sagas"] for row in rows),
        compensating=sum(row["compensating"] for row in rows),
        definitions=definitions,
        oldest_since=min(row["oldest_since"] for row in rows),
        samples=samples[:sample],
    )


def _failing(row: Row) -> FailingCompensation:
    return FailingCompensation(
        saga_id=row["id"],
        definition=row["definition_name"],
        status=SagaStatus(row["status"]),
        step_index=row["current_step"],
        step_name=row["step_name"] or row["position_name"] or "?",
        compensation=row["compensation"],
        attempts=row["attempts"],
        failures=row["failures"],
        last_error=summarize(row["last_error"]),
        since=row["since"],
    )


def _span(delta: timedelta) -> str:
    minutes = delta.total_seconds() / 60
    if minutes < 60:
        return f"{minutes:g} min"
    if minutes < 24 * 60:
        return f"{minutes / 60:g} h"
    days = minutes / (24 * 60)
    return f"{days:g} day" + ("" if days == 1 else "s")
