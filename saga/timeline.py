"""A saga's timeline read back from the log tables: what an operator wants to see first.

Each attempt of a step or compensation is logged when it is dispatched and again when its
outcome arrives; the timeline shows one line per attempt (its outcome when there is one,
else "dispatched"), plus replies the coordinator ignored, in the order they happened.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from saga.errors import SagaNotFound
from saga.store.driver import DriverConnection

_INSTANCE = """
SELECT id, definition_name, definition_version, status, error, started_at, finished_at
FROM shared.saga_instance WHERE id = $1
"""

_ENTRIES = """
SELECT step_index, step_name, journey, action, status, attempt, error,
       started_at, finished_at, duration_ms
FROM shared.saga_step_log
WHERE saga_instance_id = $1
ORDER BY created_at, started_at, step_index
"""


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    step_index: int
    step_name: str
    journey: str
    action: str
    status: str
    attempt: int
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    duration_ms: float | None


@dataclass(frozen=True, slots=True)
class Timeline:
    saga_id: uuid.UUID
    definition: str
    version: int
    status: str
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    entries: Sequence[TimelineEntry]

    def render(self) -> list[str]:
        """Plain-text lines, one per attempt, with offsets from the saga's start."""
        took = ""
        if self.finished_at is not None:
            took = f" in {_ms(self.finished_at, self.started_at):.0f} ms"
        lines = [f"saga {self.saga_id} {self.definition} v{self.version}: {self.status}{took}"]
        if self.error:
            lines.append(f"  reason: {self.error}")
        for entry in self.entries:
            offset = _ms(entry.started_at, self.started_at)
            duration = "" if entry.duration_ms is None else f"{entry.duration_ms:7.1f} ms"
            line = (
                f"  +{offset:7.1f} ms  {entry.step_name:<24} {entry.journey:<13} "
                f"{entry.action:<10} #{entry.attempt}  {entry.status:<11} {duration:>10}"
            )
            if entry.error:
                line += f"  {entry.error}"
            lines.append(line.rstrip())
        return lines


async def load_timeline(conn: DriverConnection, saga_id: uuid.UUID) -> Timeline:
    instance = await conn.fetchrow(_INSTANCE, saga_id)
    if instance is None:
        raise SagaNotFound(f"no saga with id {saga_id}")
    rows = await conn.fetch(_ENTRIES, saga_id)
    return Timeline(
        saga_id=instance["id"],
        definition=instance["definition_name"],
        version=instance["definition_version"],
        status=instance["status"],
        error=instance["error"],
        started_at=instance["started_at"],
        finished_at=instance["finished_at"],
        entries=_one_per_attempt(
            [
                TimelineEntry(
                    step_index=row["step_index"],
                    step_name=row["step_name"],
                    journey=row["journey"],
                    action=row["action"],
                    status=row["status"],
                    attempt=row["attempt"],
                    error=row["error"],
                    started_at=row["started_at"],
                    finished_at=row["finished_at"],
                    duration_ms=row["duration_ms"],
                )
                for row in rows
            ]
        ),
    )


def _one_per_attempt(entries: list[TimelineEntry]) -> list[TimelineEntry]:
    """Drop each "dispatched" entry whose attempt has an outcome; keep everything else."""
    answered = {(e.step_index, e.action, e.attempt) for e in entries if e.status != "dispatched"}
    kept = [
        e
        for e in entries
        if e.status != "dispatched" or (e.step_index, e.action, e.attempt) not in answered
    ]
    return sorted(kept, key=lambda e: e.started_at)


def _ms(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() * 1000
