"""Parallel groups end to end: the coordinator, real participants, the broker, PostgreSQL
and the timeout worker. The test saga reserves (care), then authorizes (plan) and awards
(gamification) at the same time, then confirms (care); its handlers are steered by the
payload (refuse, sleep)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from saga.definition import SagaDefinition, Step
from saga.machine import Phase, SagaStatus, branch_message_id
from saga.shapes import Parallel
from saga.worker.jobs.timeouts import STEP_TIMEOUTS
from tests.integration.conftest import SagaEnvironment
from tests.integration.sagas import (
    BOOKING,
    cluster,
    create_effect_tables,
    effects,
    executions,
    starter,
    wait_until,
)
from tests.integration.test_worker_timeouts import TWO_TRIES, running, worker_for

pytestmark = pytest.mark.integration

RESERVE, AUTHORIZE, AWARD, CONFIRM = BOOKING.steps


def grouped(name: str, *, authorize: Step = AUTHORIZE) -> SagaDefinition:
    return SagaDefinition(name, 1, [RESERVE, Parallel("hold", [authorize, AWARD]), CONFIRM])


async def group_log(env: SagaEnvironment, saga_id: object) -> list[dict[str, Any]]:
    rows = await env.database.run_driver(
        lambda conn: conn.fetch(
            """
            SELECT step_index, step_name, journey, action, status, attempt, branch,
                   message_id, created_at
            FROM shared.saga_step_log WHERE saga_instance_id = $1
            ORDER BY created_at, started_at, branch
            """,
            saga_id,
        )
    )
    return [dict(row) for row in rows]


async def test_every_branch_is_sent_in_one_transition_and_each_result_lands_under_its_name(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition = grouped("group_all_succeed")
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running_cluster:
        coordinator = running_cluster.coordinators[0]
        saga_id = await coordinator.start(definition, {"n": 1})
        summary = await coordinator.wait(saga_id, timeout=30)

    assert (summary.status, summary.error) == (SagaStatus.COMPLETED, None)
    context = dict(summary.context)
    assert context["authorize"]["last"] == "authorize"
    assert context["award"]["last"] == "award"
    assert {"reserve_id", "confirm_id"} <= context.keys()  # plain steps merge flat
    assert "authorize_id" not in context  # a branch's result stays under its name
    assert await effects(env.database, saga_id) == ["authorize", "award", "confirm", "reserve"]

    log = await group_log(env, saga_id)
    sent = [r for r in log if r["step_index"] == 1 and r["status"] == "dispatched"]
    assert [(r["step_name"], r["journey"], r["branch"]) for r in sent] == [
        ("authorize", "plan", 0),
        ("award", "gamification", 1),
    ]
    # One statement wrote both: the same transaction time, after reserve's success.
    assert sent[0]["created_at"] == sent[1]["created_at"]
    reserve_done = next(
        r for r in log if r["step_name"] == "reserve" and r["status"] == "succeeded"
    )
    assert reserve_done["created_at"] == sent[0]["created_at"]
    assert [r["message_id"] for r in sent] == [
        branch_message_id(saga_id, 1, branch, Phase.EXECUTE) for branch in (0, 1)
    ]
    succeeded = sorted(
        (r["step_name"], r["branch"])
        for r in log
        if r["step_index"] == 1 and r["status"] == "succeeded"
    )
    assert succeeded == [("authorize", 0), ("award", 1)]
    shape = await env.database.run_driver(
        lambda conn: conn.fetchval(
            "SELECT shape_state FROM shared.saga_instance WHERE id = $1", saga_id
        )
    )
    assert shape is None  # past the group, nothing of it stays on the instance


async def test_a_refused_branch_awaits_the_one_in_flight_and_compensates_its_late_success(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition = grouped("group_branch_refused")
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running_cluster:
        coordinator = running_cluster.coordinators[0]
        # award refuses at once; authorize is still running for a second.
        saga_id = await coordinator.start(
            definition, {"refuse": "award", "sleep": {"authorize": 1.5}}
        )
        await wait_until(
            env.database,
            saga_id,
            "i.status = 'running' AND i.error LIKE '%award%' AND i.shape_state IS NOT NULL",
        )
        summary = await coordinator.wait(saga_id, timeout=30)

    assert summary.status is SagaStatus.COMPENSATED
    assert "branch 'award' of group 'hold' failed: award refused by the test" in (
        summary.error or ""
    )
    assert await effects(env.database, saga_id) == []
    # authorize finished after the refusal and was undone; then reserve; confirm never ran.
    assert await executions(env.database, saga_id) == [
        ("reserve", "do"),
        ("authorize", "do"),
        ("authorize", "undo"),
        ("reserve", "undo"),
    ]
    log = await group_log(env, saga_id)
    assert not [r for r in log if r["step_name"] == "confirm"]
    undone = [
        (r["step_name"], r["branch"])
        for r in log
        if r["action"] == "compensate" and r["status"] == "succeeded"
    ]
    assert undone == [("authorize", 0), ("reserve", None)]
    # The refused branch committed nothing: it is not compensated.
    assert not [r for r in log if r["step_name"] == "award" and r["action"] == "compensate"]


async def test_a_branch_out_of_attempts_is_compensated_with_the_others_and_its_late_run_is_barred(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    slow = replace(
        AUTHORIZE,
        timeout=0.4,
        retry=TWO_TRIES,
        compensation_retry=replace(TWO_TRIES, max_attempts=50),
    )
    definition = grouped("group_branch_timed_out", authorize=slow)
    await create_effect_tables(env.database)
    worker = worker_for(env, STEP_TIMEOUTS, schedule="step_timeouts=0.1")
    # No plan participant: authorize is never answered until the group compensates.
    async with (
        cluster(env.settings, env.database, env.bootstrap, journeys=("care", "gamification")) as c,
        starter(env) as coordinator,
        running(worker),
    ):
        saga_id = await coordinator.start(definition, {})
        await wait_until(env.database, saga_id, "i.status = 'compensating'")
        c.start_participant("plan")
        summary = await coordinator.wait(saga_id, timeout=30)

    assert summary.status is SagaStatus.COMPENSATED
    assert "branch 'authorize' of group 'hold' out of attempts (2): no reply within 0.8 s" in (
        summary.error or ""
    )
    assert await effects(env.database, saga_id) == []
    log = await group_log(env, saga_id)
    authorize = [
        (r["action"], r["status"], r["attempt"]) for r in log if r["step_name"] == "authorize"
    ]
    assert authorize[:4] == [
        ("execute", "dispatched", 1),
        ("execute", "timed_out", 1),
        ("execute", "dispatched", 2),
        ("execute", "failed", 2),
    ]
    # Both branches' compensations went out in one transition; then reserve's.
    sent = [r for r in log if r["action"] == "compensate" and r["status"] == "dispatched"]
    assert [(r["step_name"], r["branch"]) for r in sent][:2] == [("authorize", 0), ("award", 1)]
    assert sent[0]["created_at"] == sent[1]["created_at"]
    undone = [
        r["step_name"] for r in log if r["action"] == "compensate" and r["status"] == "succeeded"
    ]
    assert sorted(undone[:2]) == ["authorize", "award"]
    assert undone[2:] == ["reserve"]
    # Whether the queued authorize ran first (then it was undone) or the compensation
    # barred it, it is not in effect, and it never ran twice.
    ran = [
        kind for action, kind in await executions(env.database, saga_id) if action == "authorize"
    ]
    assert ran in ([], ["do", "undo"])
