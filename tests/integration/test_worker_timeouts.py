"""The worker's timeout jobs against real participants, coordinators and the broker: a
participant that never answers, one that answers late, a compensation nobody answers, a
saga past its deadline, and two workers sweeping the same sagas at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from saga.definition import SagaDefinition
from saga.machine import Phase, SagaStatus, command_message_id
from saga.retry import RetryPolicy
from saga.settings import Settings
from saga.worker.job import Job
from saga.worker.jobs.timeouts import SAGA_DEADLINES, STEP_TIMEOUTS
from saga.worker.scheduler import Worker
from tests.integration.conftest import SagaEnvironment
from tests.integration.sagas import (
    ALL_DONE,
    BOOKING,
    cluster,
    create_effect_tables,
    effects,
    executions,
    starter,
    step_log,
    wait_until,
)

pytestmark = pytest.mark.integration

TWO_TRIES = RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.02)


def booking(
    name: str,
    *,
    authorize_timeout: float = 0.4,
    saga_timeout: float | None = None,
    attempts: int = 2,
    compensation_attempts: int = 2,
) -> SagaDefinition:
    """BOOKING whose ``authorize`` step gives up quickly: 0.4 s per attempt, two attempts,
    two compensation attempts."""
    steps = list(BOOKING.steps)
    steps[1] = replace(
        steps[1],
        timeout=authorize_timeout,
        retry=replace(TWO_TRIES, max_attempts=attempts),
        compensation_retry=replace(TWO_TRIES, max_attempts=compensation_attempts),
    )
    return SagaDefinition(name, 1, steps, timeout=saga_timeout)


def worker_for(env: SagaEnvironment, *jobs: Job, schedule: str = "") -> Worker:
    settings: Settings = env.settings.model_copy(update={"worker_schedule": schedule})
    return Worker(
        settings=settings,
        database=env.database,
        journeys=[],
        jobs=list(jobs),
        bootstrap_servers=env.bootstrap,
    )


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    task = asyncio.get_running_loop().create_task(worker.run())
    try:
        yield worker
    finally:
        await worker.stop()
        await asyncio.wait_for(task, 15)


async def test_a_step_nobody_answers_is_resent_with_its_id_then_failed_and_compensated(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    # The compensation is retried long enough for the plan service to come back.
    definition = booking("timeout_never_answered", compensation_attempts=50)
    await create_effect_tables(env.database)
    worker = worker_for(env, STEP_TIMEOUTS, schedule="step_timeouts=0.1")
    # No plan participant: authorize is never answered.
    async with (
        cluster(env.settings, env.database, env.bootstrap, journeys=("care", "gamification")) as c,
        starter(env) as coordinator,
        running(worker),
    ):
        saga_id = await coordinator.start(definition, {})
        await wait_until(env.database, saga_id, "i.status = 'compensating'")
        # The plan service comes back: the compensation of the step whose outcome is
        # unknown finds it ran (the queued commands run first) or bars it, and undoes it.
        c.start_participant("plan")
        summary = await coordinator.wait(saga_id, timeout=30)

    assert summary.status is SagaStatus.COMPENSATED
    assert "'authorize' out of attempts (2): no reply within 0.8 s" in (summary.error or "")
    assert await effects(env.database, saga_id) == []
    log = await step_log(env.database, saga_id)
    authorize = [(r["status"], r["attempt"]) for r in log if r["step_name"] == "authorize"]
    assert authorize[:4] == [
        ("dispatched", 1),
        ("timed_out", 1),
        ("dispatched", 2),
        ("failed", 2),
    ]
    ids = await env.database.run_driver(
        lambda conn: conn.fetch(
            "SELECT DISTINCT message_id FROM shared.saga_step_log "
            "WHERE saga_instance_id = $1 AND step_name = 'authorize' AND action = 'execute'",
            saga_id,
        )
    )
    assert [row["message_id"] for row in ids] == [command_message_id(saga_id, 1, Phase.EXECUTE)]


async def test_a_late_answer_settles_the_step_and_the_resent_command_runs_nothing(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition = booking("timeout_late_answer", authorize_timeout=0.5, attempts=4)
    await create_effect_tables(env.database)
    worker = worker_for(env, STEP_TIMEOUTS, schedule="step_timeouts=0.1")
    async with (
        cluster(env.settings, env.database, env.bootstrap),
        starter(env) as coordinator,
        running(worker),
    ):
        # authorize takes 0.8 s: attempt 1 times out at 0.5 s and is sent again (same
        # message id). Attempt 1 commits later; its answer is the command's one answer, so
        # it settles the step as the current attempt's, and the re-sent command is
        # answered from the inbox without running again.
        saga_id = await coordinator.start(definition, {"sleep": {"authorize": 0.8}})
        summary = await coordinator.wait(saga_id, timeout=30)

    assert summary.status is SagaStatus.COMPLETED
    assert await executions(env.database, saga_id) == ALL_DONE  # authorize ran once
    log = await step_log(env.database, saga_id)
    authorize = [(r["status"], r["attempt"]) for r in log if r["step_name"] == "authorize"]
    assert ("timed_out", 1) in authorize
    assert next(attempt for status, attempt in authorize if status == "succeeded") > 1


async def test_a_compensation_nobody_answers_parks_the_saga_with_an_alert_and_a_metric(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition = booking("timeout_parks")
    await create_effect_tables(env.database)
    before = REGISTRY.get_sample_value("saga_parked_total", {"definition": definition.name}) or 0
    worker = worker_for(env, STEP_TIMEOUTS, schedule="step_timeouts=0.1")
    with capture_logs() as logs:
        async with (
            cluster(env.settings, env.database, env.bootstrap, journeys=("care", "gamification")),
            starter(env) as coordinator,
            running(worker),
        ):
            saga_id = await coordinator.start(definition, {})
            summary = await coordinator.wait(saga_id, timeout=30)

    assert summary.status is SagaStatus.PARKED
    assert summary.error is not None
    assert "compensation of step 'authorize' failed after 2 attempts" in summary.error
    assert "no reply within 0.8 s" in summary.error
    # Parked before release ran: the slot stays reserved for the operator to see.
    assert await effects(env.database, saga_id) == ["reserve"]
    alerts = [e for e in logs if e["event"] == "saga_parked"]
    assert len(alerts) == 1
    assert alerts[0]["log_level"] == "error"
    assert alerts[0]["alert"] == "operator_needed"
    assert alerts[0]["saga_id"] == str(saga_id)
    after = REGISTRY.get_sample_value("saga_parked_total", {"definition": definition.name})
    assert after == before + 1
    deadline = await env.database.run_driver(
        lambda conn: conn.fetchval(
            "SELECT step_deadline FROM shared.saga_instance WHERE id = $1", saga_id
        )
    )
    assert deadline is None, "a parked saga is no longer timed"


async def test_a_compensation_that_fails_twice_is_retried_with_backoff_and_succeeds(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with (
        cluster(env.settings, env.database, env.bootstrap),
        starter(env) as coordinator,
    ):
        saga_id = await coordinator.start(
            BOOKING, {"refuse": "award", "error": {"void": 2, "release": 2}}
        )
        summary = await coordinator.wait(saga_id, timeout=30)

    assert summary.status is SagaStatus.COMPENSATED
    assert await effects(env.database, saga_id) == []
    log = await step_log(env.database, saga_id)
    void = [(r["status"], r["attempt"]) for r in log if r["action"] == "compensate"]
    assert ("retried", 1) in void
    assert ("retried", 2) in void
    assert ("succeeded", 3) in void
    # Each retry is dispatched with a backoff delay: in the statement that records the
    # failed attempt (finished now), the next attempt starts at now + delay.
    rows = await env.database.run_driver(
        lambda conn: conn.fetch(
            """
            SELECT f.attempt, extract(epoch FROM d.started_at - f.finished_at) AS delay
            FROM shared.saga_step_log f
            JOIN shared.saga_step_log d ON d.saga_instance_id = f.saga_instance_id
             AND d.step_name = f.step_name AND d.action = f.action
             AND d.status = 'dispatched' AND d.attempt = f.attempt + 1
            WHERE f.saga_instance_id = $1 AND f.action = 'compensate' AND f.status = 'retried'
            """,
            saga_id,
        )
    )
    assert len(rows) == 4  # release and void, two retries each
    assert all(row["delay"] > 0 for row in rows)


async def test_a_saga_past_its_deadline_is_compensated(saga_env: SagaEnvironment) -> None:
    env = saga_env
    # Steps may take 30 s, the saga 1.5 s: only the saga deadline can end it.
    definition = booking("deadline_passes", authorize_timeout=30, saga_timeout=1.5)
    await create_effect_tables(env.database)
    worker = worker_for(env, SAGA_DEADLINES, schedule="saga_deadlines=0.1")
    async with (
        cluster(env.settings, env.database, env.bootstrap),
        starter(env) as coordinator,
        running(worker),
    ):
        saga_id = await coordinator.start(definition, {"sleep": {"authorize": 3.0}})
        summary = await coordinator.wait(saga_id, timeout=30)

    assert summary.status is SagaStatus.COMPENSATED
    assert "saga deadline passed (took longer than 1.5 s)" in (summary.error or "")
    # Whatever had run is undone, the step it was at included (its outcome is unknown).
    assert await effects(env.database, saga_id) == []
    log = await step_log(env.database, saga_id)
    aborted = [r for r in log if r["status"] == "aborted"]
    assert len(aborted) == 1
    assert "saga deadline passed" in aborted[0]["error"]


async def test_two_workers_never_time_out_the_same_saga_twice(saga_env: SagaEnvironment) -> None:
    env = saga_env
    definition = booking("two_workers")
    async with starter(env) as coordinator:
        # No participants: every first step stays unanswered.
        saga_ids = [await coordinator.start(definition, {}) for _ in range(60)]
    await env.database.run_driver(
        lambda conn: conn.execute(
            "UPDATE shared.saga_instance SET step_deadline = now() - interval '1 second'"
        )
    )
    first = worker_for(env, STEP_TIMEOUTS, schedule="step_timeouts=1/7")
    second = worker_for(env, STEP_TIMEOUTS, schedule="step_timeouts=1/7")
    try:
        reports = await asyncio.gather(
            first.run_job("step_timeouts"), second.run_job("step_timeouts")
        )
    finally:
        await first.close()
        await second.close()

    assert sum(r.counts["resent"] for r in reports) == 60
    assert all(r.batches >= 2 for r in reports), "each worker took several batches of 7"
    rows = await env.database.run_driver(
        lambda conn: conn.fetch(
            """
            SELECT i.id, i.step_attempt, i.version,
                   count(*) FILTER (WHERE l.status = 'timed_out') AS timed_out
            FROM shared.saga_instance i JOIN shared.saga_step_log l ON l.saga_instance_id = i.id
            GROUP BY i.id
            """
        )
    )
    assert {row["id"] for row in rows} == set(saga_ids)
    assert all(row["timed_out"] == 1 for row in rows), "no saga was timed out twice"
    assert all(row["step_attempt"] == 2 and row["version"] == 2 for row in rows)


async def test_a_batch_takes_at_most_its_size(saga_env: SagaEnvironment) -> None:
    env = saga_env
    definition = booking("batches")
    async with starter(env) as coordinator:
        for _ in range(5):
            await coordinator.start(definition, {})
    await env.database.run_driver(
        lambda conn: conn.execute(
            "UPDATE shared.saga_instance SET step_deadline = now() - interval '1 second'"
        )
    )
    worker = worker_for(env, STEP_TIMEOUTS, schedule="step_timeouts=1/2")
    settings = worker.settings.model_copy(update={"worker_max_batches_per_run": 2})
    worker.settings = settings
    try:
        report = await worker.run_job("step_timeouts")
        rest = await worker.run_job("step_timeouts")
    finally:
        await worker.close()
    assert (report.batches, report.claimed) == (2, 4)
    assert (rest.batches, rest.claimed) == (1, 1)
