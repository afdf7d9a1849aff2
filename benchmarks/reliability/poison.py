"""Poison on every topic: records the engine cannot handle, which must be dead-lettered
without holding up the records behind them. See :class:`PoisonInjector`."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError

from benchmarks.reliability._kafka import (
    Role,
    log,
    new_producer,
    pause,
    seeded_uuid,
    started,
    topic_role,
)
from benchmarks.reliability.kinds import (
    FAULT_DEFINITION,
    FAULT_KIND_HEADER,
    POISON_GARBAGE,
    POISON_INVALID_PAYLOAD,
    POISON_KINDS,
    POISON_OVERSIZE,
    POISON_UNKNOWN_ACTION,
)
from saga.machine import Outcome, Phase
from saga.messages import Command, Reply
from saga.transport.dead_letter import DeadLetterKind


def _spoil(name: str, value: object) -> Callable[[dict[str, Any]], None]:
    def spoil(document: dict[str, Any]) -> None:
        document[name] = value

    return spoil


def _drop(name: str) -> Callable[[dict[str, Any]], None]:
    def spoil(document: dict[str, Any]) -> None:
        del document[name]

    return spoil


SPOILERS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("attempt is a string", _spoil("attempt", "1")),
    ("step_index is not a number", _spoil("step_index", "first")),
    ("message_id is not a uuid", _spoil("message_id", "not-a-uuid")),
    ("phase is not a phase", _spoil("phase", "sideways")),
    ("saga_id is missing", _drop("saga_id")),
    ("definition_version is missing", _drop("definition_version")),
]
"""Ways to spoil a valid envelope's document so that validation fails: wrong types,
missing fields. Each is dead-lettered as malformed."""

# Which dead-letter kind each poison ends as (saga.transport.consumer and the handlers).
POISON_DEAD_LETTER = {
    POISON_GARBAGE: DeadLetterKind.MALFORMED.value,
    POISON_OVERSIZE: DeadLetterKind.OVERSIZE.value,
    POISON_UNKNOWN_ACTION: DeadLetterKind.REJECTED.value,
    POISON_INVALID_PAYLOAD: DeadLetterKind.MALFORMED.value,
}


@dataclass(frozen=True, slots=True)
class Poison:
    """One poison record the broker acknowledged."""

    kind: str
    topic: str
    key: str
    replies: bool
    """On the replies topic (else a command topic)."""


class PoisonInjector:
    """Writes records the engine cannot handle to the given command topics and replies
    topic: a record every ``every`` seconds on average, a random topic and kind each time,
    each keyed with a fresh uuid so that it never touches a real saga:

    - ``poison_garbage``: bytes that are not an envelope (random bytes, empty, an envelope
      cut short, JSON that is not an object);
    - ``poison_oversize``: a valid envelope padded past ``max_message_bytes`` (the
      engine's KAFKA_MAX_MESSAGE_BYTES; this producer allows larger records, and the
      broker takes them);
    - ``poison_unknown_action``: on a command topic, a valid Command of that journey with
      an action it does not have; on the replies topic, a valid Reply for a saga that
      does not exist;
    - ``poison_invalid_payload``: a valid envelope whose document is then spoiled (a
      field of the wrong type or missing, see :data:`SPOILERS`).

    What the engine does with each (saga.transport.consumer, the participant and
    coordinator handlers), which :meth:`expected_by_kind` encodes: garbage and invalid
    envelopes fail ``saga.messages.decode`` and are dead-lettered ``malformed``; an
    oversize record is dead-lettered ``oversize`` before it is decoded; a Reply for an
    unknown saga is dead-lettered ``rejected``; an unknown action is answered with a
    *failed* reply (so a real saga would compensate at once) and dead-lettered
    ``rejected``, and that failed reply, naming a saga nobody knows, is dead-lettered
    ``rejected`` by the coordinator too: two dead letters. None of them may hold up the
    records behind them.

    The expectation is exact only while no engine process dies and the broker keeps its
    data: a process killed after dead-lettering but before committing dead-letters the
    record again when it comes back, and a restarted broker loses the dead letters (and
    poison) it held.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        max_message_bytes: int,
        *,
        draw: random.Random,
        every: float = 1.0,
        kinds: Sequence[str] = POISON_KINDS,
    ) -> None:
        unknown = set(kinds) - set(POISON_KINDS)
        if unknown or not kinds or not topics:
            raise ValueError(f"topics and kinds needed, kinds among {POISON_KINDS}")
        self.bootstrap = bootstrap
        self.roles = {topic: topic_role(topic) for topic in topics}
        self.max_message_bytes = max_message_bytes
        self.every = every
        self.injected: Counter[str] = Counter()
        self.sent: list[Poison] = []
        self.last_at: float | None = None
        """time.monotonic() of the last fault injected."""
        self.draw = draw
        self._plan = [(topic, kind) for topic in topics for kind in kinds]
        self._topics = list(topics)
        self._kinds = list(kinds)
        self._producer: Any = None

    async def run(self, stop: asyncio.Event) -> None:
        # Each kind once first (on a random topic), so even a short run injects them all,
        # each tried again until the broker takes it (one sent while the broker restarts is
        # lost); then topic and kind at random.
        first = [(self.draw.choice(self._topics), kind) for kind in self._kinds]
        try:
            while not await pause(stop, self.every * self.draw.uniform(0.5, 1.5)):
                topic, kind = first[0] if first else self.draw.choice(self._plan)
                if not await self._ensure_producer(stop):
                    return
                if await self.inject(topic, kind) is not None and first:
                    first.pop(0)
        finally:
            await self.close()

    async def inject(self, topic: str, kind: str) -> Poison | None:
        """Write one poison record of ``kind`` to ``topic``; None if the broker did not
        acknowledge it (not counted)."""
        key = seeded_uuid(self.draw)
        value = self._value(self.roles[topic], kind, key)
        await self._ensure_producer(None)
        try:
            await self._producer.send_and_wait(
                topic,
                value=value,
                key=str(key).encode(),
                headers=[(FAULT_KIND_HEADER, kind.encode())],
            )
        except KafkaError as exc:
            log.warning("fault_poison_lost", topic=topic, kind=kind, reason=type(exc).__name__)
            return None
        poison = Poison(kind, topic, str(key), self.roles[topic].replies)
        self.injected[kind] += 1
        self.last_at = time.monotonic()
        self.sent.append(poison)
        return poison

    def expected_by_kind(self) -> Counter[str]:
        """Dead letters the engine must write for what was injected, by ``reason_kind``."""
        expected: Counter[str] = Counter()
        for poison in self.sent:
            expected[POISON_DEAD_LETTER[poison.kind]] += 1
            if poison.kind == POISON_UNKNOWN_ACTION and not poison.replies:
                expected[DeadLetterKind.REJECTED.value] += 1  # the failed reply
        return expected

    def expected_dead_letters(self) -> int:
        return sum(self.expected_by_kind().values())

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def _ensure_producer(self, stop: asyncio.Event | None) -> bool:
        if self._producer is not None:
            return True
        # Room for the oversize record: over the engine's limit by up to a few KiB.
        size = max(2 * self.max_message_bytes, self.max_message_bytes + 65536)
        producer = new_producer(self.bootstrap, "fault-poison", size)
        if not await started(producer, stop):
            return False
        self._producer = producer
        return True

    # -- the records ------------------------------------------------------------------------

    def _value(self, role: Role, kind: str, key: uuid.UUID) -> bytes:
        if kind == POISON_GARBAGE:
            return self._garbage(role, key)
        if kind == POISON_OVERSIZE:
            base = len(self._envelope(role, key, padding="").to_bytes())
            over = self.max_message_bytes - base + self.draw.randint(1, 4096)
            value = self._envelope(role, key, padding="x" * max(over, 1)).to_bytes()
            assert len(value) > self.max_message_bytes
            return value
        if kind == POISON_UNKNOWN_ACTION:
            return self._envelope(role, key).to_bytes()
        document = self._envelope(role, key).to_document()
        _, spoil = self.draw.choice(SPOILERS)
        spoil(document)
        return json.dumps(document).encode()

    def _garbage(self, role: Role, key: uuid.UUID) -> bytes:
        variant = self.draw.randrange(4)
        if variant == 0:
            return self.draw.randbytes(self.draw.randint(1, 512))
        if variant == 1:
            return b""
        if variant == 2:
            whole = self._envelope(role, key).to_bytes()
            return whole[: self.draw.randint(1, len(whole) - 1)]
        return json.dumps(["not", "an", "envelope", str(key)]).encode()

    def _envelope(
        self, role: Role, key: uuid.UUID, *, padding: str | None = None
    ) -> Command | Reply:
        """A valid Command (command topic: an action the journey lacks, answering to the
        replies topic) or Reply (replies topic: for saga ``key``, which does not exist)."""
        common: dict[str, Any] = {
            "message_id": seeded_uuid(self.draw),
            "saga_id": key,
            "definition": FAULT_DEFINITION,
            "definition_version": 1,
            "step_index": 0,
            "step_name": "fault",
            "phase": Phase.EXECUTE,
            "attempt": 1,
        }
        extra = {} if padding is None else {"padding": padding}
        if role.journey is None:
            return Reply(
                **common,
                journey="fault",
                in_reply_to=seeded_uuid(self.draw),
                outcome=Outcome.SUCCEEDED,
                result=extra,
            )
        return Command(
            **common,
            journey=role.journey,
            action="fault_no_such_action",
            timeout_ms=5000,
            payload=extra,
            reply_to=role.topics.replies,
        )
