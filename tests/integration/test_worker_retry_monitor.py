"""Serialization and deadlock retries travel from the participant to the step log, and the
retry monitor turns them into a per-step gauge and an alert."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, MutableMapping
from typing import Any

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from saga.machine import SagaStatus
from saga.participant import Participant, StepContext
from saga.retry import RetryPolicy
from saga.worker.jobs.retries import RETRY_MONITOR
from saga.worker.scheduler import Worker
from tests.integration.conftest import SagaEnvironment
from tests.integration.sagas import (
    ALL_DONE,
    BOOKING,
    FAST_RELAY,
    SCHEMAS,
    cluster,
    create_effect_tables,
    executions,
    make_compensation,
    make_handler,
    starter,
)

pytestmark = pytest.mark.integration

# What the contended handler raises on its first runs for a saga, in order.
CONFLICTS = ("40001", "40P01", "40001")


def contended_authorize() -> Any:
    """``authorize`` whose transaction loses a serialization conflict, a deadlock and
    another conflict before it commits (as a hot coverage row would make it)."""
    runs: Counter[uuid.UUID] = Counter()
    real = make_handler("authorize")

    async def handler(step: StepContext) -> Mapping[str, Any]:
        runs[step.saga_id] += 1
        if runs[step.saga_id] <= len(CONFLICTS):
            sqlstate = CONFLICTS[runs[step.saga_id] - 1]
            await step.connection.execute(
                f"DO $$ BEGIN RAISE EXCEPTION 'contended' USING ERRCODE = '{sqlstate}'; END $$"
            )
        result: Mapping[str, Any] = await real(step)
        return result

    return handler


async def test_retries_are_logged_per_step_and_alerted_past_the_threshold(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(
        env.settings, env.database, env.bootstrap, journeys=("care", "gamification")
    ) as running:
        plan = Participant(
            "plan",
            schema=SCHEMAS["plan"],
            settings=env.settings,
            database=env.database,
            bootstrap_servers=env.bootstrap,
            retry=RetryPolicy(max_attempts=5, initial_delay=0.001, max_delay=0.01),
            relay=FAST_RELAY,
        )
        plan.register("authorize", contended_authorize())
        plan.register("void", make_compensation("authorize", "void"))
        running._launch("participant-plan", plan.run(), plan.stop)
        async with starter(env) as coordinator:
            saga_ids = [await coordinator.start(BOOKING, {}) for _ in range(2)]
            for saga_id in saga_ids:
                summary = await coordinator.wait(saga_id, timeout=30)
                assert summary.status is SagaStatus.COMPLETED
                assert await executions(env.database, saga_id) == ALL_DONE

    rows = await env.database.run_driver(
        lambda conn: conn.fetch(
            "SELECT step_name, serialization_retries, deadlock_retries "
            "FROM shared.saga_step_log WHERE status = 'succeeded' AND action = 'execute' "
            "AND (serialization_retries > 0 OR deadlock_retries > 0)"
        )
    )
    assert sorted(
        (r["step_name"], r["serialization_retries"], r["deadlock_retries"]) for r in rows
    ) == [
        ("authorize", 2, 1),
        ("authorize", 2, 1),
    ]
    hourly = await env.database.run_driver(
        lambda conn: conn.fetchrow(
            "SELECT sum(serialization_retries) AS s, sum(deadlock_retries) AS d "
            "FROM shared.saga_step_retry_stats WHERE step_name = 'authorize'"
        )
    )
    assert hourly is not None
    assert (hourly["s"], hourly["d"]) == (4, 2)

    async def monitor(threshold: int) -> list[MutableMapping[str, Any]]:
        settings = env.settings.model_copy(update={"retry_alert_threshold": threshold})
        worker = Worker(
            settings=settings,
            database=env.database,
            journeys=[],
            jobs=[RETRY_MONITOR],
            bootstrap_servers=env.bootstrap,
        )
        try:
            with capture_logs() as logs:
                await worker.run_job("retry_monitor")
        finally:
            await worker.close()
        return [e for e in logs if e["event"] == "step_db_retries_high"]

    alerts = await monitor(threshold=6)
    assert len(alerts) == 1
    assert alerts[0]["log_level"] == "error"
    assert (alerts[0]["journey"], alerts[0]["step"]) == ("plan", "authorize")
    assert (alerts[0]["serialization_retries"], alerts[0]["deadlock_retries"]) == (4, 2)
    for kind, value in (("serialization", 4), ("deadlock", 2)):
        labels = {"journey": "plan", "step": "authorize", "kind": kind}
        assert REGISTRY.get_sample_value("saga_step_db_retries_recent", labels) == value
    assert await monitor(threshold=7) == []
