"""Helpers for users' tests.

- :class:`SagaTestEnvironment`: run sagas with their real handlers on real PostgreSQL in
  one process, with :class:`Faults` injected and a :class:`TestClock` that skips ahead;
- :func:`run_saga`: start a saga on a running coordinator and see a failure raised.
"""

from saga.testing.clock import TestClock
from saga.testing.environment import SagaStuck, SagaTestEnvironment
from saga.testing.faults import Faults, InjectedFault, ParticipantCrashed
from saga.testing.run import run_saga
from saga.testing.switchboard import Switchboard

__all__ = [
    # running sagas in a test
    "SagaTestEnvironment",
    "run_saga",
    # what a test controls
    "Faults",
    "TestClock",
    # what a test may see
    "InjectedFault",
    "ParticipantCrashed",
    "SagaStuck",
    "Switchboard",
]
