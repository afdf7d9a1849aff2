"""What operators see and do with parallel groups and waits, on sagas that really ran:
``saga show``, ``saga ls``, ``saga stats``, the SQL views, and ``retry``, ``compensate``,
``skip`` and ``abort`` at a wait and at a group (docs/operating.md says how each acts)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY

from saga.definition import SagaDefinition
from saga.errors import SignalRefused
from saga.machine import SagaStatus
from saga.operator.decisions import Action
from saga.operator.waiting_monitor import WaitingMonitor
from saga.shapes import AwaitEvent, Parallel
from tests.conftest import REPO_ROOT
from tests.integration.conftest import SagaEnvironment
from tests.integration.sagas import (
    BOOKING,
    cluster,
    create_effect_tables,
    effects,
    starter,
    wait_until,
)
from tests.integration.test_operator_actions import manual_rows, operator, request

pytestmark = pytest.mark.integration

RESERVE, AUTHORIZE, AWARD, CONFIRM = BOOKING.steps
REVIEW = "claim_reviewed"
SECOND = "second_opinion"


def two_waits(name: str, *, timeout: float = 60.0) -> SagaDefinition:
    """reserve, wait for the review, wait for a second opinion, confirm."""
    return SagaDefinition(
        name,
        1,
        [
            RESERVE,
            AwaitEvent("review", REVIEW, timeout),
            AwaitEvent("second", SECOND, 60.0),
            CONFIRM,
        ],
    )


def grouped(name: str) -> SagaDefinition:
    return SagaDefinition(name, 1, [RESERVE, Parallel("hold", [AUTHORIZE, AWARD]), CONFIRM])


async def saga_cli(env: SagaEnvironment, *argv: str) -> subprocess.CompletedProcess[str]:
    """``saga *argv`` as its own process against the test's database and broker."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "saga", *argv],
        cwd=REPO_ROOT,
        env={**env.process_environment(), "SAGA_ACTOR": "carol", "LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def cli_json(env: SagaEnvironment, *argv: str) -> Any:
    done = await saga_cli(env, *argv, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def view(env: SagaEnvironment, sql: str, *args: Any) -> list[dict[str, Any]]:
    rows = await env.database.run_driver(lambda conn: conn.fetch(sql, *args))
    return [dict(row) for row in rows]


async def listed(env: SagaEnvironment, *filters: str) -> list[str]:
    found = await cli_json(env, "ls", *filters)
    return [saga["id"] for saga in found["sagas"]]


WAIT_TIMEOUT = 5.0
"""Long enough to read the views before the wait is overdue; the test then waits it out."""

STUCK = "SELECT saga_id, overdue, waiting_for FROM shared.saga_stuck WHERE saga_id = $1"


def signal_count(definition: str, event: str, outcome: str) -> float:
    labels = {"definition": definition, "event": event, "outcome": outcome}
    return REGISTRY.get_sample_value("saga_signals_total", labels) or 0.0


async def until_listed(env: SagaEnvironment, sql: str, saga_id: uuid.UUID) -> None:
    for _ in range(300):
        if await view(env, sql, saga_id):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"saga {saga_id} never listed by {sql}")


async def test_a_waiting_saga_is_shown_listed_counted_and_stuck_only_once_overdue(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition = two_waits("ops_waiting", timeout=WAIT_TIMEOUT)
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running:
        coordinator = running.coordinators[0]
        saga_id = await coordinator.start(definition, {})
        await wait_until(env.database, saga_id, "i.status = 'waiting'")
        # For the wait after this one: kept until the saga gets there.
        kept_before = signal_count(definition.name, SECOND, "kept")
        refused_before = signal_count(definition.name, "other", "refused")
        await coordinator.signal(saga_id, SECOND, {"ok": 1}, signal_id="second-1", actor="dr.bo")
        with pytest.raises(SignalRefused):
            await coordinator.signal(saga_id, "no_such_event", {}, signal_id="typo-1")
        assert signal_count(definition.name, SECOND, "kept") == kept_before + 1
        # An event the definition never waits for is not a label of its own.
        assert signal_count(definition.name, "other", "refused") == refused_before + 1
        counted = await WaitingMonitor(env.database).sample()
        assert counted[definition.name] == (1, 0)
        assert REGISTRY.get_sample_value("saga_waiting", {"definition": definition.name}) == 1
        me = str(saga_id)
        # Within its wait's timeout, a waiting saga is not stuck.
        assert await view(env, STUCK, saga_id) == []
        [waits] = await view(
            env,
            "SELECT event, overdue, kept_signals FROM shared.saga_waiting WHERE saga_id = $1",
            saga_id,
        )
        assert waits == {"event": REVIEW, "overdue": False, "kept_signals": 1}

        shown = await cli_json(env, "show", me)
        waiting = shown["waiting"]
        assert (shown["status"], waiting["event"], waiting["wait"]) == ("waiting", REVIEW, "review")
        assert waiting["since"] is not None
        assert waiting["until"] is not None
        assert shown["position_kind"] == "await_event"
        assert [(s["event"], s["state"], s["actor"]) for s in shown["signals"]] == [
            (SECOND, "kept", "dr.bo")
        ]
        text = await saga_cli(env, "show", me)
        assert text.returncode == 0, text.stderr
        assert f"waits for  {REVIEW}" in text.stdout
        assert "wait 1 review" in text.stdout
        assert "second-1" in text.stdout
        assert "kept" in text.stdout

        assert me in await listed(env, "--status", "waiting")
        assert me in await listed(env, "--waiting-for", REVIEW)
        assert me not in await listed(env, "--waiting-for", SECOND)
        bad = await saga_cli(env, "ls", "--waiting-for", "a,,b")
        assert bad.returncode == 2
        assert "--waiting-for: empty name" in bad.stderr

        stats = await cli_json(env, "stats", "--definition", definition.name)
        assert [(s["status"], s["sagas"]) for s in stats["sagas"]] == [("waiting", 1)]
        assert [(s["event"], s["received"], s["kept"]) for s in stats["signals"]] == [
            (SECOND, 1, 1)
        ]
        [now] = stats["waiting_now"]
        assert (now["event"], now["waiting"]) == (REVIEW, 1)

        # No timeout worker runs here: past its deadline the wait is overdue, and stuck.
        await until_listed(env, STUCK, saga_id)
        assert await view(env, STUCK, saga_id) == [
            {"saga_id": saga_id, "overdue": True, "waiting_for": REVIEW}
        ]

        # skip: on as if the review had come with this result; the next wait then
        # consumes the signal kept for it.
        done = await saga_cli(
            env,
            "skip",
            me,
            "--step",
            "review",
            "--result",
            '{"approved": true}',
            "--reason",
            "reviewed on paper",
        )
        assert done.returncode == 0, done.stderr
        summary = await coordinator.wait(saga_id, timeout=30)

    assert summary.status is SagaStatus.COMPLETED
    assert summary.context["review"] == {"approved": True}
    assert summary.context["second"] == {"ok": 1}
    assert await effects(env.database, saga_id) == ["confirm", "reserve"]
    rows = await manual_rows(env.database, saga_id)
    assert rows[0][:5] == ("review", "execute", "skipped", 1, "carol")
    assert rows[0][6] == {"approved": True}
    # The skip's write entered the next wait and applied the signal kept for it.
    second = [row for row in rows if row[0] == "second" and row[2] == "succeeded"]
    assert [row[4] for row in second] == ["dr.bo"]
    signals = await view(
        env, "SELECT signal_id FROM shared.saga_signal WHERE saga_instance_id = $1", saga_id
    )
    assert signals == [{"signal_id": "second-1"}]  # the skip stored no signal


async def test_compensate_retry_and_abort_at_a_wait(saga_env: SagaEnvironment) -> None:
    env = saga_env
    definition = two_waits("ops_wait_actions")
    await create_effect_tables(env.database)
    async with (
        cluster(env.settings, env.database, env.bootstrap) as running,
        operator(env) as actions,
    ):
        coordinator = running.coordinators[0]
        undone = await coordinator.start(definition, {"n": 1})
        stopped = await coordinator.start(definition, {"n": 2})
        for saga_id in (undone, stopped):
            await wait_until(env.database, saga_id, "i.status = 'waiting'")

        retried = await actions.apply(undone, request(Action.RETRY))
        assert retried.refused is not None
        assert "waits at 'review' for 'claim_reviewed'" in retried.refused
        wrong = await actions.apply(undone, request(Action.SKIP, step="second"))
        assert wrong.refused is not None
        assert "not 'second'" in wrong.refused

        compensated = await actions.apply(undone, request(Action.COMPENSATE))
        assert compensated.applied
        assert compensated.command == "release #1"
        summary = await coordinator.wait(undone, timeout=30)

        aborted = await actions.apply(stopped, request(Action.ABORT))
        assert aborted.status is SagaStatus.ABORTED
        late = await saga_cli(
            env, "signal", str(stopped), REVIEW, "--data", "{}", "--actor", "dr.ana"
        )

    assert summary.status is SagaStatus.COMPENSATED
    assert await effects(env.database, undone) == []
    rows = await manual_rows(env.database, undone)
    assert rows[0][:5] == ("review", "execute", "aborted", 1, "alice")
    assert rows[0][5] == "compensation requested by alice: plan service fixed"
    assert await effects(env.database, stopped) == ["reserve"]
    assert late.returncode == 1
    assert "already aborted" in late.stderr


async def test_a_group_is_drawn_side_by_side_and_timed_per_branch(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running:
        coordinator = running.coordinators[0]
        saga_id = await coordinator.start(grouped("ops_group_drawn"), {"refuse": "award"})
        summary = await coordinator.wait(saga_id, timeout=30)

    assert summary.status is SagaStatus.COMPENSATED
    text = await saga_cli(env, "show", str(saga_id))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert any("group at step 1, execute: 2 branches" in line for line in lines)
    assert any("group at step 1, compensate: 1 branch" in line for line in lines)
    # Both branches' titles on one line: the columns stand side by side.
    heads = [line for line in lines if "[0] authorize (plan)" in line]
    assert heads
    assert all("[1] award (gamification)" in line for line in heads[:1])
    shown = await cli_json(env, "show", str(saga_id))
    branches = {(e["step_name"], e["branch"]) for e in shown["timeline"] if e["step_index"] == 1}
    assert branches == {("authorize", 0), ("award", 1)}

    durations = await view(
        env,
        "SELECT step_name, branch, action, answers FROM shared.saga_step_durations "
        "WHERE definition_name = 'ops_group_drawn' AND branch IS NOT NULL "
        "ORDER BY branch, action DESC",
    )
    assert [(d["step_name"], d["branch"], d["action"]) for d in durations] == [
        ("authorize", 0, "execute"),
        ("authorize", 0, "compensate"),
        ("award", 1, "execute"),
    ]
    failures = await view(
        env,
        "SELECT step_name, branch, status FROM shared.saga_failures "
        "WHERE saga_id = $1 AND source = 'step'",
        saga_id,
    )
    assert failures == [{"step_name": "award", "branch": 1, "status": "failed"}]


async def test_at_a_group_only_abort_acts(saga_env: SagaEnvironment) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with (
        # Nobody serves gamification: the group waits on award.
        cluster(env.settings, env.database, env.bootstrap, journeys=("care", "plan")),
        starter(env) as coordinator,
        operator(env) as actions,
    ):
        saga_id = await coordinator.start(grouped("ops_group_actions"), {})
        await wait_until(
            env.database,
            saga_id,
            "i.current_step = 1 AND EXISTS (SELECT 1 FROM shared.saga_step_log l "
            "WHERE l.saga_instance_id = i.id AND l.branch = 0 AND l.status = 'succeeded')",
        )
        refusals = [
            await actions.apply(saga_id, request(action, step="hold"))
            for action in (Action.RETRY, Action.COMPENSATE, Action.SKIP)
        ]
        aborted = await actions.apply(saga_id, request(Action.ABORT))

    for refused in refusals:
        assert refused.refused is not None
        assert not refused.applied
        assert "parallel group 'hold' (branches authorize, award)" in refused.refused
    assert aborted.status is SagaStatus.ABORTED
    state = await view(
        env, "SELECT status FROM shared.saga_instance WHERE id = $1", uuid.UUID(str(saga_id))
    )
    assert state == [{"status": "aborted"}]


async def test_retry_resumes_a_group_parked_in_its_compensation(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with (
        cluster(env.settings, env.database, env.bootstrap) as running,
        operator(env) as actions,
    ):
        coordinator = running.coordinators[0]
        # award refuses; authorize's compensation (void) breaks on its 3 attempts.
        payload = {"refuse": "award", "error": {"void": 3}}
        saga_id = await coordinator.start(grouped("ops_group_parked"), payload)
        parked = await coordinator.wait(saga_id, timeout=30)
        assert parked.status is SagaStatus.PARKED
        assert await effects(env.database, saga_id) == ["authorize", "reserve"]
        skipped = await actions.apply(saga_id, request(Action.SKIP, step="hold"))
        retried = await actions.apply(saga_id, request(Action.RETRY))
        summary = await coordinator.wait(saga_id, timeout=30)

    assert skipped.refused is not None
    assert "only to resume its compensation" in skipped.refused
    assert retried.applied
    assert retried.command == "void #4"
    assert summary.status is SagaStatus.COMPENSATED
    assert await effects(env.database, saga_id) == []
    rows = await manual_rows(env.database, saga_id)
    assert rows[0][:5] == ("authorize", "compensate", "retried", 3, "alice")
