"""Child sagas end to end: a parent's ``SubSaga`` position starts a child saga in the
parent's own transaction, and the child's end comes back to the parent through the
coordinators' reply topic. Real participants, the broker and PostgreSQL.

The parent reserves (care), runs the child (which authorizes on plan and awards on
gamification), then confirms (care). The child's payload is built from the parent's:
``child_refuse`` and ``child_error`` steer the child's handlers as ``refuse`` and
``error`` steer the parent's."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar

import pytest

from saga import SagaSummary
from saga.coordinator.commands import prepare_write
from saga.definition import SagaDefinition
from saga.errors import DefinitionError
from saga.machine import (
    Outcome,
    Phase,
    SagaStatus,
    StartChild,
    Transition,
    child_idempotency_key,
    command_message_id,
)
from saga.messages import Reply, decode
from saga.operator.queries import FamilyLink, saga_family
from saga.shapes import SubSaga
from saga.store import saga_log
from saga.store.outbox import PendingMessage
from saga.store.records import InstanceRow
from saga.transport import OutgoingMessage, Producer, Topics
from saga.worker.jobs.timeouts import SAGA_DEADLINES, STEP_TIMEOUTS
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
from tests.integration.test_worker_timeouts import running, worker_for

pytestmark = pytest.mark.integration

RESERVE, AUTHORIZE, AWARD, CONFIRM = BOOKING.steps

CHILD = SagaDefinition("test_child_credit", 1, [AUTHORIZE, AWARD])
CHILD_PAYLOAD = {
    "refuse": "payload.child_refuse",
    "error": "payload.child_error",
    "sleep": "payload.child_sleep",
}


def parent(name: str, *, timeout: float | None = None, check_every: float = 30.0) -> SagaDefinition:
    sub = SubSaga("credit", CHILD.key, payload=CHILD_PAYLOAD, check_every=check_every)
    return SagaDefinition(name, 1, [RESERVE, sub, CONFIRM], timeout=timeout)


def parent_payload(**overrides: Any) -> dict[str, Any]:
    return {
        "child_refuse": None,
        "child_error": {},
        "child_sleep": {},
        **overrides,
    }


async def children_of(env: SagaEnvironment, parent_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await env.database.run_driver(
        lambda conn: conn.fetch(
            """
            SELECT id, status, parent_id, parent_step, parent_attempt, idempotency_key
            FROM shared.saga_instance WHERE parent_id = $1 ORDER BY started_at
            """,
            parent_id,
        )
    )
    return [dict(row) for row in rows]


async def instance_row(env: SagaEnvironment, saga_id: uuid.UUID) -> dict[str, Any]:
    row = await env.database.run_driver(
        lambda conn: conn.fetchrow(
            "SELECT status, shape_state, step_deadline FROM shared.saga_instance WHERE id = $1",
            saga_id,
        )
    )
    assert row is not None
    return dict(row)


async def test_a_child_that_completes_gives_its_context_and_the_parent_completes(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition = parent("child_completes")
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running_cluster:
        coordinator = running_cluster.coordinators[0]
        await coordinator.register(CHILD)
        saga_id = await coordinator.start(definition, parent_payload())
        summary = await coordinator.wait(saga_id, timeout=30)

    assert (summary.status, summary.error) == (SagaStatus.COMPLETED, None)
    [child] = await children_of(env, saga_id)
    assert (child["status"], child["parent_step"], child["parent_attempt"]) == ("completed", 1, 1)
    assert child["idempotency_key"] == child_idempotency_key(saga_id, 1, 1)
    credit = dict(summary.context)["credit"]
    assert {"authorize_id", "award_id"} <= credit.keys()  # the child's context, under its name
    assert "authorize_id" not in summary.context
    assert await effects(env.database, saga_id) == ["confirm", "reserve"]
    assert await effects(env.database, child["id"]) == ["authorize", "award"]
    assert (await instance_row(env, saga_id))["shape_state"] is None

    # Each names the other, for `saga show`.
    parent_side = await env.database.run_driver(lambda conn: saga_family(conn, saga_id))
    child_side = await env.database.run_driver(lambda conn: saga_family(conn, child["id"]))
    assert parent_side == [
        FamilyLink("child", child["id"], CHILD.name, SagaStatus.COMPLETED, "credit")
    ]
    assert child_side == [
        FamilyLink("parent", saga_id, definition.name, SagaStatus.COMPLETED, "credit")
    ]


async def test_a_child_that_fails_is_compensated_and_the_parent_undoes_what_came_before(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition = parent("child_fails")
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running_cluster:
        coordinator = running_cluster.coordinators[0]
        await coordinator.register(CHILD)
        saga_id = await coordinator.start(definition, parent_payload(child_refuse="award"))
        summary = await coordinator.wait(saga_id, timeout=30)

    assert summary.status is SagaStatus.COMPENSATED
    assert summary.error is not None
    assert "credit" in summary.error
    [child] = await children_of(env, saga_id)
    assert child["status"] == "compensated"
    assert await executions(env.database, child["id"]) == [
        ("authorize", "do"),
        ("authorize", "undo"),
    ]
    assert await executions(env.database, saga_id) == [("reserve", "do"), ("reserve", "undo")]
    assert await effects(env.database, saga_id) == []
    assert await effects(env.database, child["id"]) == []


async def test_a_completed_child_is_undone_in_reverse_when_the_parent_fails_later(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition = parent("child_undone_later")
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running_cluster:
        coordinator = running_cluster.coordinators[0]
        await coordinator.register(CHILD)
        saga_id = await coordinator.start(definition, parent_payload(refuse="confirm"))
        summary = await coordinator.wait(saga_id, timeout=30)

    assert summary.status is SagaStatus.COMPENSATED
    [child] = await children_of(env, saga_id)
    assert child["status"] == "compensated"
    assert await executions(env.database, child["id"]) == [
        ("authorize", "do"),
        ("award", "do"),
        ("award", "undo"),
        ("authorize", "undo"),
    ]
    assert await executions(env.database, saga_id) == [
        ("reserve", "do"),
        ("reserve", "undo"),
    ]
    assert await effects(env.database, child["id"]) == []
    assert await effects(env.database, saga_id) == []


async def test_a_parked_child_leaves_its_parent_running_and_both_are_visible(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition = parent("child_parks")
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running_cluster:
        coordinator = running_cluster.coordinators[0]
        await coordinator.register(CHILD)
        # award refuses, and voiding the authorization breaks on every attempt.
        saga_id = await coordinator.start(
            definition, parent_payload(child_refuse="award", child_error={"void": 99})
        )
        await wait_until(
            env.database,
            saga_id,
            "EXISTS (SELECT 1 FROM shared.saga_instance c "
            "WHERE c.parent_id = i.id AND c.status = 'parked')",
        )
        await asyncio.sleep(0.5)  # the parent must not move on the parked child
        parent_row = await instance_row(env, saga_id)

    [child] = await children_of(env, saga_id)
    assert child["status"] == "parked"
    assert parent_row["status"] == "running"
    assert parent_row["shape_state"]["child_id"] == str(child["id"])
    # Not a timeout (the child has its own deadlines): when the parent looks at its child.
    assert parent_row["step_deadline"] is not None


async def test_a_repeated_start_does_not_start_a_second_child(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition = parent("child_once")
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running_cluster:
        coordinator = running_cluster.coordinators[0]
        await coordinator.register(CHILD)
        saga_id = await coordinator.start(definition, parent_payload())
        await coordinator.wait(saga_id, timeout=30)
    [child] = await children_of(env, saga_id)

    # The same start again, as a parent transition decided twice would write it (another
    # generated id): the idempotency key returns the first child and inserts nothing.
    running_parent = await env.database.run_driver(
        lambda conn: saga_log.load_instance(conn, saga_id)
    )
    assert running_parent is not None
    again = Transition(
        running_parent.state,
        start_child=StartChild(1, 1, CHILD.key, {"refuse": None, "error": {}, "sleep": {}}),
    )
    fresh = InstanceRow(saga_id, definition.name, 1, running_parent.state, {}, 0, None)
    prepared = prepare_write(
        fresh, definition, again, Topics.from_settings(env.settings), children={CHILD.key: CHILD}
    )
    assert prepared.shape is not None
    assert prepared.shape.child is not None
    duplicate = replace(prepared.shape.child, id=uuid.uuid4())
    found = await env.database.run_driver(lambda conn: saga_log.insert_child_start(conn, duplicate))
    assert found == child["id"]
    assert len(await children_of(env, saga_id)) == 1
    assert await executions(env.database, child["id"]) == [("authorize", "do"), ("award", "do")]


async def test_a_parent_whose_coordinator_dies_while_the_child_runs_still_finishes(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition = parent("child_outlives_coordinator")
    await create_effect_tables(env.database)
    async with starter(env) as start_only:
        await start_only.register(CHILD)
        await start_only.register(definition)
    async with cluster(env.settings, env.database, env.bootstrap) as running_cluster:
        coordinator = running_cluster.coordinators[0]
        saga_id = await coordinator.start(definition, parent_payload(child_sleep={"authorize": 2}))
        await wait_until(
            env.database,
            saga_id,
            "EXISTS (SELECT 1 FROM shared.saga_instance c WHERE c.parent_id = i.id)",
        )
        await running_cluster.stop("coordinator-0")
        await asyncio.sleep(2.5)  # the child's step ends while no coordinator runs
        replacement = running_cluster.start_coordinator("coordinator-1")
        summary = await replacement.wait(saga_id, timeout=40)

    assert summary.status is SagaStatus.COMPLETED
    [child] = await children_of(env, saga_id)
    assert child["status"] == "completed"
    assert await executions(env.database, child["id"]) == [("authorize", "do"), ("award", "do")]
    assert await effects(env.database, saga_id) == ["confirm", "reserve"]


async def test_registration_names_a_child_that_is_not_registered(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    orphan = SagaDefinition(
        "child_missing",
        1,
        [RESERVE, SubSaga("credit", ("no_such_child", 1), payload={}), CONFIRM],
    )
    async with starter(env) as coordinator:
        with pytest.raises(DefinitionError, match="no_such_child"):
            await coordinator.register(orphan)


async def test_a_parent_past_its_deadline_asks_its_running_child_to_compensate(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    # The child's authorize takes 3 s (its own step timeout is longer); the parent may
    # take 1.5 s: only the parent's deadline ends it.
    definition = parent("child_outrun", timeout=1.5)
    await create_effect_tables(env.database)
    worker = worker_for(env, SAGA_DEADLINES, schedule="saga_deadlines=0.1")
    async with (
        cluster(env.settings, env.database, env.bootstrap) as running_cluster,
        running(worker),
    ):
        coordinator = running_cluster.coordinators[0]
        await coordinator.register(CHILD)
        saga_id = await coordinator.start(
            definition, parent_payload(child_sleep={"authorize": 3.0})
        )
        summary = await coordinator.wait(saga_id, timeout=30)
        [child] = await children_of(env, saga_id)
        await wait_until(env.database, child["id"], "i.status = 'compensated'")

    assert summary.status is SagaStatus.COMPENSATED
    assert "saga deadline passed" in (summary.error or "")
    [child] = await children_of(env, saga_id)
    assert child["status"] == "compensated"
    # The child's step in flight is undone too (the participant's inbox bars its late run).
    assert await effects(env.database, child["id"]) == []
    assert await effects(env.database, saga_id) == []
    assert ("reserve", "undo") in await executions(env.database, saga_id)


async def test_a_duplicate_reply_to_the_parent_does_not_start_a_second_child(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition = parent("child_duplicate_reply")
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running_cluster:
        coordinator = running_cluster.coordinators[0]
        await coordinator.register(CHILD)
        saga_id = await coordinator.start(
            definition, parent_payload(child_sleep={"authorize": 1.5})
        )
        await wait_until(
            env.database,
            saga_id,
            "EXISTS (SELECT 1 FROM shared.saga_instance c WHERE c.parent_id = i.id)",
        )
        # reserve's success delivered again while the child runs.
        again = Reply(
            message_id=uuid.uuid4(),
            saga_id=saga_id,
            definition=definition.name,
            definition_version=1,
            step_index=0,
            step_name="reserve",
            journey="care",
            phase=Phase.EXECUTE,
            attempt=1,
            in_reply_to=command_message_id(saga_id, 0, Phase.EXECUTE),
            outcome=Outcome.SUCCEEDED,
            result={"reserve_id": "again"},
        )
        await coordinator.runtime.publisher.publish(
            [
                PendingMessage(
                    again.message_id,
                    coordinator.topics.replies,
                    again.key,
                    again.to_bytes(),
                    {},
                )
            ]
        )
        summary = await coordinator.wait(saga_id, timeout=30)

    assert summary.status is SagaStatus.COMPLETED
    assert dict(summary.context)["reserve_id"] != "again"
    [child] = await children_of(env, saga_id)
    assert await executions(env.database, child["id"]) == [("authorize", "do"), ("award", "do")]
    ignored = await env.database.run_driver(
        lambda conn: conn.fetchval(
            "SELECT count(*) FROM shared.saga_step_log "
            "WHERE saga_instance_id = $1 AND status = 'ignored' AND step_name = 'reserve'",
            saga_id,
        )
    )
    assert ignored == 1


class Losing(Producer):
    """Reports as sent, but never delivers, the first ``budget`` messages of the kinds in
    ``lost``: what a broker that acknowledged them and then lost them (a restart without
    persistence) does. Everything else goes through the real broker."""

    lost: ClassVar[dict[str, int]] = {}
    dropped: ClassVar[list[str]] = []

    def _keep(self, message: OutgoingMessage) -> bool:
        kind = decode(message.value).kind
        if self.lost.get(kind, 0) > 0:
            self.lost[kind] -= 1
            self.dropped.append(kind)
            return False
        return True

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        kept = [m for m in messages if self._keep(m)]
        results = iter(await super().send_many(kept))
        return [next(results) if m in kept else None for m in messages]

    async def send(self, message: OutgoingMessage) -> None:
        if self._keep(message):
            await super().send(message)


async def run_losing(
    env: SagaEnvironment, name: str, payload: dict[str, Any], lost: str
) -> tuple[uuid.UUID, SagaSummary]:
    """Run a parent whose coordinator's broker loses the first message of kind ``lost``,
    with the timeout worker (and so the parent's looks at its child) running."""
    await create_effect_tables(env.database)
    Losing.lost, Losing.dropped = {lost: 1}, []
    worker = worker_for(env, STEP_TIMEOUTS, schedule="step_timeouts=0.1")
    async with (
        cluster(env.settings, env.database, env.bootstrap) as running_cluster,
        running(worker),
    ):
        coordinator = running_cluster.coordinators[0]
        coordinator.runtime.producer.__class__ = Losing
        await coordinator.register(CHILD)
        saga_id = await coordinator.start(parent(name, check_every=0.5), payload)
        return saga_id, await coordinator.wait(saga_id, timeout=30)


@pytest.mark.parametrize(
    ("payload", "parent_status", "child_status"),
    [
        (parent_payload(), SagaStatus.COMPLETED, "completed"),
        (parent_payload(child_refuse="award"), SagaStatus.COMPENSATED, "compensated"),
    ],
    ids=["child_completed", "child_compensated"],
)
async def test_a_childs_end_the_broker_loses_is_found_when_the_parent_looks(
    saga_env: SagaEnvironment,
    payload: dict[str, Any],
    parent_status: SagaStatus,
    child_status: str,
) -> None:
    env = saga_env
    saga_id, summary = await run_losing(env, f"child_end_lost_{child_status}", payload, "child_end")

    assert Losing.dropped == ["child_end"]
    assert summary.status is parent_status
    [child] = await children_of(env, saga_id)
    assert child["status"] == child_status
    if parent_status is SagaStatus.COMPLETED:
        assert dict(summary.context)["credit"] is not None
        assert await effects(env.database, saga_id) == ["confirm", "reserve"]
    else:
        assert await effects(env.database, saga_id) == []
        assert await effects(env.database, child["id"]) == []


async def test_a_request_to_compensate_the_broker_loses_is_sent_again(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    payload = parent_payload(refuse="confirm")
    saga_id, summary = await run_losing(env, "child_undo_lost", payload, "compensate_child")

    assert Losing.dropped == ["compensate_child"]
    assert summary.status is SagaStatus.COMPENSATED
    [child] = await children_of(env, saga_id)
    assert child["status"] == "compensated"
    assert await executions(env.database, child["id"]) == [
        ("authorize", "do"),
        ("award", "do"),
        ("award", "undo"),
        ("authorize", "undo"),
    ]
    assert await effects(env.database, child["id"]) == []
    assert await effects(env.database, saga_id) == []
