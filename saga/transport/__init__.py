"""The transport moves messages between the coordinator and the participants.

It is a port (:mod:`saga.transport.port`: :class:`Transport`, :class:`MessageSender`,
:class:`Consumer`) with two adapters: :class:`KafkaTransport` for production and
:class:`InMemoryTransport` (over an :class:`InMemoryBroker`) for tests. Both consumers run
records through the same key-ordered dispatch (:mod:`saga.transport.dispatch`).

It decides nothing: what a message means, whether a step succeeded and what comes next are
the coordinator's and the participants' business, recorded in PostgreSQL. The transport
only guarantees delivery at least once, in order per key: a message is acknowledged by the
broker before its sender moves on, and an offset is committed only after the record is
handled or dead-lettered. A crash therefore means redelivery, never loss, and every
handler must be idempotent. aiokafka's errors stop here, translated into
:class:`~saga.errors.BrokerUnavailable` and :class:`~saga.errors.MessageRejected`.
"""

from saga.transport.consumer import BatchConsumer
from saga.transport.dead_letter import DeadLetters
from saga.transport.dispatch import Handler, Incoming
from saga.transport.kafka import KafkaTransport
from saga.transport.memory import InMemoryBroker, InMemoryTransport
from saga.transport.message import OutgoingMessage
from saga.transport.port import Consumer, MessageSender, Transport
from saga.transport.producer import Producer
from saga.transport.topics import Topics, ensure_topics

__all__ = [
    # the port and its adapters
    "Consumer",
    "InMemoryBroker",
    "InMemoryTransport",
    "KafkaTransport",
    "MessageSender",
    "Transport",
    # naming and set-up
    "Topics",
    "ensure_topics",
    # sending
    "OutgoingMessage",
    "Producer",
    # receiving
    "BatchConsumer",
    "DeadLetters",
    "Handler",
    "Incoming",
]
