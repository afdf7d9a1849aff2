"""Parking messages that cannot be handled, so that consumption goes on past them.

A dead letter keeps the original key, value and headers, so a person can read it and, once
the cause is fixed, send it back unchanged; the ``x-dead-letter-*`` and ``x-original-*``
headers say why it was parked and where it came from. Each one is counted in
``saga_dead_letters_total{topic, reason_kind}`` by a :class:`DeadLetterKind`, never by
the free-text reason, so the metric's labels stay few.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

import structlog

from saga import metrics
from saga.transport.message import OutgoingMessage

if TYPE_CHECKING:
    from saga.transport.dispatch import Incoming
    from saga.transport.port import MessageSender

log = structlog.get_logger("saga.transport")

# Room left for the record's framing and anything the broker adds, so that a truncated
# dead letter is never itself too large to send.
_HEADROOM_BYTES = 4096
# A reason is usually one line; an exception message can be a page.
_MAX_REASON_CHARS = 1024

REASON = "x-dead-letter-reason"
TRUNCATED = "x-dead-letter-truncated"
ORIGINAL_TOPIC = "x-original-topic"
ORIGINAL_PARTITION = "x-original-partition"
ORIGINAL_OFFSET = "x-original-offset"
DEAD_LETTERED_AT = "x-dead-lettered-at"


class DeadLetterKind(StrEnum):
    """Why a message was dead-lettered, in few enough words for a metric label."""

    MALFORMED = "malformed"
    """Not a valid envelope: empty, not JSON, a field missing or wrong, a key not UTF-8."""
    REJECTED = "rejected"
    """A valid message nobody can handle: unknown saga or action, wrong topic."""
    OVERSIZE = "oversize"
    """Larger than KAFKA_MAX_MESSAGE_BYTES."""
    EXHAUSTED = "exhausted"
    """The handler kept failing in an unexpected way and was given up on."""


class DeadLetters:
    """Sends unhandleable messages to the dead-letter topic."""

    def __init__(self, producer: MessageSender, topic: str, *, max_message_bytes: int) -> None:
        self.producer = producer
        self.topic = topic
        self.max_message_bytes = max_message_bytes

    async def send(
        self, incoming: Incoming, reason: str, *, kind: DeadLetterKind = DeadLetterKind.REJECTED
    ) -> None:
        """Produce the dead letter and wait for the broker's ack; count it by ``kind``.

        Raises :class:`~saga.errors.BrokerUnavailable` when the broker does not take it;
        the caller tries again, since committing past the message would lose it.
        """
        await self.producer.send(self.letter(incoming, reason))
        metrics.DEAD_LETTERS.labels(incoming.topic, kind.value).inc()
        log.warning(
            "message_dead_lettered",
            topic=incoming.topic,
            partition=incoming.partition,
            offset=incoming.offset,
            key=incoming.key,
            reason=reason,
            reason_kind=kind.value,
            dead_letter_topic=self.topic,
        )

    def letter(self, incoming: Incoming, reason: str) -> OutgoingMessage:
        """The dead letter for ``incoming``, its value cut short if it would not fit."""
        key = incoming.key if incoming.key is not None else "unknown"
        headers = {
            **incoming.headers,
            REASON: reason[:_MAX_REASON_CHARS],
            ORIGINAL_TOPIC: incoming.topic,
            ORIGINAL_PARTITION: str(incoming.partition),
            ORIGINAL_OFFSET: str(incoming.offset),
            DEAD_LETTERED_AT: datetime.now(UTC).isoformat(),
        }
        value = incoming.value or b""
        room = self.max_message_bytes - _HEADROOM_BYTES - _size(key, headers)
        if len(value) > room:
            headers[TRUNCATED] = "true"
            room -= _size("", {TRUNCATED: "true"})
            value = value[: max(room, 0)]
        return OutgoingMessage(topic=self.topic, key=key, value=value, headers=headers)


def _size(key: str, headers: dict[str, str]) -> int:
    return len(key.encode()) + sum(
        len(name.encode()) + len(value.encode()) for name, value in headers.items()
    )
