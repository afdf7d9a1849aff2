"""The faults that act on the engine's processes and on the broker process: SIGKILL and
restart, the broker restarted empty, and a participant starved of connections.

Each strikes first at a random moment early in the run, then every ``every`` seconds
(±50 %), so a short run sees each kind at least once and a long one sees them throughout.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence

import structlog

from benchmarks.reliability._kafka import pause
from benchmarks.reliability.processes import Fleet
from saga.embedded import EmbeddedBroker

log = structlog.get_logger("reliability")

# How a starved participant runs: one pooled connection, no overflow, and a wait for it
# short enough that many of its 64 concurrent commands give up on the pool.
STARVED_POOL = {
    "DATABASE_POOL_SIZE": "1",
    "DATABASE_MAX_OVERFLOW": "0",
    "DATABASE_CONNECTION_TIMEOUT": "50",
}


def jittered(draw: random.Random, every: float) -> float:
    return every * draw.uniform(0.5, 1.5)


class ProcessKiller:
    """SIGKILL an engine process, then start it again after ``down`` seconds. The kinds
    take turns (coordinator, participant, worker), so every kind is killed early."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        coordinators: Sequence[str],
        participants: Sequence[str],
        workers: Sequence[str],
        every: float,
        draw: random.Random,
        locks: dict[str, asyncio.Lock],
        down: tuple[float, float] = (0.5, 2.0),
    ) -> None:
        self.fleet = fleet
        self.targets = {
            "kill_coordinator": list(coordinators),
            "kill_participant": list(participants),
            "kill_worker": list(workers),
        }
        self.every = every
        self.draw = draw
        self.locks = locks
        self.down = down
        self.injected: Counter[str] = Counter()
        self.last_at: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        kinds = [kind for kind, names in self.targets.items() if names]
        turn = 0
        if await pause(stop, self.draw.uniform(0.5, min(3.0, self.every))):
            return
        while not stop.is_set():
            kind = kinds[turn % len(kinds)]
            turn += 1
            name = self.draw.choice(self.targets[kind])
            async with self.locks[name]:
                self.fleet.kill(name)
                self.injected[kind] += 1
                self.last_at = time.monotonic()
                log.info("fault_injected", kind=kind, process=name)
                await asyncio.sleep(self.draw.uniform(*self.down))
                self.fleet.start(name)
            if await pause(stop, jittered(self.draw, self.every)):
                return


class BrokerRestarter:
    """Restart the in-memory broker on its port: every message, topic, committed offset
    and consumer group it held is gone, as after losing a broker without replicas."""

    def __init__(
        self, broker: EmbeddedBroker, *, every: float, draw: random.Random, first: float
    ) -> None:
        self.broker = broker
        self.every = every
        self.draw = draw
        self.first = first
        self.injected: Counter[str] = Counter()
        self.last_at: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        if await pause(stop, self.first):
            return
        while not stop.is_set():
            await asyncio.to_thread(self.broker.restart)
            self.injected["broker_restart"] += 1
            self.last_at = time.monotonic()
            log.info("fault_injected", kind="broker_restart")
            if await pause(stop, jittered(self.draw, self.every)):
                return


class PoolStarver:
    """Run a participant for ``window`` seconds with one pooled connection and a 50 ms
    wait for it: most of its concurrent commands find the pool exhausted, which must
    delay them (the consumer retries), never lose or fail them."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        participants: Sequence[str],
        every: float,
        window: float,
        draw: random.Random,
        locks: dict[str, asyncio.Lock],
    ) -> None:
        self.fleet = fleet
        self.participants = list(participants)
        self.every = every
        self.window = window
        self.draw = draw
        self.locks = locks
        self.injected: Counter[str] = Counter()
        self.last_at: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        if await pause(stop, self.draw.uniform(0.5, min(3.0, self.every))):
            return
        while not stop.is_set():
            name = self.draw.choice(self.participants)
            async with self.locks[name]:
                await self._restart(name, STARVED_POOL)
                self.injected["pool_exhausted"] += 1
                self.last_at = time.monotonic()
                log.info("fault_injected", kind="pool_exhausted", process=name)
                await pause(stop, self.window)
                self.last_at = time.monotonic()
                await self._restart(name, None)
            if await pause(stop, jittered(self.draw, self.every)):
                return

    async def _restart(self, name: str, starved: dict[str, str] | None) -> None:
        """Restart ``name`` gracefully, starved (``STARVED_POOL``) or back to normal."""
        engine = self.fleet.processes[name]
        if self.fleet.running(name):
            await self.fleet.terminate(name, within=60)
        for key in STARVED_POOL:
            engine.environ.pop(key, None)
        engine.environ.update(starved or {})
        self.fleet.start(name)
