"""Counting what the engine dead-lettered, by why: see :class:`DeadLetterCounter`."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from benchmarks.reliability._kafka import GroupReader
from benchmarks.reliability.kinds import FAULT_KIND_HEADER
from saga.transport.dead_letter import (
    DEAD_LETTERED_AT,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    ORIGINAL_TOPIC,
    DeadLetterKind,
)
from saga.transport.dead_letter import REASON as DEAD_LETTER_REASON

# Not set by the engine today (the kind is only a metric label and a log field); read
# first should it ever be, before falling back to the reason's wording.
DEAD_LETTER_KIND_HEADER = "x-dead-letter-kind"


def dead_letter_kind(headers: dict[str, str]) -> str:
    """The :class:`DeadLetterKind` of a dead letter. The engine writes the kind only to
    its metric and log, so it is read back from the reason's wording, which
    saga.transport.consumer and saga.messages fix: a size over the limit is oversize, an
    unexpected error exhausted, a failed decode malformed, anything else rejected."""
    if DEAD_LETTER_KIND_HEADER in headers:
        return headers[DEAD_LETTER_KIND_HEADER]
    reason = headers.get(DEAD_LETTER_REASON, "")
    if reason.startswith("value of ") and "exceeds the limit" in reason:
        return DeadLetterKind.OVERSIZE.value
    if reason.startswith("unexpected "):
        return DeadLetterKind.EXHAUSTED.value
    if reason.startswith(("invalid envelope", "empty message", "the key or a header is not")):
        return DeadLetterKind.MALFORMED.value
    return DeadLetterKind.REJECTED.value


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter as counted."""

    key: str | None
    original_topic: str | None
    kind: str
    reason: str
    fault: str | None
    """The ``x-fault-kind`` of a poison record (kept by the dead letter), else None."""


class DeadLetterCounter:
    """Counts the dead-letter topic's records, read by a consumer in a group of its own:
    ``by_kind`` (malformed, rejected, oversize, exhausted; see :func:`dead_letter_kind`),
    ``by_topic`` (the original topic), ``by_fault`` (the poison kind, for poison records)
    and ``letters``.

    It survives a broker restart: the client reconnects and reads the new, empty topic
    from its start once the engine creates it again (what the broker lost is lost; the
    harness knows when it restarted it, and may call :meth:`reconnect` right after).
    A record read twice (its offset not committed before a reconnect) is counted once:
    a dead letter is known by the original's topic, partition and offset and the time it
    was dead-lettered.
    """

    def __init__(
        self,
        bootstrap: str,
        dead_letter_topic: str,
        *,
        session_timeout_ms: int = 6000,
        group_id: str | None = None,
    ) -> None:
        self.dead_letter_topic = dead_letter_topic
        self.by_kind: Counter[str] = Counter()
        self.by_topic: Counter[str] = Counter()
        self.by_fault: Counter[str] = Counter()
        self.letters: list[DeadLetter] = []
        self._seen: set[tuple[object, ...]] = set()
        self._reader = GroupReader(
            bootstrap,
            [dead_letter_topic],
            group_id or f"fault-dead-letters-{uuid.uuid4().hex[:10]}",
            self._count,
            session_timeout_ms=session_timeout_ms,
        )

    @property
    def total(self) -> int:
        return len(self.letters)

    @property
    def ready(self) -> asyncio.Event:
        """Set once the group has given the counter its partitions."""
        return self._reader.ready

    @property
    def reconnects(self) -> int:
        """How often the client was replaced; aiokafka rides out a broker restart by
        itself (it re-joins the forgotten group), so 0 is usual."""
        return self._reader.reconnects

    def reconnect(self) -> None:
        """Join again with a new client (after a broker restart, say)."""
        self._reader.reconnect()

    async def run(self, stop: asyncio.Event) -> None:
        await self._reader.run(stop)

    async def _count(self, records: list[Any]) -> None:
        for record in records:
            headers = {
                name: (value or b"").decode(errors="replace") for name, value in record.headers
            }
            identity: tuple[object, ...] = tuple(
                headers.get(name)
                for name in (ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, DEAD_LETTERED_AT)
            )
            if None in identity:
                identity = (record.topic, record.partition, record.offset, record.timestamp)
            if identity in self._seen:
                continue
            self._seen.add(identity)
            letter = DeadLetter(
                key=record.key.decode(errors="replace") if record.key is not None else None,
                original_topic=headers.get(ORIGINAL_TOPIC),
                kind=dead_letter_kind(headers),
                reason=headers.get(DEAD_LETTER_REASON, ""),
                fault=headers.get(FAULT_KIND_HEADER),
            )
            self.letters.append(letter)
            self.by_kind[letter.kind] += 1
            self.by_topic[letter.original_topic or "unknown"] += 1
            if letter.fault is not None:
                self.by_fault[letter.fault] += 1
