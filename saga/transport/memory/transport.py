"""The in-memory adapter of the transport port, over an :class:`InMemoryBroker`.

::

    broker = InMemoryBroker()
    transport = InMemoryTransport(broker)
    async with Coordinator(settings=settings, database=database, transport=transport) as c:
        ...

Its consumers share the Kafka adapter's dispatch (:mod:`saga.transport.dispatch`), so
per-key order, retries and dead letters behave the same; only fetching, committing and
group membership are the broker's. A consumer waits on an event the broker sets when a
record or a rebalance arrives: nothing polls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from saga.errors import BrokerUnavailable, ConfigurationError, MessageRejected
from saga.transport.dead_letter import DeadLetters
from saga.transport.dispatch import Handler, KeyedDispatch
from saga.transport.memory.broker import GroupMember, InMemoryBroker
from saga.transport.message import OutgoingMessage
from saga.transport.port import Hook

log = structlog.get_logger("saga.transport")

DEFAULT_MAX_MESSAGE_BYTES = 1_000_000


class InMemoryTransport:
    """Senders and consumers of one :class:`InMemoryBroker` (a new one if not given).

    ``partitions`` is the partition count of the topics :meth:`ensure_topics` creates;
    ``max_message_bytes`` the largest value its senders send and its consumers hand to a
    handler (larger records are dead-lettered), as ``KAFKA_MAX_MESSAGE_BYTES`` is for Kafka.
    """

    def __init__(
        self,
        broker: InMemoryBroker | None = None,
        *,
        partitions: int = 4,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retry_delay: float = 0.05,
        max_retry_delay: float = 2.0,
    ) -> None:
        if partitions < 1 or max_message_bytes < 1:
            raise ConfigurationError("partitions and max_message_bytes must be >= 1")
        self.broker = broker if broker is not None else InMemoryBroker()
        self.partitions = partitions
        self._max_message_bytes = max_message_bytes
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay

    def __repr__(self) -> str:
        return f"InMemoryTransport({self.broker!r})"

    @property
    def max_message_bytes(self) -> int:
        return self._max_message_bytes

    async def ensure_topics(self, names: Sequence[str], *, max_wait: float = 30.0) -> None:
        for name in names:
            self.broker.create_topic(name, self.partitions)

    def sender(self, *, client_id: str) -> InMemorySender:
        return InMemorySender(
            self.broker, client_id=client_id, max_message_bytes=self._max_message_bytes
        )

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
    ) -> InMemoryConsumer:
        return InMemoryConsumer(
            self.broker,
            topics=topics,
            group_id=group_id,
            client_id=client_id,
            on_rebalance=on_rebalance,
            dispatch=KeyedDispatch(
                handle=handle,
                dead_letters=dead_letters,
                group_id=group_id,
                max_message_bytes=self._max_message_bytes,
                max_concurrency=max_concurrency,
                retry_delay=self._retry_delay,
                max_retry_delay=self._max_retry_delay,
            ),
        )


class InMemorySender:
    """Stores messages in the broker; the same errors, at the same moments, as
    :class:`~saga.transport.producer.Producer`."""

    def __init__(self, broker: InMemoryBroker, *, client_id: str, max_message_bytes: int) -> None:
        self.broker = broker
        self.client_id = client_id
        self.max_message_bytes = max_message_bytes
        self._started = False
        self._stopped = False

    async def start(self) -> None:
        if self._started or self._stopped:
            raise ConfigurationError("a sender is started once: make a new one")
        if not self.broker.available:
            raise BrokerUnavailable("cannot connect to the in-memory broker: it is unavailable")
        self._started = True

    async def stop(self) -> None:
        self._stopped = True

    async def send(self, message: OutgoingMessage) -> None:
        (outcome,) = await self.send_many([message])
        if outcome is not None:
            raise outcome

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        if self._stopped:
            return [
                BrokerUnavailable(f"the sender is stopped; nothing was sent to {m.topic}")
                for m in messages
            ]
        if not self._started:
            raise ConfigurationError("the sender was not started: call start() first")
        outcomes = [self._send_one(message) for message in messages]
        await asyncio.sleep(0)  # a send is a suspension point on every transport
        return outcomes

    def _send_one(self, message: OutgoingMessage) -> BaseException | None:
        try:
            size = _size(message)
            if size > self.max_message_bytes:
                raise MessageRejected(
                    f"a message of {size} bytes to {message.topic} is over the size limit "
                    f"of {self.max_message_bytes} bytes"
                )
            self.broker.append(message)
        except Exception as exc:  # a malformed message: its own failure, not the batch's
            return exc
        return None


class InMemoryConsumer:
    """One member of a consumer group of the in-memory broker (see the port's
    :class:`~saga.transport.port.Consumer`)."""

    def __init__(
        self,
        broker: InMemoryBroker,
        *,
        topics: Sequence[str],
        group_id: str,
        client_id: str,
        dispatch: KeyedDispatch,
        on_rebalance: Hook | None = None,
        max_batch: int = 500,
    ) -> None:
        if not topics:
            raise ConfigurationError("a consumer needs at least one topic")
        if max_batch < 1:
            raise ConfigurationError("max_batch must be >= 1")
        self.broker = broker
        self.topics = tuple(topics)
        self.group_id = group_id
        self.client_id = client_id
        self._dispatch = dispatch
        self._on_rebalance = on_rebalance
        self._max_batch = max_batch
        self._member: GroupMember | None = None
        self._running = False
        self._closed = asyncio.Event()
        self._assigned: frozenset[tuple[str, int]] = frozenset()
        self.ready = asyncio.Event()
        self.rebalances = 0

    @property
    def processed(self) -> int:
        return self._dispatch.processed

    @property
    def dead_lettered(self) -> int:
        return self._dispatch.dead_lettered

    @property
    def retried(self) -> int:
        return self._dispatch.retried

    def assignment(self) -> frozenset[tuple[str, int]]:
        return self._assigned

    async def run(self) -> None:
        """Consume until :meth:`stop`. Ending any other way (an error, a cancellation) is a
        crash: the member leaves its group without committing the batch in hand."""
        if self._running:
            raise ConfigurationError("InMemoryConsumer.run() is already running")
        self._running = True
        self._closed.clear()
        member = self.broker.join(self.group_id, self.topics, self.client_id)
        self._member = member
        log.info("consumer_started", group_id=self.group_id, topics=self.topics)
        try:
            await self._consume(member)
        finally:
            self.broker.leave(member)
            self._member = None
            self._running = False
            self._closed.set()
            log.info("consumer_stopped", group_id=self.group_id, topics=self.topics)

    async def stop(self, *, grace: float = 10.0) -> None:
        self._dispatch.request_stop(grace)
        if self._member is not None:
            self._member.wake.set()
        if self._running:
            await self._closed.wait()

    async def _consume(self, member: GroupMember) -> None:
        dispatch = self._dispatch
        while not dispatch.stopping.is_set():
            if member.generation != member.group.generation:
                await self._adopt(member)
                continue
            generation = member.generation
            batch = await self.broker.fetch(member, self._max_batch)
            if not batch:
                continue
            offsets = await dispatch.settle(batch)
            if not self.broker.commit(member, generation, offsets):
                log.info("commit_skipped_after_rebalance", group_id=self.group_id)

    async def _adopt(self, member: GroupMember) -> None:
        """Take the partitions the group's new generation gave this member; after the
        first, run ``on_rebalance`` (a failing hook is logged, as the Kafka adapter does)."""
        member.generation = member.group.generation
        self._assigned = frozenset(member.assignment)
        log.info("partitions_assigned", group_id=self.group_id, count=len(self._assigned))
        if not self.ready.is_set():
            self.ready.set()
            return
        self.rebalances += 1
        if self._on_rebalance is None:
            return
        try:
            await self._on_rebalance()
        except Exception:
            log.exception("rebalance_hook_failed", group_id=self.group_id)


def _size(message: OutgoingMessage) -> int:
    """Key, value and headers: what a Kafka producer holds against its request size."""
    return (
        len(message.key.encode())
        + len(message.value)
        + sum(len(name.encode()) + len(value.encode()) for name, value in message.headers.items())
    )
