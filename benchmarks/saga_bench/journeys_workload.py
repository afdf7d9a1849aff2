"""``--workload journeys``: the three cross-journey sagas served by the real journey
services (``saga run participant --journey care|plan|health|gamification``), checked
with :func:`journeys.invariants.check_invariants` once each level's sagas have ended."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from benchmarks.saga_bench.constants import REPO_ROOT
from benchmarks.saga_bench.journey_mix import (
    BOOKING_CENTS,
    CLAIM_CENTS,
    COLLIDING_SHARE,
    SHARES,
    SMALL_LIMIT_SHARE,
    UNCOVERED_GOAL_SHARE,
    plan_mix,
    starters,
)
from benchmarks.saga_bench.journey_scene import LARGE_LIMIT_CENTS, SMALL_LIMIT_CENTS, build_scene
from benchmarks.saga_bench.results import InvariantFigures
from benchmarks.saga_bench.workload import Starter, Verdict
from journeys.care.sagas import BOOK_APPOINTMENT_VERSIONS
from journeys.health.sagas import COMPLETE_HEALTH_GOAL_VERSIONS
from journeys.invariants import check_invariants
from journeys.plan.sagas import GRANT_WELLNESS_CREDIT, SUBMIT_CLAIM_VERSIONS
from saga.definition import SagaDefinition
from saga.settings import load_settings, to_plain_url
from saga.store import Database
from saga.store.seeding import seed_reference

JOURNEYS = ("care", "plan", "health", "gamification")
SHOWN_VIOLATIONS = 10


def scratch_database(url: str, application_name: str) -> Database:
    """A small pool on ``url`` as its owner, for the set-up and the check."""
    settings = load_settings(
        env_dir=REPO_ROOT,
        database_url=url,
        database_pool_size=2,
        database_max_overflow=0,
        database_log_queries=False,
    )
    return Database.from_settings(settings, application_name=application_name)


async def _prepare(url: str, sagas: int) -> list[Starter]:
    database = scratch_database(url, "bench-scene")
    try:
        await seed_reference(database)
    finally:
        await database.dispose()
    mix = plan_mix(sagas)
    conn = await asyncpg.connect(to_plain_url(url))
    try:
        scene = await build_scene(conn, mix.size)
    finally:
        await conn.close()
    return starters(mix, scene)


async def _check(url: str, ids: Sequence[uuid.UUID]) -> InvariantFigures:
    database = scratch_database(url, "bench-invariants")
    started = time.perf_counter()
    try:
        report = await check_invariants(database, saga_ids=ids, allow_parked=True)
    finally:
        await database.dispose()
    return InvariantFigures(
        checked=len(ids),
        violations=len(report.violations),
        first_violations=report.violations[:SHOWN_VIOLATIONS],
        sagas_by_status={k: v for k, v in report.sagas_by_status.items() if v},
        parked=len(report.parked),
        parked_errors=[f"{saga_id}: {error}" for saga_id, error in report.parked[:5]],
        seconds=round(time.perf_counter() - started, 3),
    )


class Journeys:
    name = "journeys"
    definitions: Sequence[SagaDefinition] = (
        *BOOK_APPOINTMENT_VERSIONS,
        *SUBMIT_CLAIM_VERSIONS,
        # The child first: complete_health_goal v2 starts it.
        GRANT_WELLNESS_CREDIT,
        *COMPLETE_HEALTH_GOAL_VERSIONS,
    )

    def commands(self, level: int) -> dict[str, list[str]]:
        return {
            "coordinator": ["saga", "run", "coordinator", "--concurrency", str(max(level, 128))],
            **{
                journey: [
                    "saga",
                    "run",
                    "participant",
                    "--journey",
                    journey,
                    "--concurrency",
                    str(max(level, 64)),
                ]
                for journey in JOURNEYS
            },
        }

    def prepare(self, url: str, level: int, sagas: int) -> list[Starter]:
        return asyncio.run(_prepare(url, sagas))

    def expected_compensated(self, measured: int) -> int | None:
        return None  # refusals depend on the order the sagas meet in

    async def verify(self, url: str, ids: Sequence[uuid.UUID]) -> Verdict:
        figures = await _check(url, ids)
        problems = [
            f"invariants: {figures.violations} violation(s) over {figures.checked} sagas"
        ] + [f"  {line}" for line in figures.first_violations]
        return Verdict(problems=problems if figures.violations else [], invariants=figures)

    def describe(self) -> dict[str, Any]:
        return {
            "workload": self.name,
            "definitions": [f"{d.name} v{d.version}" for d in self.definitions],
            "services": ["saga run coordinator"]
            + [f"saga run participant --journey {journey}" for journey in JOURNEYS],
            "shares": SHARES,
            "colliding_bookings_share": COLLIDING_SHARE,
            "small_limit_members_share": SMALL_LIMIT_SHARE,
            "uncovered_goals_share": UNCOVERED_GOAL_SHARE,
            "limits_cents": {"large": LARGE_LIMIT_CENTS, "small": SMALL_LIMIT_CENTS},
            "booking_cents": BOOKING_CENTS,
            "claim_cents": CLAIM_CENTS,
        }
