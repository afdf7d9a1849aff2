"""The transport port: what the engine asks of whatever moves its messages.

The coordinator and the participants (through :class:`~saga.runtime.MessagingRuntime`)
speak only these protocols; :class:`~saga.transport.kafka.KafkaTransport` is the production
adapter and :class:`~saga.transport.memory.InMemoryTransport` the one for tests. Every
adapter passes the same contract suite (``tests/integration/test_transport_contract.py``):

* a send returns only once the message is stored; a message too large for the adapter's
  limit fails with :class:`~saga.errors.MessageRejected`, a transport that cannot store it
  with :class:`~saga.errors.BrokerUnavailable`;
* messages sharing a key are handled in the order they were sent;
* delivery is at least once: what a consumer handled but did not commit (it crashed, it
  lost its partitions) is delivered again, to it or to another member of its group;
* a record that cannot be handled is dead-lettered through
  :class:`~saga.transport.dead_letter.DeadLetters` and the records behind it go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from saga.transport.dead_letter import DeadLetters
    from saga.transport.dispatch import Handler
    from saga.transport.message import OutgoingMessage

Hook = Callable[[], Awaitable[None]]
"""Awaited by a consumer after each rebalance after the first (see ``on_rebalance``)."""


class MessageSender(Protocol):
    """Sends messages; started once, stopped once."""

    async def start(self) -> None:
        """Connect. Raises :class:`~saga.errors.BrokerUnavailable` if that fails."""
        ...

    async def stop(self) -> None:
        """Wait for what was handed over, then disconnect. Safe to call twice."""
        ...

    async def send(self, message: OutgoingMessage) -> None:
        """Return once ``message`` is stored; raise the engine's error if it was not."""
        ...

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        """Send every message, keeping per-key order; return, in order, ``None`` for each
        message stored and the error :meth:`send` would raise for each that was not."""
        ...


class Consumer(Protocol):
    """One member of a consumer group, running a handler over its partitions' records."""

    @property
    def ready(self) -> asyncio.Event:
        """Set once the group gave this member its partitions for the first time."""
        ...

    @property
    def processed(self) -> int:
        """Records the handler finished."""
        ...

    @property
    def dead_lettered(self) -> int:
        """Records parked in the dead-letter topic."""
        ...

    @property
    def retried(self) -> int:
        """Handler calls made again after a failure."""
        ...

    @property
    def rebalances(self) -> int:
        """Assignments received after the first."""
        ...

    async def run(self) -> None:
        """Consume until :meth:`stop`."""
        ...

    async def stop(self, *, grace: float = 10.0) -> None:
        """Take no new batch; give the one in hand ``grace`` seconds to finish and commit,
        then abandon the rest of it (it is delivered again) and close."""
        ...

    def assignment(self) -> frozenset[tuple[str, int]]:
        """The (topic, partition) pairs this member holds since the last rebalance."""
        ...


class Transport(Protocol):
    """Makes topics, senders and consumers of one messaging system."""

    @property
    def max_message_bytes(self) -> int:
        """The largest message value this transport sends or hands to a handler."""
        ...

    async def ensure_topics(self, names: Sequence[str], *, max_wait: float = 30.0) -> None:
        """Create whichever of ``names`` do not exist (again), waiting up to ``max_wait``
        seconds for them to be usable; raises :class:`~saga.errors.BrokerUnavailable`."""
        ...

    def sender(self, *, client_id: str) -> MessageSender:
        """A new, not yet started, sender."""
        ...

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
        """A new member of ``group_id`` that runs ``handle`` over ``topics`` (concurrent
        across keys, in order within one) once :meth:`Consumer.run` is awaited."""
        ...
