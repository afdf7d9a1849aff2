"""The lifecycle the coordinator and the participants share.

Start: create the topics, connect the producer, start publishing the outbox (the relay
first sweeps what a previous run of this process left behind). Run: consume this
process's topic in a consumer group. Stop: stop taking messages, let the batch in hand
finish, send what is due in the outbox, record what was published, disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog

from saga.errors import BrokerUnavailable, ConfigurationError
from saga.outbox import OutboxPublisher, RelaySettings
from saga.settings import Settings
from saga.store.database import Database
from saga.transport import DeadLetters, Handler, Topics
from saga.transport.kafka import KafkaTransport
from saga.transport.port import Consumer, MessageSender, Transport

log = structlog.get_logger("saga.runtime")

# How long a rebalance waits for lost topics to be created again before consuming on; the
# consumer's next rebalance tries again.
_RESTORE_WAIT_SECONDS = 10.0


class MessagingRuntime:
    """Sender, outbox publisher, dead letters and (optionally) a consumer, run together.

    They come from ``transport``; without one, from a :class:`KafkaTransport` of the
    settings (and ``bootstrap_servers``, which wins over the setting).
    """

    def __init__(
        self,
        *,
        name: str,
        settings: Settings,
        database: Database,
        bootstrap_servers: str | None = None,
        outbox_table: str,
        topics: Topics,
        own_topics: Sequence[str],
        relay: RelaySettings | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.database = database
        self.transport = resolve_transport(settings, bootstrap_servers, transport)
        self.producer: MessageSender = self.transport.sender(
            client_id=f"{settings.kafka_client_id}-{name}"
        )
        self.topics = topics
        self._own_topics = [*own_topics, topics.dead_letter]
        self._known_topics: set[str] = set()
        self.publisher = OutboxPublisher(database, self.producer, outbox_table, relay=relay)
        self.dead_letters = DeadLetters(
            self.producer, topics.dead_letter, max_message_bytes=self.transport.max_message_bytes
        )
        self.consumer: Consumer | None = None
        self._background: asyncio.Task[None] | None = None
        self._started = False
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        async with self._starting:  # starting a saga and running may both get here first
            if self._started:
                return
            await self.ensure_topics(self._own_topics)
            await self.producer.start()
            self._background = asyncio.get_running_loop().create_task(
                self.publisher.run(), name=f"{self.name}-outbox"
            )
            self._started = True

    async def ensure_topics(self, names: Sequence[str]) -> None:
        missing = [name for name in names if name not in self._known_topics]
        if missing:
            await self.transport.ensure_topics(missing)
            self._known_topics.update(missing)

    async def restore_topics(self) -> None:
        """Create again whichever of the topics this process made sure of are gone.

        Topics are otherwise created only at start, but a broker that comes back without
        its data (a restart of an in-memory broker, a lost volume) has none: a consumer
        then waits forever on a topic nobody creates (Kafka has auto-creation off; Tansu
        creates a topic only for some clients' requests), and every send to it stalls
        until the request timeout. Such a broker also forgot the consumer groups, so
        every member rejoins: the consumer calls this after each rebalance, which costs
        one metadata request when nothing was lost. A broker still away is left to the
        next rebalance, which its return causes.
        """
        names = sorted(self._known_topics)
        try:
            await self.transport.ensure_topics(names, max_wait=_RESTORE_WAIT_SECONDS)
        except BrokerUnavailable as exc:
            log.warning("topics_not_restored", name=self.name, topics=names, error=str(exc))

    async def consume(
        self, *, topic: str, group_id: str, handle: Handler, max_concurrency: int
    ) -> None:
        """Consume ``topic`` until :meth:`stop`; the outbox keeps running meanwhile."""
        await self.start()
        self.consumer = self.transport.consumer(
            topics=[topic],
            group_id=group_id,
            handle=handle,
            dead_letters=self.dead_letters,
            client_id=f"{self.settings.kafka_client_id}-{self.name}",
            max_concurrency=max_concurrency,
            on_rebalance=self.restore_topics,
        )
        consuming = asyncio.ensure_future(self.consumer.run())
        assert self._background is not None
        try:
            done, _ = await asyncio.wait(
                [consuming, self._background], return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            consuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consuming
            raise
        if self._background in done and not consuming.done():
            # The outbox loop died (a bug or a non-retriable error): stop consuming too.
            await self.consumer.stop()
            await consuming
        for task in done:
            task.result()

    async def stop(self) -> None:
        """Within SHUTDOWN_TIMEOUT_SECONDS: half of it for the batch in hand to finish and
        commit, a quarter to send what is due in the outbox, the rest to disconnect."""
        budget = self.settings.shutdown_timeout_seconds
        try:
            if self.consumer is not None:
                await self.consumer.stop(grace=budget / 2)
        finally:
            if self._background is not None:
                self._background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._background
                self._background = None
            if self._started:
                try:
                    await self.publisher.drain(budget / 4)
                    await self.publisher.close()
                finally:
                    await self.producer.stop()
            self._started = False
        log.info("runtime_stopped", name=self.name)


def resolve_transport(
    settings: Settings, bootstrap_servers: str | None, transport: Transport | None
) -> Transport:
    """``transport`` if given, else Kafka at ``bootstrap_servers`` or the settings' address."""
    if transport is None:
        return KafkaTransport(settings, bootstrap_servers=bootstrap_servers)
    if bootstrap_servers is not None:
        raise ConfigurationError(
            f"pass bootstrap_servers or transport, not both (got {bootstrap_servers!r} "
            f"and {transport!r})"
        )
    return transport
