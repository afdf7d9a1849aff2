"""What a worker job is: a named function that handles one bounded batch per call.

Every job must be safe to run in several worker processes at once. A job claims its rows
with ``FOR UPDATE SKIP LOCKED`` inside the short transaction that acts on them, so two
workers never take the same row, and a crash rolls the claim back with the work. Work that
cannot be split into rows (refreshing a view, creating partitions) takes
:func:`try_job_lock` instead and is skipped by whichever worker does not get it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from saga.errors import UsageError
from saga.outbox import OutboxPublisher
from saga.settings import Settings
from saga.store.connection import Connection
from saga.store.database import Database
from saga.store.port import SagaLog
from saga.transport.port import MessageSender

if TYPE_CHECKING:
    from saga.participant.journey import JourneyService
    from saga.worker.definitions import DefinitionCache


@dataclass(frozen=True, slots=True)
class JobContext:
    """What one batch of a job may use."""

    settings: Settings
    database: Database
    """The worker's database: DATABASE_URL's user, which owns the journeys' tables."""
    journeys: Sequence[JourneyService]
    """Every installed journey service: their schemas, inboxes, outboxes, partitions."""
    batch: int
    """The most rows this batch may claim."""
    publisher: OutboxPublisher | None
    """Publishes rows the job wrote to ``shared.saga_outbox`` and records them sent; None
    when the worker runs only jobs that do not send (:attr:`Job.sends`), with no broker."""
    producer: MessageSender | None
    """The worker's producer, for re-sending rows of other outboxes (None as above)."""
    definitions: DefinitionCache
    """Stored saga definitions by name and version."""
    saga_log: SagaLog | None = None
    """The saga log the timeout jobs claim and move sagas in; None: the PostgreSQL one
    on ``database``."""

    def broker(self) -> tuple[OutboxPublisher, MessageSender]:
        """The publisher and producer of a job that sends (``Job.sends``); the worker
        connects them for such a job, so their absence is a job declared wrongly."""
        if self.publisher is None or self.producer is None:
            raise UsageError(
                "this job sends messages but is not declared Job(sends=True): the worker "
                "connected no broker for it"
            )
        return self.publisher, self.producer


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one batch did. ``claimed`` rows decide whether another batch follows at
    once (a full batch means more may be waiting); ``counts`` say what became of them
    and are logged and exported as ``saga_worker_job_rows{job, what}``."""

    claimed: int
    counts: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def nothing(cls) -> BatchResult:
        return cls(0)


JobFunction = Callable[[JobContext], Awaitable[BatchResult]]


@dataclass(frozen=True, slots=True)
class Job:
    """A named piece of background work with its default schedule; WORKER_SCHEDULE
    overrides ``interval`` and ``batch``, WORKER_DISABLED_JOBS turns it off."""

    name: str
    run: JobFunction
    interval: float
    """Seconds between runs."""
    batch: int
    """Rows one batch claims at most."""
    description: str
    repeat_when_full: bool = True
    """Run the next batch at once when this one was full (False: once per interval)."""
    sends: bool = False
    """It sends messages through the broker (commands sent again, compensations it
    starts, outbox rows left unsent). The others need only the database, so a worker that
    runs none of these starts without a broker (``saga run worker --once --job NAME``)."""


def lock_key(name: str) -> int:
    """A stable 64-bit advisory-lock key for a job name."""
    return int.from_bytes(
        hashlib.sha256(f"saga.worker/{name}".encode()).digest()[:8], "big", signed=True
    )


async def try_job_lock(conn: Connection, name: str) -> bool:
    """Take the job's transaction-scoped advisory lock if no other worker holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", lock_key(name)))
