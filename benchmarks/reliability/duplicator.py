"""Every message delivered twice, and replies' copies late: see :class:`Duplicator`."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError

from benchmarks.reliability._kafka import (
    FETCH_BYTES,
    GroupReader,
    is_fault,
    log,
    new_producer,
    started,
    topic_role,
)
from benchmarks.reliability.kinds import COPY_HEADER, DUPLICATE_DELIVERY, REPLY_REORDERED


@dataclass(slots=True)
class _PendingCopy:
    record: Any
    overtaken: bool = False


class Duplicator:
    """Delivers every message twice: a consumer in a group of its own on the given command
    topics and replies topic re-publishes each original record (same topic, partition,
    key, value and headers, plus ``x-fault-copy: 1``) once. Copies, poison records and
    envelopes of the fault definition are not copied.

    A copy of a command goes out at once. A copy of a reply waits a random
    ``reply_delay`` (seconds, low and high) first, so it usually arrives after later
    replies of the same saga: the coordinator then sees a step's reply again after it has
    moved on. ``injected`` counts ``duplicate_delivery`` per copy the broker acknowledged
    and ``reply_reordered`` per copy of a reply published after a later original with its
    key (one the Duplicator had already consumed, so certainly ahead of the copy in the
    partition). A copy still waiting when ``stop`` is set is dropped, not counted.

    A record handled twice (its offset not committed before a reconnect) is copied again
    and counted again: ``injected`` is what was published.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        *,
        draw: random.Random,
        reply_delay: tuple[float, float] = (0.0, 2.0),
        session_timeout_ms: int = 6000,
        group_id: str | None = None,
    ) -> None:
        low, high = reply_delay
        if not 0 <= low <= high:
            raise ValueError("reply_delay must be (low, high) with 0 <= low <= high")
        self._replies = {topic for topic in topics if topic_role(topic).replies}
        self.bootstrap = bootstrap
        self.reply_delay = reply_delay
        self.injected: Counter[str] = Counter()
        self.last_at: float | None = None
        """time.monotonic() of the last copy published."""
        self.draw = draw
        self._reader = GroupReader(
            bootstrap,
            topics,
            group_id or f"fault-duplicator-{uuid.uuid4().hex[:10]}",
            self._copy,
            session_timeout_ms=session_timeout_ms,
        )
        self._producer: Any = None
        # Reply copies waiting, per (topic, partition, key), oldest first.
        self._pending: dict[tuple[str, int, bytes | None], list[_PendingCopy]] = {}
        self._delayed: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> asyncio.Event:
        """Set once the group has given the Duplicator its partitions."""
        return self._reader.ready

    async def run(self, stop: asyncio.Event) -> None:
        self._producer = new_producer(self.bootstrap, "fault-duplicator", FETCH_BYTES)
        if not await started(self._producer, stop):
            return
        try:
            await self._reader.run(stop)
        finally:
            for task in self._delayed:
                task.cancel()
            await asyncio.gather(*self._delayed, return_exceptions=True)
            await self._producer.stop()

    async def _copy(self, records: list[Any]) -> None:
        sends: list[Awaitable[bool]] = []
        for record in records:
            if is_fault(record):
                continue
            if record.topic in self._replies:
                where = (record.topic, record.partition, record.key)
                # Every copy of this key still waiting will now land behind this original.
                for pending in self._pending.get(where, []):
                    pending.overtaken = True
                if self.reply_delay[1] > 0:
                    copy = _PendingCopy(record)
                    self._pending.setdefault(where, []).append(copy)
                    delay = self.draw.uniform(*self.reply_delay)
                    task = asyncio.create_task(self._publish_later(where, copy, delay))
                    self._delayed.add(task)
                    task.add_done_callback(self._delayed.discard)
                    continue
            sends.append(self._publish(record))
        if sends:
            await asyncio.gather(*sends)

    async def _publish_later(
        self, where: tuple[str, int, bytes | None], copy: _PendingCopy, delay: float
    ) -> None:
        try:
            await asyncio.sleep(delay)
            if await self._publish(copy.record) and copy.overtaken:
                self.injected[REPLY_REORDERED] += 1
        finally:
            waiting = self._pending.get(where, [])
            if copy in waiting:
                waiting.remove(copy)
            if not waiting:
                self._pending.pop(where, None)

    async def _publish(self, record: Any) -> bool:
        try:
            await self._producer.send_and_wait(
                record.topic,
                value=record.value,
                key=record.key,
                partition=record.partition,
                headers=[*record.headers, (COPY_HEADER, b"1")],
            )
        except KafkaError as exc:
            # The broker lost the topic or went away: this copy is not delivered.
            log.warning("fault_copy_lost", topic=record.topic, reason=f"{type(exc).__name__}")
            return False
        self.injected[DUPLICATE_DELIVERY] += 1
        self.last_at = time.monotonic()
        return True
