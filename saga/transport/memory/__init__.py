"""The in-memory transport: an in-process broker with Kafka's semantics, for tests.

``InMemoryTransport(InMemoryBroker())`` is passed as ``transport=`` to a
:class:`~saga.Coordinator`, a :class:`~saga.Participant` or a worker; the broker is the
place to look at what was sent (:meth:`InMemoryBroker.records`) and to inject faults.
Nothing here imports aiokafka.
"""

from saga.transport.memory.broker import InMemoryBroker, StoredRecord
from saga.transport.memory.transport import InMemoryConsumer, InMemorySender, InMemoryTransport

__all__ = [
    "InMemoryBroker",
    "InMemoryConsumer",
    "InMemorySender",
    "InMemoryTransport",
    "StoredRecord",
]
