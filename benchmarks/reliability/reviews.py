"""The plan auditor of the reliability suite: reviews the claims of the mix that wait for
``claim_reviewed`` (submit_claim v2 above its threshold), each in one of these ways:

- ``on_time``: once the claim waits, approved;
- ``rejected``: once the claim waits, rejected (plan refuses it, the claim is cancelled);
- ``twice``: once it waits, approved, then the same signal again (nothing changes);
- ``early``: right after the start, before the claim reaches its wait (kept, then
  consumed by the transition that enters the wait);
- ``late``: nobody reviews it in time: three days pass (the harness moves the wait's
  deadline to now, as a clock would), the timeout worker compensates it, and the review
  sent then is refused.

Signals go through the harness's own coordinator (``Coordinator.signal``), again while
the database is unreachable (a signal id makes a retry idempotent). What each review
met is counted in :attr:`Reviewer.outcomes` (the report's evidence).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, TypeVar

import structlog

from benchmarks.saga_bench.workload import Starter
from journeys.plan.sagas import CLAIM_REVIEWED
from saga.coordinator import Coordinator, SignalReceipt
from saga.errors import SagaError, SignalRefused
from saga.machine import SagaStatus
from saga.store import Database

log = structlog.get_logger(__name__)

T = TypeVar("T")

# How long a review waits for its claim to reach the wait or to end: the drain's order.
PATIENCE_SECONDS = 240.0
ACTOR = "auditor.reliability"

MOVE_DEADLINE = """
    UPDATE shared.saga_instance SET step_deadline = now()
    WHERE id = $1 AND status = 'waiting'
"""


class Review(StrEnum):
    ON_TIME = "on_time"
    REJECTED = "rejected"
    TWICE = "twice"
    EARLY = "early"
    LATE = "late"


class Reviewer:
    """Wraps the starters of reviewed claims so that each start schedules its review."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._ways = itertools.cycle(Review)
        self._tasks: list[asyncio.Task[None]] = []
        self.outcomes: Counter[str] = Counter()
        """``<way>:<what happened>``, e.g. ``early:kept``, ``late:refused``."""

    def reviewing(self, start: Starter) -> Starter:
        way = next(self._ways)

        async def started(coordinator: Coordinator) -> uuid.UUID:
            saga_id = await start(coordinator)
            task = asyncio.create_task(self._review(coordinator, saga_id, way))
            self._tasks.append(task)
            return saga_id

        return started

    async def finish(self) -> None:
        """Wait for every review under way; a review that failed is raised here."""
        await asyncio.gather(*self._tasks)

    async def _review(self, coordinator: Coordinator, saga_id: uuid.UUID, way: Review) -> None:
        signal_id = f"review-{saga_id}"
        approve = {"approved": True, "reason": "reliability: approved"}
        if way is Review.EARLY:
            receipt = await self._signal(coordinator, saga_id, approve, signal_id)
            self._count(way, receipt)
            return
        if not await self._until(coordinator, saga_id, waiting=True):
            self.outcomes[f"{way}:ended_before_its_wait"] += 1
            return
        if way is Review.LATE:
            await _patiently(lambda: self._move_deadline(saga_id))
            await self._until(coordinator, saga_id, waiting=False)
            try:
                await self._signal(coordinator, saga_id, approve, signal_id)
            except SignalRefused:
                self.outcomes[f"{way}:refused"] += 1
            else:
                self.outcomes[f"{way}:not_refused"] += 1
            return
        if way is Review.REJECTED:
            reject = {"approved": False, "reason": "reliability: rejected"}
            self._count(way, await self._signal(coordinator, saga_id, reject, signal_id))
            return
        self._count(way, await self._signal(coordinator, saga_id, approve, signal_id))
        if way is Review.TWICE:
            self._count(way, await self._signal(coordinator, saga_id, approve, signal_id))

    def _count(self, way: Review, receipt: SignalReceipt) -> None:
        what = "repeated" if receipt.repeated else receipt.outcome.value
        self.outcomes[f"{way}:{what}"] += 1

    async def _signal(
        self,
        coordinator: Coordinator,
        saga_id: uuid.UUID,
        data: dict[str, Any],
        signal_id: str,
    ) -> SignalReceipt:
        return await _patiently(
            lambda: coordinator.signal(
                saga_id, CLAIM_REVIEWED, data, signal_id=signal_id, actor=ACTOR
            )
        )

    async def _until(self, coordinator: Coordinator, saga_id: uuid.UUID, *, waiting: bool) -> bool:
        """Until the saga waits (``waiting``) or has ended; True if it waits."""
        deadline = time.monotonic() + PATIENCE_SECONDS
        while time.monotonic() < deadline:
            summary = await _patiently(lambda: coordinator.status(saga_id))
            if summary.status is SagaStatus.WAITING and waiting:
                return True
            if summary.status not in (SagaStatus.WAITING, *_IN_FLIGHT):
                return False
            await asyncio.sleep(0.2)
        raise AssertionError(f"claim {saga_id} neither waited nor ended in {PATIENCE_SECONDS} s")

    async def _move_deadline(self, saga_id: uuid.UUID) -> None:
        await self._database.run_driver(
            lambda conn: conn.execute(MOVE_DEADLINE, saga_id), name="reliability.review_late"
        )


_IN_FLIGHT = (SagaStatus.RUNNING, SagaStatus.COMPENSATING)


async def _patiently(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, again while it fails in a way worth retrying (the faults terminate
    connections and restart the broker under the harness too)."""
    deadline = time.monotonic() + PATIENCE_SECONDS
    while True:
        try:
            return await call()
        except SagaError as exc:
            if not exc.retriable or time.monotonic() > deadline:
                raise
            log.warning("review_retrying", error=str(exc))
            await asyncio.sleep(0.5)
