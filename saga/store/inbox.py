"""A journey's inbox and outbox: what makes a participant's effects happen exactly once.

The inbox row for a command's message id is written in the same transaction as the
handler's effects and the reply's outbox row. So either all three exist, and a repeated
delivery is answered from the stored reply, or none does and the command may run again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from saga.store.driver import DriverConnection, document
from saga.store.outbox import check_table


@dataclass(frozen=True, slots=True)
class JourneyTables:
    """Where a journey keeps its inbox and outbox, e.g. ``care_journey.care_inbox``."""

    inbox: str
    outbox: str

    @classmethod
    def of(cls, schema: str, prefix: str) -> JourneyTables:
        return cls(
            check_table(f"{schema}.{prefix}_inbox"), check_table(f"{schema}.{prefix}_outbox")
        )


@dataclass(frozen=True, slots=True)
class InboxEntry:
    message_id: uuid.UUID
    saga_id: uuid.UUID
    step_name: str
    action: str
    attempt: int
    reply: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ReplyRow:
    message_id: uuid.UUID
    topic: str
    key: str
    payload: bytes
    headers: Mapping[str, str]


async def stored_reply(
    conn: DriverConnection, tables: JourneyTables, message_id: uuid.UUID
) -> dict[str, Any] | None:
    value = await conn.fetchval(
        f"SELECT reply FROM {tables.inbox} WHERE message_id = $1", message_id
    )
    return None if value is None else dict(document(value))


_INSERT_ENTRY = """
    INSERT INTO {inbox} (message_id, saga_id, step_name, action, attempt, reply)
    VALUES ($1, $2, $3, $4, $5, $6::jsonb)
"""


def _entry_args(entry: InboxEntry) -> tuple[object, ...]:
    return (
        entry.message_id,
        entry.saga_id,
        entry.step_name,
        entry.action,
        entry.attempt,
        json.dumps(dict(entry.reply)),
    )


async def record(
    conn: DriverConnection,
    tables: JourneyTables,
    entry: InboxEntry,
    reply: ReplyRow,
    *,
    skew: float = 0.0,
) -> None:
    """The inbox row and the reply's outbox row, in one statement. A concurrent duplicate
    makes it fail with the inbox's unique violation (``<prefix>_inbox_message_id_key``).
    The reply is available from now by the clock ``skew`` ahead of the database's."""
    await conn.execute(
        f"""
        WITH entry AS ({_INSERT_ENTRY.format(inbox=tables.inbox)} RETURNING id)
        INSERT INTO {tables.outbox}
            (message_id, topic, message_key, payload, headers, available_at)
        SELECT $7, $8, $9, $10::jsonb, $11::jsonb, now() + make_interval(secs => $12)
        FROM entry
        """,
        *_entry_args(entry),
        reply.message_id,
        reply.topic,
        reply.key,
        reply.payload.decode(),
        json.dumps(dict(reply.headers)),
        skew,
    )


async def bar(conn: DriverConnection, tables: JourneyTables, entry: InboxEntry) -> bool:
    """Record a command as answered without running it (a compensation overtook it), so
    that a late delivery is refused. False when it had already been recorded."""
    inserted = await conn.fetchval(
        f"{_INSERT_ENTRY.format(inbox=tables.inbox)} "
        "ON CONFLICT (message_id) DO NOTHING RETURNING true",
        *_entry_args(entry),
    )
    return bool(inserted)
