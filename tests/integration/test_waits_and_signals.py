"""Waits and signals end to end: the coordinator, real participants, the broker,
PostgreSQL, the timeout worker and the ``saga signal`` command. The test saga reserves
(care), waits for ``claim_reviewed``, then confirms (care)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from saga.cli import main
from saga.coordinator import Coordinator, SignalOutcome
from saga.definition import SagaDefinition
from saga.errors import SignalConflict, SignalRefused
from saga.machine import SagaStatus
from saga.shapes import AwaitEvent, OnTimeout
from saga.worker.jobs.timeouts import STEP_TIMEOUTS
from tests.integration.conftest import SagaEnvironment
from tests.integration.sagas import BOOKING, cluster, create_effect_tables, effects, wait_until
from tests.integration.test_worker_timeouts import running, worker_for

pytestmark = pytest.mark.integration

RESERVE, _, _, CONFIRM = BOOKING.steps
EVENT = "claim_reviewed"


def reviewed(
    name: str, *, timeout: float = 60.0, on_timeout: OnTimeout = OnTimeout.COMPENSATE
) -> SagaDefinition:
    wait = AwaitEvent("review", EVENT, timeout, on_timeout=on_timeout)
    return SagaDefinition(name, 1, [RESERVE, wait, CONFIRM])


async def wait_rows(env: SagaEnvironment, saga_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await env.database.run_driver(
        lambda conn: conn.fetch(
            """
            SELECT step_name, journey, status, response, error, actor
            FROM shared.saga_step_log WHERE saga_instance_id = $1 AND step_index = 1
            ORDER BY created_at, started_at
            """,
            saga_id,
        )
    )
    return [dict(row) for row in rows]


async def signals(env: SagaEnvironment, saga_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await env.database.run_driver(
        lambda conn: conn.fetch(
            """
            SELECT signal_id, event, payload, actor, reason, consumed_at IS NOT NULL AS consumed,
                   consumed_by_transition
            FROM shared.saga_signal WHERE saga_instance_id = $1 ORDER BY received_at
            """,
            saga_id,
        )
    )
    return [dict(row) for row in rows]


async def test_a_waiting_saga_moves_on_with_the_signal_and_its_payload(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running_cluster:
        coordinator = running_cluster.coordinators[0]
        saga_id = await coordinator.start(reviewed("wait_signalled"), {})
        await wait_until(env.database, saga_id, "i.status = 'waiting'")
        assert (await coordinator.status(saga_id)).status is SagaStatus.WAITING
        receipt = await coordinator.signal(
            saga_id,
            EVENT,
            {"approved": True},
            signal_id="review-1",
            actor="dr.ana",
            reason="claim looks right",
        )
        summary = await coordinator.wait(saga_id, timeout=30)

    assert (receipt.outcome, receipt.repeated) == (SignalOutcome.ACCEPTED, False)
    assert summary.status is SagaStatus.COMPLETED
    assert summary.context["review"] == {"approved": True}
    assert await effects(env.database, saga_id) == ["confirm", "reserve"]
    rows = await wait_rows(env, saga_id)
    assert [(r["step_name"], r["journey"], r["status"], r["actor"]) for r in rows] == [
        ("review", "saga", "waiting", None),
        ("review", "saga", "succeeded", "dr.ana"),
    ]
    [stored] = await signals(env, saga_id)
    assert (stored["signal_id"], stored["actor"], stored["reason"], stored["consumed"]) == (
        "review-1",
        "dr.ana",
        "claim looks right",
        True,
    )


async def test_a_signal_before_the_wait_is_kept_and_consumed_when_the_saga_gets_there(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running_cluster:
        coordinator = running_cluster.coordinators[0]
        # reserve takes a second: the signal comes while the saga is still running it.
        saga_id = await coordinator.start(reviewed("wait_signal_early"), {"sleep": {"reserve": 1}})
        receipt = await coordinator.signal(
            saga_id, EVENT, {"approved": "early"}, signal_id="early-1", actor="bot"
        )
        assert receipt.outcome is SignalOutcome.KEPT
        assert [s["consumed"] for s in await signals(env, saga_id)] == [False]
        summary = await coordinator.wait(saga_id, timeout=30)

    assert summary.status is SagaStatus.COMPLETED
    assert summary.context["review"] == {"approved": "early"}
    [stored] = await signals(env, saga_id)
    assert stored["consumed"]
    rows = await wait_rows(env, saga_id)
    # The transition that entered the wait consumed the kept signal: one write.
    assert [(r["status"], r["actor"]) for r in rows] == [("waiting", None), ("succeeded", "bot")]


async def test_a_signal_sent_twice_is_applied_once_and_a_reused_id_is_refused(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running_cluster:
        coordinator = running_cluster.coordinators[0]
        saga_id = await coordinator.start(reviewed("wait_signal_twice"), {})
        await wait_until(env.database, saga_id, "i.status = 'waiting'")
        first = await coordinator.signal(saga_id, EVENT, {"ok": 1}, signal_id="twice")
        again = await coordinator.signal(saga_id, EVENT, {"ok": 1}, signal_id="twice")
        with pytest.raises(SignalConflict, match="'twice' was sent before"):
            await coordinator.signal(saga_id, EVENT, {"ok": 2}, signal_id="twice")
        summary = await coordinator.wait(saga_id, timeout=30)
        # After the end, the same id still repeats its first outcome rather than refusing.
        late = await coordinator.signal(saga_id, EVENT, {"ok": 1}, signal_id="twice")

    assert (first.outcome, first.repeated) == (SignalOutcome.ACCEPTED, False)
    assert (again.outcome, again.repeated) == (SignalOutcome.ACCEPTED, True)
    assert (late.outcome, late.repeated) == (SignalOutcome.ACCEPTED, True)
    assert summary.status is SagaStatus.COMPLETED
    assert len(await signals(env, saga_id)) == 1
    received = [r for r in await wait_rows(env, saga_id) if r["status"] == "succeeded"]
    assert len(received) == 1


async def test_signals_for_a_finished_saga_or_an_event_never_awaited_are_refused(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    worker = worker_for(env, STEP_TIMEOUTS, schedule="step_timeouts=0.1")
    async with (
        cluster(env.settings, env.database, env.bootstrap) as running_cluster,
        running(worker),
    ):
        coordinator = running_cluster.coordinators[0]
        saga_id = await coordinator.start(reviewed("wait_times_out", timeout=0.5), {})
        with pytest.raises(SignalRefused, match="never waits for 'payment_received'"):
            await coordinator.signal(saga_id, "payment_received", {}, signal_id="wrong-event")
        summary = await coordinator.wait(saga_id, timeout=30)
        with pytest.raises(SignalRefused, match="the saga is already compensated"):
            await coordinator.signal(saga_id, EVENT, {}, signal_id="too-late")

    assert summary.status is SagaStatus.COMPENSATED
    assert "wait 'review': no 'claim_reviewed' signal within 0.5 s" in (summary.error or "")
    assert await effects(env.database, saga_id) == []
    assert await signals(env, saga_id) == []  # refused signals are not stored
    assert [r["status"] for r in await wait_rows(env, saga_id)] == ["waiting", "timed_out"]


async def test_a_wait_that_continues_on_timeout_completes_without_the_signal(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    worker = worker_for(env, STEP_TIMEOUTS, schedule="step_timeouts=0.1")
    definition = reviewed("wait_continues", timeout=0.5, on_timeout=OnTimeout.CONTINUE)
    async with (
        cluster(env.settings, env.database, env.bootstrap) as running_cluster,
        running(worker),
    ):
        coordinator = running_cluster.coordinators[0]
        saga_id = await coordinator.start(definition, {})
        summary = await coordinator.wait(saga_id, timeout=30)

    assert summary.status is SagaStatus.COMPLETED
    assert "review" not in summary.context
    assert await effects(env.database, saga_id) == ["confirm", "reserve"]


async def test_saga_signal_from_the_command_line_records_its_actor(
    saga_env: SagaEnvironment,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    for name, value in env.process_environment().items():
        monkeypatch.setenv(name, value)
    async with cluster(env.settings, env.database, env.bootstrap) as running_cluster:
        coordinator: Coordinator = running_cluster.coordinators[0]
        saga_id = await coordinator.start(reviewed("wait_cli"), {})
        await wait_until(env.database, saga_id, "i.status = 'waiting'")
        argv = [
            "signal",
            str(saga_id),
            EVENT,
            "--data",
            '{"approved": true}',
            "--actor",
            "nurse.bea",
            "--reason",
            "reviewed by phone",
        ]
        capsys.readouterr()
        refused = await asyncio.to_thread(main, ["signal", str(saga_id), "no_such_event"])
        code = await asyncio.to_thread(main, argv)
        out, err = capsys.readouterr()
        summary = await coordinator.wait(saga_id, timeout=30)

    assert code == 0, err
    assert "signal 'claim_reviewed'" in out
    assert "accepted" in out
    assert refused == 1
    assert "saga: error: signal 'no_such_event'" in err
    assert "never waits for 'no_such_event'" in err
    assert summary.status is SagaStatus.COMPLETED
    assert summary.context["review"] == {"approved": True}
    [stored] = await signals(env, saga_id)
    assert (stored["actor"], stored["reason"]) == ("nurse.bea", "reviewed by phone")
    received = [r for r in await wait_rows(env, saga_id) if r["status"] == "succeeded"]
    assert [r["actor"] for r in received] == ["nurse.bea"]
