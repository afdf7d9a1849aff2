"""A clock the test moves: timeouts and backoffs come due without anyone waiting.

Its time is the database's ``now()`` plus :attr:`TestClock.skew`, the seconds it has been
moved forward (:mod:`saga.clock`). Every database of a test environment carries it, so the
deadlines the engine writes and the ones its worker judges are on the same clock.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass


@dataclass(slots=True)
class _Sleeper:
    wakes_at: float
    woken: asyncio.Future[None]
    task: asyncio.Task[object] | None


class TestClock:
    """A :class:`~saga.clock.Clock` that stands still until :meth:`advance` moves it.

    Sleeps (a retry's backoff before its command is sent) end when the clock has been
    moved past their end, never by real time passing, so a test decides when they fire.
    """

    __test__ = False  # not a pytest test class, whatever its name says

    def __init__(self) -> None:
        self._skew = 0.0
        self._sleepers: list[_Sleeper] = []

    @property
    def skew(self) -> float:
        return self._skew

    @property
    def now(self) -> float:
        """Seconds this clock has been moved forward (its reading relative to its start)."""
        return self._skew

    async def sleep(self, seconds: float) -> None:
        if not math.isfinite(seconds):
            raise ValueError(f"a sleep must be a finite number of seconds, got {seconds!r}")
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        woken = asyncio.get_running_loop().create_future()
        self._sleepers.append(_Sleeper(self._skew + seconds, woken, asyncio.current_task()))
        await woken

    def next_wake(self) -> float | None:
        """Seconds until the earliest sleep ends; None when nothing sleeps."""
        pending = [s.wakes_at for s in self._sleepers if not s.woken.done()]
        return None if not pending else max(min(pending) - self._skew, 0.0)

    def advance(self, seconds: float) -> list[asyncio.Task[object]]:
        """Move the clock ``seconds`` forward and end every sleep that is now over;
        returns the tasks that were sleeping, so a caller can wait for what they do next."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"the clock moves forward by a finite number >= 0, got {seconds!r}")
        self._skew += seconds
        woken: list[asyncio.Task[object]] = []
        still: list[_Sleeper] = []
        for sleeper in self._sleepers:
            if sleeper.woken.done():
                continue  # cancelled while asleep
            if sleeper.wakes_at <= self._skew:
                sleeper.woken.set_result(None)
                if sleeper.task is not None:
                    woken.append(sleeper.task)
            else:
                still.append(sleeper)
        self._sleepers = still
        return woken
