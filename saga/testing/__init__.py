"""Helpers for users' tests; with :mod:`saga`, the only module a test needs to import.

- :class:`SagaTestEnvironment`: run sagas with their real handlers on real PostgreSQL in
  one process, with :class:`Faults` injected and a :class:`TestClock` that skips ahead;
- :func:`run_saga`: start a saga on a running coordinator and see a failure raised;
- :func:`migrated_database` and :class:`MigratedTemplate`: a database migrated to head on
  the server ``DATABASE_URL`` names or an embedded one (the fixtures of
  :mod:`saga.testing.pytest_plugin` are made of them);
- :class:`InMemoryTransport` over an :class:`InMemoryBroker`: the engine's own services
  (``transport=``) on an in-process broker with Kafka's semantics, no broker process.
"""

from saga.testing.clock import TestClock
from saga.testing.database import MigratedTemplate, migrated_database
from saga.testing.environment import SagaStuck, SagaTestEnvironment
from saga.testing.faults import Faults, InjectedFault, ParticipantCrashed
from saga.testing.run import run_saga
from saga.testing.switchboard import Queued, Switchboard
from saga.transport.memory import InMemoryBroker, InMemoryTransport, StoredRecord

__all__ = [
    # running sagas in a test
    "SagaTestEnvironment",
    "run_saga",
    # a migrated database to run them on: one of its own, or copies of a template
    "migrated_database",
    "MigratedTemplate",
    # what a test controls: the faults, the clock
    "Faults",
    "TestClock",
    # what a test may catch: a saga nothing can move, a fault raised as planned
    # (run_saga's SagaFailed and the SagaTimeout of both are saga's own errors)
    "InjectedFault",
    "ParticipantCrashed",
    "SagaStuck",
    # what a test may look at: the environment's transport and the messages it holds
    "Queued",
    "Switchboard",
    # the in-memory transport: the services on an in-process broker, its records
    "InMemoryBroker",
    "InMemoryTransport",
    "StoredRecord",
]
