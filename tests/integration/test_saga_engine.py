"""The engine end to end: coordinator and participants over the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from saga.coordinator import Coordinator
from saga.definition import SagaDefinition, Step
from saga.errors import DefinitionConflict, SagaFailed
from saga.machine import SagaStatus
from saga.store import IsolationLevel
from saga.testing import run_saga
from saga.transport import OutgoingMessage, Producer
from tests.integration.conftest import SagaEnvironment
from tests.integration.sagas import (
    ALL_DONE,
    BOOKING,
    cluster,
    create_effect_tables,
    effects,
    executions,
    step_log,
)

pytestmark = pytest.mark.integration

STEPS = [step.name for step in BOOKING.steps]


async def run_one(
    coordinator: Coordinator, payload: dict[str, Any], *, within: float = 30
) -> tuple[uuid.UUID, SagaStatus, str | None, dict[str, Any]]:
    saga_id = await coordinator.start(BOOKING, payload)
    summary = await coordinator.wait(saga_id, timeout=within)
    return saga_id, summary.status, summary.error, dict(summary.context)


async def test_run_saga_raises_when_the_saga_does_not_complete(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running:
        done = await run_saga(running.coordinators[0], BOOKING, {"n": 1})
        assert done.status is SagaStatus.COMPLETED
        with pytest.raises(SagaFailed, match="compensated: step 'award' failed") as caught:
            await run_saga(running.coordinators[0], BOOKING, {"refuse": "award"})
    assert caught.value.status == "compensated"


async def test_a_saga_completes_and_merges_each_result_into_the_context(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running:
        saga_id, status, error, context = await run_one(running.coordinators[0], {"n": 1})

    assert (status, error) == (SagaStatus.COMPLETED, None)
    assert {"reserve_id", "authorize_id", "award_id", "confirm_id"} <= context.keys()
    assert context["last"] == "confirm"  # a later step's result overrides an earlier key
    assert await effects(env.database, saga_id) == ["authorize", "award", "confirm", "reserve"]
    log = [
        (r["step_name"], r["action"], r["status"]) for r in await step_log(env.database, saga_id)
    ]
    expected: list[tuple[str, str, str]] = []
    for name in STEPS:
        expected += [(name, "execute", "dispatched"), (name, "execute", "succeeded")]
    assert log == expected


@pytest.mark.parametrize("failing", STEPS)
async def test_a_refusal_at_each_step_compensates_exactly_the_completed_steps_in_reverse(
    saga_env: SagaEnvironment, failing: str
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running:
        saga_id, status, error, _ = await run_one(running.coordinators[0], {"refuse": failing})

    assert status is SagaStatus.COMPENSATED
    assert error is not None
    assert "refused by the test" in error
    assert await effects(env.database, saga_id) == []
    done = STEPS[: STEPS.index(failing)]
    compensated = [
        r["step_name"]
        for r in await step_log(env.database, saga_id)
        if r["action"] == "compensate" and r["status"] == "succeeded"
    ]
    assert compensated == list(reversed(done))
    # The refused step's own write was rolled back; each earlier one done once, undone once.
    assert await executions(env.database, saga_id) == (
        [(name, "do") for name in done] + [(name, "undo") for name in reversed(done)]
    )


async def test_an_erring_step_is_retried_then_succeeds(saga_env: SagaEnvironment) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running:
        saga_id, status, _, _ = await run_one(running.coordinators[0], {"error": {"authorize": 2}})

    assert status is SagaStatus.COMPLETED
    attempts = [
        (r["attempt"], r["status"])
        for r in await step_log(env.database, saga_id)
        if r["step_name"] == "authorize"
    ]
    assert attempts == [
        (1, "dispatched"),
        (1, "retried"),
        (2, "dispatched"),
        (2, "retried"),
        (3, "dispatched"),
        (3, "succeeded"),
    ]
    assert await executions(env.database, saga_id) == ALL_DONE


async def test_a_step_out_of_attempts_is_compensated_itself_since_its_outcome_is_unknown(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running:
        saga_id, status, error, _ = await run_one(running.coordinators[0], {"error": {"award": 9}})

    assert status is SagaStatus.COMPENSATED
    assert error is not None
    assert "out of attempts (3)" in error
    compensations = [
        (r["step_name"], r["status"])
        for r in await step_log(env.database, saga_id)
        if r["action"] == "compensate" and r["status"] != "dispatched"
    ]
    assert compensations == [
        ("award", "succeeded"),
        ("authorize", "succeeded"),
        ("reserve", "succeeded"),
    ]
    # award never committed, so its compensation had nothing to undo and did not run.
    assert ("award", "undo") not in await executions(env.database, saga_id)
    assert await effects(env.database, saga_id) == []


async def test_a_compensation_failing_past_its_limit_parks_the_saga_with_the_reason(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running:
        saga_id, status, error, _ = await run_one(
            running.coordinators[0], {"refuse": "award", "error": {"void": 99}}
        )

    assert status is SagaStatus.PARKED
    assert error is not None
    assert "compensation of step 'authorize' failed after 3 attempts" in error
    # Parked before reaching reserve: its effect waits for an operator.
    assert await effects(env.database, saga_id) == ["authorize", "reserve"]


class Duplicating(Producer):
    """Delivers every message twice: the broker may, so the engine must cope."""

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        results = await super().send_many([m for m in messages for _ in (1, 2)])
        return results[::2]

    async def send(self, message: OutgoingMessage) -> None:
        await super().send(message)
        await super().send(message)


# The same saga with its money step at Serializable, where the participant looks for a
# stored reply before its transaction rather than inside it.
SERIALIZABLE_BOOKING = dataclasses.replace(
    BOOKING,
    name="test_booking_serializable",
    positions=tuple(
        dataclasses.replace(step, isolation=IsolationLevel.SERIALIZABLE)
        if step.name == "authorize"
        else step
        for step in BOOKING.steps
    ),
)


@pytest.mark.parametrize("definition", [BOOKING, SERIALIZABLE_BOOKING], ids=lambda d: d.name)
async def test_every_message_delivered_twice_still_applies_each_effect_once(
    saga_env: SagaEnvironment, definition: SagaDefinition
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running:
        for runtime in [
            running.coordinators[0].runtime,
            *(p.runtime for p in running.participants.values()),
        ]:
            runtime.producer.__class__ = Duplicating
        coordinator = running.coordinators[0]
        ok = [await coordinator.start(definition, {"n": n}) for n in range(5)]
        failed = [await coordinator.start(definition, {"refuse": "confirm"}) for _ in range(5)]
        results = await asyncio.gather(*(coordinator.wait(s, timeout=30) for s in ok + failed))

    assert [r.status for r in results] == [SagaStatus.COMPLETED] * 5 + [SagaStatus.COMPENSATED] * 5
    for saga_id in ok:
        assert await executions(env.database, saga_id) == ALL_DONE
    for saga_id in failed:
        assert await effects(env.database, saga_id) == []
        assert sorted(await executions(env.database, saga_id)) == sorted(
            [(a, k) for a in ("reserve", "authorize", "award") for k in ("do", "undo")]
        )
    ignored = [r for s in ok for r in await step_log(env.database, s) if r["status"] == "ignored"]
    assert ignored, "the second copy of each reply is logged as ignored"


async def test_a_repeated_idempotency_key_returns_the_first_saga(saga_env: SagaEnvironment) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running:
        coordinator = running.coordinators[0]
        first, second = await asyncio.gather(
            coordinator.start(BOOKING, {"n": 1}, idempotency_key="request-42"),
            coordinator.start(BOOKING, {"n": 1}, idempotency_key="request-42"),
        )
        assert first == second
        assert (await coordinator.wait(first)).status is SagaStatus.COMPLETED
        assert await coordinator.start(BOOKING, {}, idempotency_key="request-42") == first
    assert await executions(env.database, first) == ALL_DONE


async def test_a_participant_down_mid_saga_lets_it_finish_when_it_comes_back(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(
        env.settings, env.database, env.bootstrap, journeys=("care", "gamification")
    ) as running:
        coordinator = running.coordinators[0]
        saga_id = await coordinator.start(BOOKING, {"n": 1})
        for _ in range(200):  # reserve done, authorize waiting for the plan service
            if any(r["step_name"] == "authorize" for r in await step_log(env.database, saga_id)):
                break
            await asyncio.sleep(0.05)
        assert (await coordinator.status(saga_id)).status is SagaStatus.RUNNING
        running.start_participant("plan")
        summary = await coordinator.wait(saga_id, timeout=30)
    assert summary.status is SagaStatus.COMPLETED


async def test_a_participant_stopped_and_restarted_keeps_its_place(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running:
        coordinator = running.coordinators[0]
        first = await coordinator.start(BOOKING, {"n": 1})
        assert (await coordinator.wait(first)).status is SagaStatus.COMPLETED
        await running.stop("participant-plan")
        waiting = [await coordinator.start(BOOKING, {"n": n}) for n in range(3)]
        await asyncio.sleep(0.5)
        running.start_participant("plan")
        results = [await coordinator.wait(s, timeout=30) for s in waiting]
    assert {r.status for r in results} == {SagaStatus.COMPLETED}
    # Its consumer group resumed after what it had committed: nothing ran twice.
    assert await executions(env.database, first) == ALL_DONE


async def test_a_changed_definition_under_the_same_version_is_refused(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    async with Coordinator(
        settings=env.settings, database=env.database, bootstrap_servers=env.bootstrap
    ) as coordinator:
        await coordinator.register(BOOKING)
        await coordinator.register(BOOKING)  # the same content again is fine
        changed = SagaDefinition(
            BOOKING.name,
            BOOKING.version,
            [*BOOKING.steps[:-1], Step(**{**_fields(BOOKING.steps[-1]), "timeout": 9.0})],
        )
        with pytest.raises(DefinitionConflict, match=r"test_booking.*version 1.*new version"):
            await coordinator.register(changed)
        newer = SagaDefinition(BOOKING.name, 2, changed.steps)
        await coordinator.register(newer)
        assert (await coordinator.definition(BOOKING.name, 1)).steps[-1].timeout == 5.0
        assert (await coordinator.definition(BOOKING.name, 2)).steps[-1].timeout == 9.0


def _fields(step: Step) -> dict[str, Any]:
    return {name: getattr(step, name) for name in Step.__dataclass_fields__}
