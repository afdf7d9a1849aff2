"""The closed loop: ``level`` sagas in flight, and the watcher that sees them finish."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence

import asyncpg

from benchmarks.saga_bench.workload import Starter
from saga.coordinator import Coordinator

POLL = """
    SELECT id, status FROM shared.saga_instance
    WHERE id = ANY($1::uuid[]) AND status IN ('completed', 'compensated', 'parked')
"""


class Stalled(Exception):
    """No saga finished for too long, or a service process died."""


class Watcher:
    """Sees sagas finish: one query over every saga in flight each ``interval`` s."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        interval: float,
        *,
        stall_after: float,
        health: Callable[[], None],
    ) -> None:
        self._conn = conn
        self._interval = interval
        self._stall_after = stall_after
        self._health = health
        self._waiting: dict[uuid.UUID, asyncio.Future[str]] = {}
        self._failed: BaseException | None = None
        self.polls = 0

    def watch(self, saga_id: uuid.UUID) -> asyncio.Future[str]:
        if self._failed is not None:
            raise Stalled(str(self._failed))
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[saga_id] = future
        return future

    async def run(self) -> None:
        progress = time.monotonic()
        try:
            while True:
                await asyncio.sleep(self._interval)
                self._health()
                if not self._waiting:
                    progress = time.monotonic()
                    continue
                rows = await self._conn.fetch(POLL, list(self._waiting))
                self.polls += 1
                for row in rows:
                    future = self._waiting.pop(row["id"], None)
                    if future is not None and not future.done():
                        future.set_result(row["status"])
                if rows:
                    progress = time.monotonic()
                elif time.monotonic() - progress > self._stall_after:
                    raise Stalled(
                        f"no saga finished for {self._stall_after:.0f} s; "
                        f"{len(self._waiting)} in flight"
                    )
        except Exception as exc:
            self._failed = exc
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(Stalled(str(exc)))
            self._waiting.clear()
            raise


async def closed_loop(
    coordinator: Coordinator,
    watcher: Watcher,
    starts: Sequence[Starter],
    level: int,
) -> tuple[list[uuid.UUID], list[str]]:
    """Keep ``level`` sagas in flight until every saga has started and finished.
    Returns the ids of the sagas started and the problems met (stalls)."""
    slots = asyncio.Semaphore(level)
    ids: list[uuid.UUID] = []
    problems: list[str] = []
    aborted = asyncio.Event()

    async def one(start: Starter) -> None:
        try:
            saga_id = await start(coordinator)
            ids.append(saga_id)
            await watcher.watch(saga_id)
        except Stalled as exc:
            if not aborted.is_set():
                problems.append(str(exc))
            aborted.set()
        finally:
            slots.release()

    tasks: list[asyncio.Task[None]] = []
    try:
        for start in starts:
            await slots.acquire()
            if aborted.is_set():
                slots.release()
                break
            tasks.append(asyncio.create_task(one(start)))
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return ids, problems


async def warm_up(coordinator: Coordinator, watcher: Watcher, starts: Sequence[Starter]) -> None:
    """One saga alone (the consumer groups form meanwhile), then the rest together."""
    _, problems = await closed_loop(coordinator, watcher, starts[:1], 1)
    if not problems:
        _, problems = await closed_loop(coordinator, watcher, starts[1:], len(starts))
    if problems:
        raise Stalled(f"warm-up failed: {problems[0]}")
