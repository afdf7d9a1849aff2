"""A mixed load of the three cross-journey sagas (the benchmark's journey mix: bookings,
claims and goal completions, some refused so they compensate) and the polls that tell
how far it has got. The bookings run book_appointment v2's parallel group; a share of the
claims (:data:`REVIEWED_SHARE`) wait for a plan auditor's review, which
:mod:`benchmarks.reliability.reviews` sends (on time, rejected, twice, early, late)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

import asyncpg

from benchmarks.reliability.reviews import Reviewer
from benchmarks.saga_bench.journey_mix import plan_mix, starters
from benchmarks.saga_bench.journey_scene import build_scene
from benchmarks.saga_bench.workload import Starter
from journeys.plan.sagas import SUBMIT_CLAIM
from saga.coordinator import Coordinator
from saga.settings import to_plain_url
from saga.store import Database
from saga.store.driver import DriverConnection

FINISHED = ("completed", "compensated", "aborted")
REVIEWED_SHARE = 0.4
"""Of the claims (a quarter of the mix), those above their review threshold."""


async def prepare_mix(
    database_url: str, sagas: int, reviewer: Reviewer | None = None
) -> list[Starter]:
    """The rows ``sagas`` mixed sagas act on, and a starter for each (bookings, claims and
    goal completions; some are refused and compensate). With a ``reviewer``, a share of
    the claims wait for a review, and each one's starter schedules it; without, none
    waits."""
    mix = plan_mix(sagas, reviewed_share=0.0 if reviewer is None else REVIEWED_SHARE)
    conn = await asyncpg.connect(to_plain_url(database_url))
    try:
        scene = await build_scene(conn, mix.size)
    finally:
        await conn.close()
    reviewed = iter(mix.reviewed)
    return [
        reviewer.reviewing(start)
        if reviewer is not None and kind == SUBMIT_CLAIM.name and next(reviewed)
        else start
        for kind, start in zip(mix.kinds, starters(mix, scene), strict=True)
    ]


async def start_all(
    coordinator: Coordinator, starting: Sequence[Starter], per_second: float
) -> list[uuid.UUID]:
    """Start each saga in turn at about ``per_second``, so the load spans the test."""
    ids = []
    for start in starting:
        ids.append(await start(coordinator))
        await asyncio.sleep(1 / per_second)
    return ids


async def count_finished(database: Database, ids: Sequence[uuid.UUID]) -> int:
    async def count(conn: DriverConnection) -> int:
        found = await conn.fetchval(
            "SELECT count(*) FROM shared.saga_instance WHERE id = ANY($1::uuid[]) "
            "AND status::text = ANY($2::text[])",
            list(ids),
            list(FINISHED),
        )
        return int(found)

    return await database.run_driver(count, transaction=False)


async def wait_finished(database: Database, ids: Sequence[uuid.UUID], within: float) -> None:
    deadline = time.monotonic() + within
    while (done := await count_finished(database, ids)) < len(ids):
        if time.monotonic() > deadline:
            raise AssertionError(f"only {done} of {len(ids)} sagas finished within {within} s")
        await asyncio.sleep(0.2)


async def wait_some_finished(database: Database, ids: Sequence[uuid.UUID], count: int) -> None:
    """Until ``count`` of the sagas started so far have finished: the load is under way."""
    deadline = time.monotonic() + 60
    while await count_finished(database, ids) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} sagas finished within 60 s")
        await asyncio.sleep(0.05)
