"""The read queries behind ``saga show``, ``saga stats`` and ``saga definitions``.

Each runs inside one read-only transaction (:func:`read_only`) at Repeatable Read, so the
figures a command prints come from one snapshot and nothing it runs can write.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from saga.definition import IsolationLevel
from saga.errors import SagaNotFound
from saga.machine import Phase, SagaStatus
from saga.operator.filters import listing_fields, phase_sql
from saga.store.database import Database
from saga.store.driver import DriverConnection, document
from saga.timeline import TimelineEntry, load_entries

T = TypeVar("T")

OUTCOMES = ("succeeded", "failed", "timed_out", "retried")
"""Step-log statuses that end an attempt the participant (or the timeout) answered: the
rows whose ``duration_ms`` measures a step."""


async def read_only(
    database: Database, work: Callable[[DriverConnection], Awaitable[T]], *, name: str
) -> T:
    """Run ``work`` in a read-only Repeatable Read transaction (one snapshot)."""

    async def unit(conn: DriverConnection) -> T:
        # Before the first query of the transaction, as PostgreSQL requires.
        await conn.execute("SET TRANSACTION READ ONLY")
        return await work(conn)

    return await database.run_driver(unit, isolation=IsolationLevel.REPEATABLE_READ, name=name)


# --- saga show ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SagaDetail:
    """One saga's instance row, its current step named from its stored definition, and
    its timeline (one entry per attempt)."""

    id: uuid.UUID
    definition_name: str
    definition_version: int
    status: SagaStatus
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    current_step: int
    step_name: str | None
    journey: str | None
    phase: Phase
    step_attempt: int
    step_started_at: datetime | None
    step_deadline: datetime | None
    deadline: datetime | None
    idempotency_key: str | None
    payload: Any
    context: Any
    entries: Sequence[TimelineEntry]
    position_kind: str = "step"
    """What the current position is: ``step``, ``parallel``, ``await_event`` (or
    ``sub_saga``), from the stored definition."""
    waiting_for: str | None = None
    """The event a waiting saga waits for."""
    waiting_since: datetime | None = None
    """When the saga reached its wait (the wait's ``waiting`` row)."""
    signals: Sequence[SignalRecord] = ()
    """Every signal sent to the saga, oldest first."""
    search_attributes: Mapping[str, str] | None = None
    """The values of its definition's search attributes (``None`` when it declares none)."""
    family: Sequence[FamilyLink] = ()
    """The saga's parent and children. Hook for child sagas: filled once
    ``saga_instance`` links parent and child (see :func:`saga_family`)."""

    @property
    def took(self) -> timedelta | None:
        return None if self.finished_at is None else self.finished_at - self.started_at


@dataclass(frozen=True, slots=True)
class SignalRecord:
    """One row of ``shared.saga_signal``: consumed (applied to the saga) or kept for a
    wait the saga has not reached."""

    event: str
    signal_id: str
    payload: Any
    actor: str | None
    reason: str | None
    received_at: datetime
    consumed_at: datetime | None

    @property
    def state(self) -> str:
        return "consumed" if self.consumed_at is not None else "kept"


@dataclass(frozen=True, slots=True)
class FamilyLink:
    """A saga related to the one shown: ``relation`` is ``parent`` or ``child``."""

    relation: str
    saga_id: uuid.UUID
    definition: str
    status: SagaStatus
    step_name: str | None = None
    """The parent's position that started the child."""


_SIGNALS = """
SELECT event, signal_id, payload, actor, reason, received_at, consumed_at
FROM shared.saga_signal
WHERE saga_instance_id = $1
ORDER BY received_at, id
"""


async def saga_signals(conn: DriverConnection, saga_id: uuid.UUID) -> list[SignalRecord]:
    rows = await conn.fetch(_SIGNALS, saga_id)
    return [
        SignalRecord(
            event=row["event"],
            signal_id=row["signal_id"],
            payload=document(row["payload"]),
            actor=row["actor"],
            reason=row["reason"],
            received_at=row["received_at"],
            consumed_at=row["consumed_at"],
        )
        for row in rows
    ]


_FAMILY = """
SELECT 'parent' AS relation, p.id, p.definition_name, p.status,
       pd.steps -> c.parent_step ->> 'name' AS step_name, 0 AS rank, p.started_at
FROM shared.saga_instance c
JOIN shared.saga_instance p ON p.id = c.parent_id
LEFT JOIN shared.saga_definition pd ON pd.id = p.saga_definition_id
WHERE c.id = $1
UNION ALL
SELECT 'child', c.id, c.definition_name, c.status,
       pd.steps -> c.parent_step ->> 'name', 1, c.started_at
FROM shared.saga_instance c
JOIN shared.saga_instance p ON p.id = c.parent_id
LEFT JOIN shared.saga_definition pd ON pd.id = p.saga_definition_id
WHERE c.parent_id = $1
ORDER BY rank, started_at, id
"""


async def saga_family(conn: DriverConnection, saga_id: uuid.UUID) -> list[FamilyLink]:
    """The saga's parent (the saga whose ``SubSaga`` position started it) and its children,
    oldest first, each with the parent's position that started the child."""
    return [
        FamilyLink(
            relation=row["relation"],
            saga_id=row["id"],
            definition=row["definition_name"],
            status=SagaStatus(row["status"]),
            step_name=row["step_name"],
        )
        for row in await conn.fetch(_FAMILY, saga_id)
    ]


_DETAIL = f"""
SELECT i.id, i.definition_name, i.definition_version, i.status, i.error, i.started_at,
       i.finished_at, i.current_step, i.step_attempt, i.step_started_at, i.step_deadline,
       i.deadline, i.idempotency_key, i.payload, i.context, i.search_attributes,
       d.steps -> i.current_step ->> 'name' AS step_name,
       d.steps -> i.current_step ->> 'journey' AS journey,
       coalesce(d.steps -> i.current_step ->> 'kind', 'step') AS position_kind,
       i.shape_state ->> 'waiting_for' AS waiting_for,
       (SELECT max(l.started_at) FROM shared.saga_step_log l
        WHERE l.saga_instance_id = i.id AND l.step_index = i.current_step
          AND l.status = 'waiting') AS waiting_since,
       {phase_sql("i")} AS phase
FROM shared.saga_instance i
LEFT JOIN shared.saga_definition d ON d.id = i.saga_definition_id
WHERE i.id = $1
"""


async def saga_detail(conn: DriverConnection, saga_id: uuid.UUID) -> SagaDetail:
    row = await conn.fetchrow(_DETAIL, saga_id)
    if row is None:
        raise SagaNotFound(f"no saga with id {saga_id}")
    return SagaDetail(
        **listing_fields(row),
        step_deadline=row["step_deadline"],
        deadline=row["deadline"],
        idempotency_key=row["idempotency_key"],
        payload=document(row["payload"]),
        context=document(row["context"]),
        entries=await load_entries(conn, saga_id),
        position_kind=row["position_kind"],
        waiting_for=row["waiting_for"] if row["status"] == SagaStatus.WAITING else None,
        waiting_since=row["waiting_since"] if row["status"] == SagaStatus.WAITING else None,
        signals=await saga_signals(conn, saga_id),
        search_attributes=document(row["search_attributes"]),
        family=await saga_family(conn, saga_id),
    )


# --- saga stats ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusCount:
    definition: str
    status: SagaStatus
    sagas: int


@dataclass(frozen=True, slots=True)
class StepStats:
    """One step's attempts (in one phase) that ended in the window."""

    definition: str
    step_index: int
    step_name: str
    journey: str
    action: str
    """``execute`` or ``compensate``."""
    answers: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    failed: int
    retried: int
    """Attempts that erred (or timed out) and were tried again."""
    timed_out: int
    serialization_retries: int
    deadlock_retries: int
    """How often participants re-ran the step's transaction on 40001 / 40P01."""


_STATUS_COUNTS = """
SELECT definition_name, status, count(*) AS sagas
FROM shared.saga_instance
WHERE started_at >= $1 AND started_at < $2
  AND ($3::text[] IS NULL OR definition_name = ANY($3::text[]))
GROUP BY definition_name, status
ORDER BY definition_name, status
"""

# Rows an operator wrote by hand (``actor`` set) record a decision, not an attempt a
# participant ran, so they are not measured.
_STEP_STATS = f"""
SELECT i.definition_name, min(l.step_index) AS step_index, l.step_name, l.journey, l.action,
       count(*) AS answers,
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY l.duration_ms)
           AS percentiles,
       max(l.duration_ms) AS max_ms,
       count(*) FILTER (WHERE l.status = 'failed') AS failed,
       count(*) FILTER (WHERE l.status = 'retried') AS retried,
       count(*) FILTER (WHERE l.status = 'timed_out') AS timed_out,
       sum(l.serialization_retries) AS serialization_retries,
       sum(l.deadlock_retries) AS deadlock_retries
FROM shared.saga_step_log l
JOIN shared.saga_instance i ON i.id = l.saga_instance_id
WHERE l.status IN ({", ".join(f"'{s}'" for s in OUTCOMES)})
  AND l.actor IS NULL
  AND l.finished_at >= $1 AND l.finished_at < $2
  AND ($3::text[] IS NULL OR i.definition_name = ANY($3::text[]))
GROUP BY i.definition_name, l.step_name, l.journey, l.action
ORDER BY i.definition_name, min(l.step_index), l.action DESC
"""


async def status_counts(
    conn: DriverConnection, since: datetime, until: datetime, definitions: Sequence[str] = ()
) -> list[StatusCount]:
    """Sagas started in ``[since, until)`` by definition and status."""
    rows = await conn.fetch(_STATUS_COUNTS, since, until, list(definitions) or None)
    return [
        StatusCount(row["definition_name"], SagaStatus(row["status"]), row["sagas"]) for row in rows
    ]


async def step_stats(
    conn: DriverConnection, since: datetime, until: datetime, definitions: Sequence[str] = ()
) -> list[StepStats]:
    """Attempts that ended in ``[since, until)``, per definition, step and phase."""
    rows = await conn.fetch(_STEP_STATS, since, until, list(definitions) or None)
    return [
        StepStats(
            definition=row["definition_name"],
            step_index=row["step_index"],
            step_name=row["step_name"],
            journey=row["journey"],
            action=row["action"],
            answers=row["answers"],
            p50_ms=row["percentiles"][0],
            p95_ms=row["percentiles"][1],
            p99_ms=row["percentiles"][2],
            max_ms=row["max_ms"],
            failed=row["failed"],
            retried=row["retried"],
            timed_out=row["timed_out"],
            serialization_retries=row["serialization_retries"],
            deadlock_retries=row["deadlock_retries"],
        )
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class SignalStats:
    """Signals for one event of one definition's sagas received in the window."""

    definition: str
    event: str
    received: int
    consumed: int
    """Applied to their saga (at once, or on reaching the wait that kept them)."""
    kept: int
    """Still waiting for their saga to reach the wait."""


@dataclass(frozen=True, slots=True)
class WaitingNow:
    """Sagas of one definition waiting for one event as the snapshot was read."""

    definition: str
    event: str
    waiting: int
    overdue: int
    """Past their wait's (or their own) deadline: the timeout worker is due to act."""
    oldest_since: datetime | None


_SIGNAL_STATS = """
SELECT i.definition_name, g.event, count(*) AS received,
       count(*) FILTER (WHERE g.consumed_at IS NOT NULL) AS consumed,
       count(*) FILTER (WHERE g.consumed_at IS NULL) AS kept
FROM shared.saga_signal g
JOIN shared.saga_instance i ON i.id = g.saga_instance_id
WHERE g.received_at >= $1 AND g.received_at < $2
  AND ($3::text[] IS NULL OR i.definition_name = ANY($3::text[]))
GROUP BY i.definition_name, g.event
ORDER BY i.definition_name, g.event
"""

_WAITING_NOW = """
SELECT definition_name, event, count(*) AS waiting,
       count(*) FILTER (WHERE overdue) AS overdue,
       min(since) AS oldest_since
FROM shared.saga_waiting
WHERE ($1::text[] IS NULL OR definition_name = ANY($1::text[]))
GROUP BY definition_name, event
ORDER BY definition_name, event
"""


async def signal_stats(
    conn: DriverConnection, since: datetime, until: datetime, definitions: Sequence[str] = ()
) -> list[SignalStats]:
    """Signals received in ``[since, until)`` by definition and event."""
    rows = await conn.fetch(_SIGNAL_STATS, since, until, list(definitions) or None)
    return [
        SignalStats(
            row["definition_name"], row["event"], row["received"], row["consumed"], row["kept"]
        )
        for row in rows
    ]


async def waiting_now(conn: DriverConnection, definitions: Sequence[str] = ()) -> list[WaitingNow]:
    """Sagas waiting now (whenever they started), by definition and event."""
    rows = await conn.fetch(_WAITING_NOW, list(definitions) or None)
    return [
        WaitingNow(
            row["definition_name"],
            row["event"],
            row["waiting"],
            row["overdue"],
            row["oldest_since"],
        )
        for row in rows
    ]


def slowest(stats: Sequence[StepStats], top: int) -> list[StepStats]:
    """The ``top`` steps by p95 (then by max), slowest first."""
    return sorted(stats, key=lambda s: (s.p95_ms, s.max_ms), reverse=True)[:top]


# --- saga definitions ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DefinitionSummary:
    name: str
    version: int
    steps: Sequence[str]
    registered_at: datetime
    timeout_seconds: float | None
    running: int
    compensating: int
    parked: int
    waiting: int = 0

    @property
    def in_flight(self) -> int:
        return self.running + self.compensating


_DEFINITIONS = """
SELECT d.name, d.version, d.created_at AS registered_at, d.timeout_seconds,
       ARRAY(SELECT s.step ->> 'name'
             FROM jsonb_array_elements(d.steps) WITH ORDINALITY AS s(step, n)
             ORDER BY s.n) AS steps,
       coalesce(c.running, 0) AS running,
       coalesce(c.compensating, 0) AS compensating,
       coalesce(c.parked, 0) AS parked,
       coalesce(c.waiting, 0) AS waiting
FROM shared.saga_definition d
LEFT JOIN (
    SELECT saga_definition_id,
           count(*) FILTER (WHERE status = 'running') AS running,
           count(*) FILTER (WHERE status = 'compensating') AS compensating,
           count(*) FILTER (WHERE status = 'parked') AS parked,
           count(*) FILTER (WHERE status = 'waiting') AS waiting
    FROM shared.saga_instance
    WHERE status IN ('running', 'compensating', 'parked', 'waiting')
    GROUP BY saga_definition_id
) c ON c.saga_definition_id = d.id
ORDER BY d.name, d.version
"""


async def definitions(conn: DriverConnection) -> list[DefinitionSummary]:
    """Every registered definition with how many of its sagas are in flight or parked."""
    rows = await conn.fetch(_DEFINITIONS)
    return [
        DefinitionSummary(
            name=row["name"],
            version=row["version"],
            steps=list(row["steps"]),
            registered_at=row["registered_at"],
            timeout_seconds=row["timeout_seconds"],
            running=row["running"],
            compensating=row["compensating"],
            parked=row["parked"],
            waiting=row["waiting"],
        )
        for row in rows
    ]
