"""Outbox tables: marking rows published and claiming the ones a crash left behind.

Every outbox (the coordinator's ``shared.saga_outbox`` and each journey's) has the same
columns, so these statements take the table's qualified name.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from saga.store.driver import DriverConnection, document

_QUALIFIED = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")


def check_table(table: str) -> str:
    """Outbox names are interpolated into SQL, so only plain ``schema.table`` passes."""
    if not _QUALIFIED.match(table):
        raise ValueError(f"an outbox table must be 'schema.table' in lower case, got {table!r}")
    return table


@dataclass(frozen=True, slots=True)
class PendingMessage:
    message_id: uuid.UUID
    topic: str
    key: str
    payload: bytes
    headers: dict[str, str]
    due_at: datetime | None = None
    """When a swept row came due (its ``available_at`` before the claim); None for rows
    published right after their commit."""


@dataclass(frozen=True, slots=True)
class Backlog:
    unpublished: int
    oldest_due_seconds: float
    """How long the longest-waiting due row has waited; 0 when none is due."""


async def backlog(conn: DriverConnection, table: str) -> Backlog:
    """One index-only scan of the outbox's partial index of unpublished rows."""
    row = await conn.fetchrow(
        f"""
        SELECT count(*) AS unpublished,
               COALESCE(GREATEST(EXTRACT(EPOCH FROM now() - min(available_at)), 0), 0)
                   AS oldest_due_seconds
        FROM {check_table(table)} WHERE published_at IS NULL
        """
    )
    assert row is not None  # an aggregate always answers one row
    return Backlog(int(row["unpublished"]), float(row["oldest_due_seconds"]))


async def mark_published(
    conn: DriverConnection, table: str, message_ids: Sequence[uuid.UUID]
) -> None:
    await conn.execute(
        f"UPDATE {check_table(table)} SET published_at = now() "
        "WHERE message_id = ANY($1::uuid[]) AND published_at IS NULL",
        list(message_ids),
    )


async def claim_due(
    conn: DriverConnection,
    table: str,
    *,
    older_than: float,
    lease: float,
    limit: int,
    skew: float = 0.0,
) -> list[PendingMessage]:
    """Take up to ``limit`` unpublished rows due for ``older_than`` seconds: the process
    that committed them should have published them by then. Claiming pushes their
    ``available_at`` out by ``lease`` seconds so no other relay takes them meanwhile; if
    this one dies before publishing, they come due again when the lease runs out. Time is
    the clock's, ``skew`` seconds ahead of the database's (:mod:`saga.clock`)."""
    rows = await conn.fetch(
        f"""
        UPDATE {check_table(table)} AS o SET
            available_at = now() + make_interval(secs => $4::float8 + $2::float8),
            publish_attempts = o.publish_attempts + 1
        FROM (
            SELECT id, available_at FROM {table}
            WHERE published_at IS NULL
              AND available_at <= now() + make_interval(secs => $4::float8 - $1::float8)
            ORDER BY available_at
            LIMIT $3
            FOR UPDATE SKIP LOCKED
        ) AS due
        WHERE o.id = due.id
        RETURNING o.message_id, o.topic, o.message_key, o.payload::text AS payload, o.headers,
                  due.available_at AS due_at
        """,
        older_than,
        lease,
        limit,
        skew,
    )
    return [
        PendingMessage(
            row["message_id"],
            row["topic"],
            row["message_key"],
            row["payload"].encode(),
            document(row["headers"]),
            row["due_at"],
        )
        for row in rows
    ]
