"""The test environment's transport: every message sent waits in one queue until the
environment delivers it, at the moment the test clock says it is due.

It implements the transport port's sending side (:class:`~saga.transport.port.Transport`);
nothing consumes on its own, because the environment hands each message to the
coordinator or the participant whose topic it is on, one at a time, in the order sent.
That is what makes a run deterministic and lets the environment know when nothing is left
to do. The transport-level faults of :class:`~saga.testing.faults.Faults` happen here.
"""

from __future__ import annotations

import heapq
import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from saga.errors import ConfigurationError, MessageRejected
from saga.messages import Command, Reply, decode
from saga.testing.clock import TestClock
from saga.testing.faults import Faults, ParticipantCrashed
from saga.transport.dead_letter import DeadLetters
from saga.transport.dispatch import Handler, Incoming
from saga.transport.message import OutgoingMessage
from saga.transport.port import Consumer, Hook


@dataclass(order=True, frozen=True, slots=True)
class Queued:
    due: float
    """The test clock's reading (seconds moved forward) from which it may be delivered."""
    sequence: int
    message: OutgoingMessage = field(compare=False)


class Switchboard:
    """Holds every message sent in the test environment until it is delivered."""

    def __init__(self, clock: TestClock, faults: Faults, *, max_message_bytes: int) -> None:
        self._clock = clock
        self._faults = faults
        self._max_message_bytes = max_message_bytes
        self._queue: list[Queued] = []
        self._sequence = itertools.count()
        self._actions: dict[uuid.UUID, str] = {}
        self.sent = 0
        """Messages accepted (each duplicate counts)."""
        self.lost: list[OutgoingMessage] = []
        """Commands a ``time_out`` fault dropped."""
        self.crashed: list[OutgoingMessage] = []
        """Replies a ``crash_before_reply`` fault kept from being sent."""

    @property
    def max_message_bytes(self) -> int:
        return self._max_message_bytes

    async def ensure_topics(self, names: Sequence[str], *, max_wait: float = 30.0) -> None:
        """Topics need no creating here."""

    def sender(self, *, client_id: str) -> SwitchboardSender:
        return SwitchboardSender(self)

    def consumer(
        self,
        *,
        topics: Sequence[str],
        group_id: str,
        handle: Handler,
        dead_letters: DeadLetters,
        client_id: str,
        max_concurrency: int = 64,
        on_rebalance: Hook | None = None,
    ) -> Consumer:
        raise ConfigurationError(
            "the test environment delivers messages itself: do not call run() on a "
            "coordinator or participant of a SagaTestEnvironment"
        )

    def accept(self, message: OutgoingMessage) -> BaseException | None:
        """Queue ``message`` (applying the planned faults); the send's outcome."""
        if len(message.value) > self._max_message_bytes:
            return MessageRejected(
                f"a message of {len(message.value)} bytes to {message.topic} is over the "
                f"limit of {self._max_message_bytes}"
            )
        delay = 0.0
        envelope = _envelope(message)
        if isinstance(envelope, Command):
            self._actions[envelope.message_id] = envelope.action
            if self._faults.lose_command(envelope.action):
                self.lost.append(message)
                return None
            delay = self._faults.lateness(envelope.action)
        elif isinstance(envelope, Reply):
            action = self._actions.get(envelope.in_reply_to)
            if action is not None and self._faults.crash_replying(action):
                self.crashed.append(message)
                return ParticipantCrashed(f"the {envelope.journey} participant died replying")
        copies = 2 if self._faults.duplicate_every_message else 1
        for _ in range(copies):
            self._push(message, delay)
        return None

    def _push(self, message: OutgoingMessage, delay: float) -> None:
        self.sent += 1
        heapq.heappush(self._queue, Queued(self._clock.now + delay, next(self._sequence), message))

    def take_due(self) -> Queued | None:
        """The oldest message due now, removed from the queue; None when none is due."""
        if self._queue and self._queue[0].due <= self._clock.now:
            return heapq.heappop(self._queue)
        return None

    def next_due(self) -> float | None:
        """Seconds until the next queued message is due; None when the queue is empty."""
        if not self._queue:
            return None
        return max(self._queue[0].due - self._clock.now, 0.0)

    @staticmethod
    def incoming(queued: Queued) -> Incoming:
        message = queued.message
        return Incoming(
            topic=message.topic,
            partition=0,
            offset=queued.sequence,
            key=message.key,
            value=message.value,
            headers=dict(message.headers),
            timestamp_ms=0,
        )


class SwitchboardSender:
    """A :class:`~saga.transport.port.MessageSender` that hands messages to the board."""

    def __init__(self, board: Switchboard) -> None:
        self._board = board

    async def start(self) -> None:
        """Nothing to connect to."""

    async def stop(self) -> None:
        """Nothing to disconnect from."""

    async def send(self, message: OutgoingMessage) -> None:
        error = self._board.accept(message)
        if error is not None:
            raise error

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        return [self._board.accept(message) for message in messages]


def _envelope(message: OutgoingMessage) -> Command | Reply | None:
    try:
        decoded = decode(message.value)
        # A child saga's notices pass as they are: no fault is planned for them.
        return decoded if isinstance(decoded, Command | Reply) else None
    except MessageRejected:
        return None  # a dead letter or a test's own bytes: delivered as it is
