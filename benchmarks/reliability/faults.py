"""Fault injectors that need no process control, run beside the load against the same
broker and database; and the counter of what the engine dead-lettered.

Every injector has ``async def run(self, stop)`` (inject until ``stop`` is set, at the
pace its constructor was given, drawing every choice from the ``random.Random`` it was
given, so a run can be repeated) and ``injected``, a ``Counter`` of fault kind → how many
were injected. A fault is counted once it has happened (the broker acknowledged the
record, PostgreSQL terminated the backend, the transaction committed), never when it
was merely attempted.

- :class:`Duplicator`: ``duplicate_delivery``, ``reply_reordered``;
- :class:`PoisonInjector`: ``poison_garbage``, ``poison_oversize``,
  ``poison_unknown_action``, ``poison_invalid_payload``;
- :class:`BackendTerminator`: ``backend_terminated``;
- :class:`Contention`: ``serialization_conflict``;
- :class:`DeadLetterCounter`: the dead-letter topic by ``reason_kind``.

Injected records are marked (:mod:`.kinds`) so that one injector never multiplies
another's: the Duplicator copies no copy, no poison record and no envelope of the fault
definition, which keeps the poison's expected dead letters exact.
"""

from __future__ import annotations

from benchmarks.reliability._kafka import topic_role
from benchmarks.reliability.database_faults import (
    HOT_COVERAGES,
    HOT_SLOTS,
    Backend,
    BackendTerminator,
    Contention,
)
from benchmarks.reliability.dead_letters import DeadLetter, DeadLetterCounter, dead_letter_kind
from benchmarks.reliability.duplicator import Duplicator
from benchmarks.reliability.kinds import (
    BACKEND_TERMINATED,
    COPY_HEADER,
    DUPLICATE_DELIVERY,
    FAULT_DEFINITION,
    FAULT_KIND_HEADER,
    POISON_GARBAGE,
    POISON_INVALID_PAYLOAD,
    POISON_KINDS,
    POISON_OVERSIZE,
    POISON_UNKNOWN_ACTION,
    REPLY_REORDERED,
    SERIALIZATION_CONFLICT,
)
from benchmarks.reliability.poison import POISON_DEAD_LETTER, SPOILERS, Poison, PoisonInjector

__all__ = [
    "BACKEND_TERMINATED",
    "COPY_HEADER",
    "DUPLICATE_DELIVERY",
    "FAULT_DEFINITION",
    "FAULT_KIND_HEADER",
    "HOT_COVERAGES",
    "HOT_SLOTS",
    "POISON_DEAD_LETTER",
    "POISON_GARBAGE",
    "POISON_INVALID_PAYLOAD",
    "POISON_KINDS",
    "POISON_OVERSIZE",
    "POISON_UNKNOWN_ACTION",
    "REPLY_REORDERED",
    "SERIALIZATION_CONFLICT",
    "SPOILERS",
    "Backend",
    "BackendTerminator",
    "Contention",
    "DeadLetter",
    "DeadLetterCounter",
    "Duplicator",
    "Poison",
    "PoisonInjector",
    "dead_letter_kind",
    "topic_role",
]
