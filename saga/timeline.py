"""A saga's timeline read back from the log tables: what an operator wants to see first.

Each attempt of a step or compensation is logged when it is dispatched and again when its
outcome arrives; the timeline shows one line per attempt (its outcome when there is one,
else "dispatched", carrying the request its dispatch recorded), plus replies the
coordinator ignored and rows operators wrote by hand, in the order they happened.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from saga.errors import SagaNotFound
from saga.store.connection import Connection
from saga.store.driver import document

_INSTANCE = """
SELECT id, definition_name, definition_version, status, error, started_at, finished_at
FROM shared.saga_instance WHERE id = $1
"""

_ENTRIES = """
SELECT step_index, branch, step_name, journey, action, status, attempt, error, actor,
       request, response, started_at, finished_at, duration_ms, message_id
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
    actor: str | None = None
    """Who wrote the row by hand (``saga retry``, ``skip``, ...); ``None`` for the engine."""
    request: Any = None
    """What the attempt's command carried (recorded when it was dispatched)."""
    response: Any = None
    """The result the participant answered with, when it succeeded (a signal's payload at
    a wait)."""
    branch: int | None = None
    """Which branch of the parallel group at ``step_index`` the row is about; ``None``
    for every other row (a step, a wait, the group as a whole)."""
    message_id: uuid.UUID | None = None
    """The id of the attempt's command (every re-send of it carries the same id); ``None``
    for rows no message was sent for (a wait, an operator's decision)."""

    @property
    def attempt_key(self) -> tuple[int, int | None, str, int]:
        """What one attempt is: a branch's attempts are counted apart from its siblings'."""
        return (self.step_index, self.branch, self.action, self.attempt)


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


async def load_timeline(conn: Connection, saga_id: uuid.UUID) -> Timeline:
    instance = await conn.fetchrow(_INSTANCE, saga_id)
    if instance is None:
        raise SagaNotFound(f"no saga with id {saga_id}")
    return Timeline(
        saga_id=instance["id"],
        definition=instance["definition_name"],
        version=instance["definition_version"],
        status=instance["status"],
        error=instance["error"],
        started_at=instance["started_at"],
        finished_at=instance["finished_at"],
        entries=await load_entries(conn, saga_id),
    )


async def load_entries(conn: Connection, saga_id: uuid.UUID) -> list[TimelineEntry]:
    """The saga's step log, one entry per attempt (see :func:`one_per_attempt`)."""
    rows = await conn.fetch(_ENTRIES, saga_id)
    return one_per_attempt(
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
                actor=row["actor"],
                request=document(row["request"]),
                response=document(row["response"]),
                branch=row["branch"],
                message_id=row["message_id"],
            )
            for row in rows
        ]
    )


def one_per_attempt(entries: list[TimelineEntry]) -> list[TimelineEntry]:
    """Drop each "dispatched" entry whose attempt has an outcome, giving the outcome the
    request its dispatch recorded; keep everything else, ordered by when it started.

    An ignored reply is not an outcome (the coordinator did not apply it), so it never
    hides the dispatch of an attempt still waiting for its answer."""
    requests = {e.attempt_key: e.request for e in entries if e.status == "dispatched"}
    answered = {e.attempt_key for e in entries if e.status not in ("dispatched", "ignored")}
    kept = []
    for e in entries:
        key = e.attempt_key
        if e.status == "dispatched" and key in answered:
            continue
        if e.status != "dispatched" and e.request is None and requests.get(key) is not None:
            e = replace(e, request=requests[key])
        kept.append(e)
    return sorted(kept, key=lambda e: e.started_at)


def _ms(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() * 1000
