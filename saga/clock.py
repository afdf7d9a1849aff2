"""The time the engine goes by for step deadlines, saga deadlines and retry backoffs.

Deadlines are written and compared by PostgreSQL (``now() + ...``), so that every process
of a deployment judges them by one clock, the database's. A :class:`Clock` therefore says
how far the engine's time runs ahead of the database's ``now()`` (:attr:`Clock.skew`,
passed to the statements that write or compare a deadline or a row's availability) and
how to wait in process for a retry's backoff (:meth:`Clock.sleep`).

Production uses :data:`SYSTEM_CLOCK`: no skew, real sleeps. The test kit
(:mod:`saga.testing`) moves a clock of its own forward, so timeouts and backoffs come due
without anyone waiting for them. A :class:`~saga.store.Database` carries the clock its
users read, so every process on one database reads the same one.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Clock(Protocol):
    """What the engine reads the time from."""

    @property
    def skew(self) -> float:
        """Seconds the engine's time runs ahead of the database's ``now()``; never less
        than it was (time does not run backwards)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock."""
        ...


class SystemClock:
    """The database's own time and real sleeps."""

    @property
    def skew(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
