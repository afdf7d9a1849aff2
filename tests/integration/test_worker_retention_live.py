"""Retention in batches beside live traffic: while a worker archives thousands of old
sagas, sagas started at the same time run to the end, and none of them is touched."""

from __future__ import annotations

import asyncio

import pytest

from saga.coordinator import Coordinator
from saga.machine import SagaStatus
from saga.worker.jobs.retention import SAGA_RETENTION
from saga.worker.scheduler import Worker
from tests.integration.conftest import SagaEnvironment
from tests.integration.sagas import (
    ALL_DONE,
    BOOKING,
    FAST_RELAY,
    cluster,
    create_effect_tables,
    executions,
)

pytestmark = pytest.mark.integration

OLD_SAGAS = 3000
LIVE_SAGAS = 30


async def make_old_sagas(env: SagaEnvironment, definition_id: object) -> None:
    """Sagas finished 60 days ago, four step-log rows each."""
    await env.database.run_driver(
        lambda conn: conn.execute(
            """
            WITH old AS (
                INSERT INTO shared.saga_instance
                    (saga_definition_id, definition_name, definition_version, status,
                     started_at, finished_at)
                SELECT $1, $2, $3, 'completed', now() - interval '60 days',
                       now() - interval '60 days'
                FROM generate_series(1, $4)
                RETURNING id
            )
            INSERT INTO shared.saga_step_log
                (saga_instance_id, step_index, step_name, journey, action, status,
                 started_at, finished_at)
            SELECT old.id, s.i, 'step' || s.i, 'care', 'execute', 'succeeded',
                   now() - interval '60 days', now() - interval '60 days'
            FROM old, generate_series(0, 3) AS s(i)
            """,
            definition_id,
            BOOKING.name,
            BOOKING.version,
            OLD_SAGAS,
        )
    )


async def test_retention_archives_in_batches_while_live_sagas_run_through(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    settings = env.settings.model_copy(update={"worker_schedule": "saga_retention=0.05/50"})
    worker = Worker(
        settings=settings,
        database=env.database,
        journeys=[],
        jobs=[SAGA_RETENTION],
        bootstrap_servers=env.bootstrap,
    )
    async with (
        cluster(env.settings, env.database, env.bootstrap),
        Coordinator(
            settings=env.settings,
            database=env.database,
            bootstrap_servers=env.bootstrap,
            relay=FAST_RELAY,
        ) as coordinator,
    ):
        await coordinator.register(BOOKING)
        definition_id = await env.database.run_driver(
            lambda conn: conn.fetchval(
                "SELECT id FROM shared.saga_definition WHERE name = $1", BOOKING.name
            )
        )
        await make_old_sagas(env, definition_id)
        running = asyncio.get_running_loop().create_task(worker.run())
        try:
            live = [await coordinator.start(BOOKING, {}) for _ in range(LIVE_SAGAS)]
            outcomes = [await coordinator.wait(saga_id, timeout=60) for saga_id in live]
            for _ in range(400):
                left = await env.database.run_driver(
                    lambda conn: conn.fetchval(
                        "SELECT count(*) FROM shared.saga_instance "
                        "WHERE finished_at < now() - interval '30 days'"
                    )
                )
                if left == 0:
                    break
                await asyncio.sleep(0.05)
        finally:
            await worker.stop()
            await asyncio.wait_for(running, 30)

    assert all(outcome.status is SagaStatus.COMPLETED for outcome in outcomes)
    for saga_id in live:
        assert await executions(env.database, saga_id) == ALL_DONE
    counts = await env.database.run_driver(
        lambda conn: conn.fetchrow(
            """
            SELECT (SELECT count(*) FROM shared.saga_instance_archive) AS archived,
                   (SELECT count(*) FROM shared.saga_step_log_archive) AS archived_steps,
                   (SELECT count(*) FROM shared.saga_instance) AS live,
                   (SELECT count(*) FROM shared.saga_instance_archive
                     WHERE id = ANY($1::uuid[])) AS live_archived,
                   (SELECT count(DISTINCT archived_at) FROM shared.saga_instance_archive)
                     AS batches,
                   (SELECT min(started_at) FROM shared.saga_instance) AS first_live,
                   (SELECT max(archived_at) FROM shared.saga_instance_archive) AS last_batch
            """,
            live,
        )
    )
    assert counts is not None
    assert counts["archived"] == OLD_SAGAS
    assert counts["archived_steps"] == OLD_SAGAS * 4
    assert counts["live"] == LIVE_SAGAS, "the live sagas, finished just now, stay"
    assert counts["live_archived"] == 0
    assert counts["batches"] == OLD_SAGAS // 50, "one transaction per batch of 50"
    assert counts["first_live"] < counts["last_batch"], "the live sagas ran during retention"
