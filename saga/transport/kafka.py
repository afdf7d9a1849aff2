"""The Kafka adapter of the transport port: aiokafka's producer, consumer and admin client.

Its parts are :class:`~saga.transport.producer.Producer`,
:class:`~saga.transport.consumer.BatchConsumer` and
:func:`~saga.transport.topics.ensure_topics`; this class only builds them from the
settings, so that the engine sees one :class:`~saga.transport.port.Transport`.
"""

from __future__ import annotations

from collections.abc import Sequence

from saga.errors import ConfigurationError
from saga.settings import Settings
from saga.transport.consumer import BatchConsumer
from saga.transport.dead_letter import DeadLetters
from saga.transport.dispatch import Handler
from saga.transport.port import Hook
from saga.transport.producer import Producer
from saga.transport.topics import ensure_topics


class KafkaTransport:
    """Kafka at ``bootstrap_servers`` (default: ``KAFKA_BOOTSTRAP_SERVERS``), tuned by the
    ``KAFKA_*`` settings: partitions and replicas of new topics, fetch wait, session timeout,
    size limit, idempotence.

    Raises :class:`~saga.errors.ConfigurationError` when no broker address is known.
    """

    def __init__(self, settings: Settings, *, bootstrap_servers: str | None = None) -> None:
        servers = bootstrap_servers or settings.kafka_bootstrap_servers
        if not servers:
            raise ConfigurationError(
                "no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS or pass bootstrap_servers "
                "(the embedded broker is only started by the demo and the tests)"
            )
        self.settings = settings
        self.bootstrap_servers = servers

    def __repr__(self) -> str:
        return f"KafkaTransport(bootstrap_servers={self.bootstrap_servers!r})"

    @property
    def max_message_bytes(self) -> int:
        return self.settings.kafka_max_message_bytes

    async def ensure_topics(self, names: Sequence[str], *, max_wait: float = 30.0) -> None:
        await ensure_topics(
            self.bootstrap_servers,
            names,
            partitions=self.settings.kafka_topic_partitions,
            replication_factor=self.settings.kafka_topic_replication_factor,
            client_id=self.settings.kafka_client_id,
            max_wait=max_wait,
        )

    def sender(self, *, client_id: str) -> Producer:
        return Producer(
            self.bootstrap_servers,
            client_id=client_id,
            max_message_bytes=self.settings.kafka_max_message_bytes,
            idempotence=self.settings.kafka_enable_idempotence,
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
    ) -> BatchConsumer:
        return BatchConsumer(
            bootstrap_servers=self.bootstrap_servers,
            topics=topics,
            group_id=group_id,
            handle=handle,
            dead_letters=dead_letters,
            client_id=client_id,
            fetch_max_wait_ms=self.settings.kafka_fetch_max_wait_ms,
            idle_poll_ms=self.settings.kafka_idle_poll_ms,
            max_message_bytes=self.settings.kafka_max_message_bytes,
            max_concurrency=max_concurrency,
            session_timeout_ms=self.settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=self.settings.kafka_heartbeat_interval_ms,
            on_rebalance=on_rebalance,
        )
