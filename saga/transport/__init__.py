"""The transport moves messages between the coordinator and the participants over Kafka.

It decides nothing: what a message means, whether a step succeeded and what comes next are
the coordinator's and the participants' business, recorded in PostgreSQL. The transport
only guarantees delivery at least once, in order per key: a message is acknowledged by the
broker before its sender moves on, and an offset is committed only after the record is
handled or dead-lettered. A crash therefore means redelivery, never loss, and every
handler must be idempotent. aiokafka's errors stop here, translated into
:class:`~saga.errors.BrokerUnavailable` and :class:`~saga.errors.MessageRejected`.
"""

from saga.transport.consumer import BatchConsumer, Handler, Incoming
from saga.transport.dead_letter import DeadLetters
from saga.transport.producer import OutgoingMessage, Producer
from saga.transport.topics import Topics, ensure_topics

__all__ = [
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
