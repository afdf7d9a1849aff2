"""A database holding sagas in every state an operator meets, made by really running them.

Nothing here inserts saga rows: every saga is started through a coordinator and driven by
participants over the broker (``tests/integration/sagas.py``), the worker's timeout job
runs for real, and a participant is stopped to leave sagas hanging, as a crash would.
Build it once per test module with the ``operator_scene`` fixture below (import it into
the module); it takes about 10 s.

The sagas, by role (``Scene.sagas``):

==================  ==========================  ============================================
role                state                       how
==================  ==========================  ============================================
completed           completed                   nothing steered; its payload carries
                                                sensitive fields (``email``, a nested
                                                ``cpf``) for the masking checks
completed_retried   completed                   ``authorize`` errs twice, then succeeds
completed_old_1/2   completed, started 3 d ago  ``started_at`` backdated (see below)
compensated         compensated                 ``award`` refuses
compensated_retry   compensated                 ``award`` errs twice, then refuses
parked              parked in ``revoke`` #3     ``confirm`` refuses; ``revoke`` errs always
compensating        compensating at ``revoke``  ``confirm`` refuses while the gamification
                                                participant is being stopped
running             running at ``award`` #2     :data:`SHORT` saga; nobody serves
                                                gamification; the worker timed out #1
==================  ==========================  ============================================

``aborted`` is left to the tests of the manual actions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from saga.coordinator import Coordinator
from saga.definition import SagaDefinition
from saga.settings import Settings, to_plain_url
from saga.store import Database, admin
from saga.worker.jobs.timeouts import STEP_TIMEOUTS
from saga.worker.scheduler import Worker
from tests.conftest import REPO_ROOT
from tests.integration.conftest import SagaEnvironment, open_saga_environment
from tests.integration.sagas import BOOKING, cluster, create_effect_tables

SHORT = SagaDefinition(
    "test_booking_short",
    1,
    [
        # ``award`` gives up waiting after 0.4 s, so a saga stuck there is soon overdue.
        dataclasses.replace(step, timeout=0.4) if step.name == "award" else step
        for step in BOOKING.steps
    ],
)

# ``email`` and ``cpf`` are sensitive everywhere; ``reason`` because the care journey
# service declares it.
SENSITIVE_PAYLOAD = {
    "email": "ana@example.com",
    "member": {"cpf": "123.456.789-09", "n": 1},
    "reason": "knee pain since March",
}
SECRETS = ("ana@example.com", "123.456.789-09", "knee pain")
"""What must never appear in ``saga show``'s output."""

BACKDATED = ("completed_old_1", "completed_old_2")


@dataclass(frozen=True)
class Scene:
    env: SagaEnvironment
    sagas: dict[str, uuid.UUID]

    @property
    def url(self) -> str:
        return self.env.database_url

    def role_of(self, saga_id: uuid.UUID | str) -> str:
        return {str(v): k for k, v in self.sagas.items()}[str(saga_id)]

    def query(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Rows of one read on a connection of its own (each test has its own loop)."""

        async def fetch() -> list[dict[str, Any]]:
            conn = await asyncpg.connect(to_plain_url(self.url))
            try:
                return [dict(row) for row in await conn.fetch(sql, *args)]
            finally:
                await conn.close()

        return asyncio.run(fetch())

    def saga(self, *argv: str, **environ: str) -> subprocess.CompletedProcess[str]:
        """``python -m saga *argv`` as an operator runs it, pointed at this scene
        (``environ`` adds to its environment)."""
        return subprocess.run(
            [sys.executable, "-m", "saga", *argv],
            cwd=REPO_ROOT,
            env={**self.env.process_environment(), "LOG_LEVEL": "WARNING", **environ},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


async def _until(what: str, check: Callable[[], Awaitable[bool]], *, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"the scene did not reach: {what}")
        await asyncio.sleep(0.02)


async def _state(database: Database, saga_id: uuid.UUID) -> tuple[str, int, int]:
    row = await database.run_driver(
        lambda conn: conn.fetchrow(
            "SELECT status, current_step, step_attempt FROM shared.saga_instance WHERE id = $1",
            saga_id,
        ),
        transaction=False,
    )
    assert row is not None
    return row["status"], row["current_step"], row["step_attempt"]


async def _at(database: Database, saga_id: uuid.UUID, *state: Any) -> bool:
    return (await _state(database, saga_id))[: len(state)] == state


async def build(env: SagaEnvironment) -> dict[str, uuid.UUID]:
    """Run the sagas of the table above and leave them in their states."""
    db = env.database
    await create_effect_tables(db)
    sagas: dict[str, uuid.UUID] = {}
    async with cluster(env.settings, db, env.bootstrap) as running:
        coordinator = running.coordinators[0]
        finishing: dict[str, dict[str, Any]] = {
            "completed": {"n": 1, **SENSITIVE_PAYLOAD},
            "completed_retried": {"error": {"authorize": 2}},
            "completed_old_1": {"n": 2},
            "completed_old_2": {"n": 3},
            "compensated": {"refuse": "award"},
            "compensated_retry": {"error": {"award": 2}, "refuse": "award"},
            "parked": {"refuse": "confirm", "error": {"revoke": 99}},
        }
        for role, payload in finishing.items():
            sagas[role] = await coordinator.start(BOOKING, payload)
        for role in finishing:
            await coordinator.wait(sagas[role], timeout=20)
        # Starts after the others, so "newest first" has a clear order.
        sagas["compensating"] = await coordinator.start(
            BOOKING, {"refuse": "confirm", "sleep": {"confirm": 1.5}}
        )

        # ``confirm`` sleeps before refusing: stop gamification meanwhile, so the
        # compensation of ``award`` (``revoke``) waits for a participant that is gone.
        await _until(
            "compensating saga at confirm", lambda: _at(db, sagas["compensating"], "running", 3)
        )
        await running.stop("participant-gamification")
        await _until(
            "compensating saga waiting on revoke",
            lambda: _at(db, sagas["compensating"], "compensating", 2, 1),
        )

        await asyncio.sleep(0.05)
        sagas["running"] = await _stuck_at_award(env, coordinator)
    await _backdate(db, [sagas[role] for role in BACKDATED])
    return sagas


async def _stuck_at_award(env: SagaEnvironment, coordinator: Coordinator) -> uuid.UUID:
    """A SHORT saga waiting on ``award`` (nobody serves gamification); the worker's
    timeout job times attempt 1 out and sends attempt 2, which waits too."""
    db = env.database
    saga_id = await coordinator.start(SHORT, {"n": 4})
    await _until("running saga at award", lambda: _at(db, saga_id, "running", 2, 1))
    await asyncio.sleep(0.5)  # past award's 0.4 s deadline
    worker = Worker(
        settings=env.settings,
        database=db,
        journeys=[],
        jobs=[STEP_TIMEOUTS],
        bootstrap_servers=env.bootstrap,
    )
    try:
        await worker.run_job(STEP_TIMEOUTS.name)
    finally:
        await worker.close()
    assert await _at(db, saga_id, "running", 2, 2)
    return saga_id


async def _backdate(database: Database, saga_ids: list[uuid.UUID]) -> None:
    # For the time-window tests only: a saga cannot be started in the past, so these two
    # are moved three days back by hand. Only saga_instance.started_at changes; the step
    # log is append-only (its trigger refuses UPDATE) and keeps today's times, which is
    # also what tells the two windows of `saga stats` apart.
    await database.run_driver(
        lambda conn: conn.execute(
            "UPDATE shared.saga_instance SET started_at = started_at - interval '3 days' "
            "WHERE id = ANY($1::uuid[])",
            saga_ids,
        )
    )


async def _open(
    settings: Settings, admin_url: str, template: str, bootstrap: str, name: str
) -> Scene:
    env = await open_saga_environment(settings, admin_url, template, bootstrap, name)
    try:
        return Scene(env, await build(env))
    finally:
        # The scene's tests run in loops of their own: nothing may stay bound to this one.
        await env.database.dispose()


@pytest.fixture(scope="module")
def operator_scene(
    settings: Settings,
    admin_database_url: str,
    template_database_name: str,
    kafka_bootstrap_servers: str,
) -> Iterator[Scene]:
    """The scene, built once for the module that imports this fixture (the same set-up
    as ``saga_env``, which is per test)."""
    name = f"austa_test_scene_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        yield asyncio.run(
            _open(
                settings, admin_database_url, template_database_name, kafka_bootstrap_servers, name
            )
        )
    finally:
        asyncio.run(admin.drop_database(admin_database_url, name))
