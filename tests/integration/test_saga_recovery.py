"""Stale replies, poison messages, a coordinator killed for real, and two coordinators."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Sequence

import pytest
from aiokafka import AIOKafkaConsumer
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from saga.coordinator import Coordinator
from saga.coordinator.commands import build_command
from saga.machine import Dispatch, Outcome, Phase, SagaStatus, command_message_id
from saga.messages import Command, Reply
from saga.store.outbox import PendingMessage
from saga.transport import Incoming, OutgoingMessage, Producer
from tests.integration.conftest import SagaEnvironment, engine_process
from tests.integration.sagas import (
    ALL_DONE,
    BOOKING,
    FAST_RELAY,
    cluster,
    create_effect_tables,
    executions,
    participant_for,
    step_log,
)

pytestmark = pytest.mark.integration


def reply(saga_id: uuid.UUID, step: int, attempt: int, outcome: Outcome) -> Incoming:
    message = Reply(
        message_id=uuid.uuid4(),
        saga_id=saga_id,
        definition=BOOKING.name,
        definition_version=BOOKING.version,
        step_index=step,
        step_name=BOOKING.steps[step].name,
        journey=BOOKING.steps[step].journey,
        phase=Phase.EXECUTE,
        attempt=attempt,
        in_reply_to=command_message_id(saga_id, step, Phase.EXECUTE),
        outcome=outcome,
        result={"step": step, "attempt": attempt},
        reason=None if outcome is Outcome.SUCCEEDED else "test",
    )
    return Incoming("replies", 0, 0, str(saga_id), message.to_bytes(), {}, 0)


async def test_an_old_attempts_error_and_replies_for_a_past_step_are_ignored(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    async with Coordinator(
        settings=env.settings, database=env.database, bootstrap_servers=env.bootstrap
    ) as coordinator:
        saga_id = await coordinator.start(BOOKING, {})
        handle = coordinator.replies.handle

        with capture_logs(processors=[merge_contextvars]) as logs:
            await handle(reply(saga_id, 0, 1, Outcome.ERROR))  # attempt 2 dispatched
        transition = next(e for e in logs if e["event"] == "saga_transition")
        expected = {
            "saga_id": str(saga_id),
            "definition": "test_booking",
            "step": "reserve",
            "action": "reserve",
            "attempt": 1,
            "next_attempt": 2,
        }
        # Every transition is logged with what identifies it.
        assert {key: transition.get(key) for key in expected} == expected

        await handle(reply(saga_id, 0, 1, Outcome.ERROR))  # the old attempt errs again, late
        summary = await coordinator.status(saga_id)
        assert summary.status is SagaStatus.RUNNING
        assert summary.context == {}

        # Attempt 2 re-sent the same command (one message id): a late success of attempt 1
        # is its answer too, and settles the step.
        await handle(reply(saga_id, 0, 1, Outcome.SUCCEEDED))
        await handle(reply(saga_id, 0, 2, Outcome.SUCCEEDED))  # attempt 2's answer, too late
        await handle(reply(saga_id, 0, 2, Outcome.FAILED))  # and a contradiction
        summary = await coordinator.status(saga_id)
        assert summary.status is SagaStatus.RUNNING
        assert summary.context == {"step": 0, "attempt": 1}

    rows = [
        (r["step_name"], r["attempt"], r["status"], r["error"])
        for r in await step_log(env.database, saga_id)
    ]
    assert rows[:5] == [
        ("reserve", 1, "dispatched", None),
        ("reserve", 1, "retried", "test"),
        ("reserve", 2, "dispatched", None),
        ("reserve", 1, "ignored", "ignored: reply for attempt 1 but the step is at attempt 2"),
        ("reserve", 2, "succeeded", None),
    ]
    ignored = [r[3] for r in rows if r[2] == "ignored"]
    assert (
        ignored[1:]
        == ["ignored: reply for step 0 (execute) but the saga is at step 1 (execute)"] * 2
    )
    assert coordinator.replies.ignored == 3


async def test_a_coordinator_whose_copy_of_a_saga_is_stale_decides_on_the_database(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env

    def coordinator(name: str) -> Coordinator:
        return Coordinator(
            settings=env.settings,
            database=env.database,
            bootstrap_servers=env.bootstrap,
            name=name,
        )

    async with coordinator("first") as first, coordinator("second") as second:
        saga_id = await first.start(BOOKING, {})
        await first.replies.handle(reply(saga_id, 0, 1, Outcome.ERROR))  # first caches it
        await second.replies.handle(reply(saga_id, 0, 2, Outcome.SUCCEEDED))  # moves on
        # first's copy says step 0 attempt 2: the reply looks stale to it, but is not.
        await first.replies.handle(reply(saga_id, 1, 1, Outcome.SUCCEEDED))
        # Now second's copy is the stale one.
        await second.replies.handle(reply(saga_id, 2, 1, Outcome.SUCCEEDED))
        await first.replies.handle(reply(saga_id, 3, 1, Outcome.SUCCEEDED))
        summary = await first.status(saga_id)
    assert summary.status is SagaStatus.COMPLETED
    assert first.replies.ignored == second.replies.ignored == 0
    decided = [
        (r["step_name"], r["attempt"], r["status"])
        for r in await step_log(env.database, saga_id)
        if r["status"] != "dispatched"
    ]
    assert decided == [
        ("reserve", 1, "retried"),
        ("reserve", 2, "succeeded"),
        ("authorize", 1, "succeeded"),
        ("award", 1, "succeeded"),
        ("confirm", 1, "succeeded"),
    ]


async def test_a_write_decided_on_a_stale_copy_loses_and_the_reply_is_judged_again(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    async with Coordinator(
        settings=env.settings, database=env.database, bootstrap_servers=env.bootstrap
    ) as coordinator:
        saga_id = await coordinator.start(BOOKING, {})
        await coordinator.replies.handle(reply(saga_id, 0, 1, Outcome.SUCCEEDED))
        # Another process re-sends step 1 as attempt 2 (as the timeout worker does).
        await env.database.run_driver(
            lambda conn: conn.execute(
                "UPDATE shared.saga_instance SET step_attempt = 2, version = version + 1 "
                "WHERE id = $1",
                saga_id,
            )
        )
        # The cached copy says attempt 1 and would apply this error (a retry); the database
        # says attempt 2, for which an earlier attempt's error settles nothing.
        await coordinator.replies.handle(reply(saga_id, 1, 1, Outcome.ERROR))
        summary = await coordinator.status(saga_id)
        assert coordinator.replies.races == 1
        assert coordinator.replies.ignored == 1
    assert summary.status is SagaStatus.RUNNING
    assert summary.context == {"step": 0, "attempt": 1}


async def dead_letters(
    bootstrap: str, topic: str, count: int
) -> list[tuple[bytes, dict[str, str]]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"dlq-reader-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[tuple[bytes, dict[str, str]]] = []
    try:
        async with asyncio.timeout(20):
            while len(found) < count:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    found += [
                        (r.value or b"", {k: v.decode() for k, v in r.headers}) for r in records
                    ]
    finally:
        await consumer.stop()
    return found


async def test_poison_messages_are_dead_lettered_and_the_messages_behind_them_processed(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    topics = env.settings.kafka_topic_prefix
    limit = env.settings.kafka_max_message_bytes
    async with cluster(env.settings, env.database, env.bootstrap) as running:
        coordinator = running.coordinators[0]
        await coordinator.register(BOOKING)
        stranger = uuid.uuid4()
        unknown_action = Command(
            message_id=uuid.uuid4(),
            saga_id=stranger,
            definition=BOOKING.name,
            definition_version=1,
            step_index=0,
            step_name="reserve",
            journey="care",
            phase=Phase.EXECUTE,
            attempt=1,
            action="teleport",
            timeout_ms=1000,
            reply_to=f"{topics}.replies",
        )
        poison = [
            OutgoingMessage(f"{topics}.replies", "k", b"\x00not json"),
            OutgoingMessage(f"{topics}.care.commands", "k", b'{"kind": "command"}'),
            OutgoingMessage(f"{topics}.plan.commands", "k", b"x" * (limit + 10)),
            OutgoingMessage(
                f"{topics}.replies",
                str(stranger),
                reply(stranger, 0, 1, Outcome.SUCCEEDED).value or b"",
            ),
            OutgoingMessage(f"{topics}.care.commands", str(stranger), unknown_action.to_bytes()),
        ]
        async with Producer(
            env.bootstrap, client_id="poisoner", max_message_bytes=limit * 2
        ) as producer:
            for message in poison:
                await producer.send(message)
        saga_id = await coordinator.start(BOOKING, {"n": 1})
        summary = await coordinator.wait(saga_id, timeout=30)
        assert summary.status is SagaStatus.COMPLETED

        # The five, plus the unknown action's failed reply for a saga nobody knows.
        letters = await dead_letters(env.bootstrap, f"{topics}.dead-letter", 6)
    reasons = sorted(headers["x-dead-letter-reason"] for _, headers in letters)
    assert len(reasons) == 6
    assert sum("invalid envelope" in r for r in reasons) == 2
    assert sum(f"unknown saga {stranger}" in r for r in reasons) == 2
    assert any("has no action 'teleport'" in r for r in reasons)
    assert any(str(limit) in r for r in reasons)
    assert await executions(env.database, saga_id) == ALL_DONE


async def wait_for_step(env: SagaEnvironment, saga_id: uuid.UUID, step: str, status: str) -> None:
    async with asyncio.timeout(30):
        while not any(
            r["step_name"] == step and r["status"] == status
            for r in await step_log(env.database, saga_id)
        ):
            await asyncio.sleep(0.05)


async def test_a_coordinator_killed_mid_saga_and_restarted_finishes_it(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap, coordinators=0) as running:
        async with Coordinator(
            settings=env.settings,
            database=env.database,
            bootstrap_servers=env.bootstrap,
            relay=FAST_RELAY,
        ) as starter:
            with engine_process(env, "run", "coordinator") as first:
                saga_id = await starter.start(BOOKING, {"sleep": {"authorize": 1.0}})
                await wait_for_step(env, saga_id, "authorize", "dispatched")
                first.send_signal(signal.SIGKILL)  # while authorize is running
                first.wait(10)
            assert (await starter.status(saga_id)).status is SagaStatus.RUNNING
            with engine_process(env, "run", "coordinator") as second:
                summary = await starter.wait(saga_id, timeout=45)
                assert second.poll() is None, "the restarted coordinator keeps running"
                second.send_signal(signal.SIGTERM)
                assert second.wait(20) == 0
        assert running.participants
    assert summary.status is SagaStatus.COMPLETED
    assert await executions(env.database, saga_id) == ALL_DONE


async def test_two_coordinators_share_the_sagas_and_none_is_driven_twice(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap, coordinators=2) as running:
        first, second = running.coordinators
        await _until_both_consume(first, second)
        payloads = [{"n": n} if n % 4 else {"refuse": "award"} for n in range(60)]
        ids = [await first.start(BOOKING, payload) for payload in payloads]
        results = await asyncio.gather(*(first.wait(s, timeout=60) for s in ids))

    assert first.replies.applied > 0
    assert second.replies.applied > 0
    for payload, saga_id, result in zip(payloads, ids, results, strict=True):
        if "refuse" in payload:
            assert result.status is SagaStatus.COMPENSATED
            continue
        assert result.status is SagaStatus.COMPLETED
        assert await executions(env.database, saga_id) == ALL_DONE
        decided = [
            (r["step_name"], r["status"])
            for r in await step_log(env.database, saga_id)
            if r["status"] != "ignored"
        ]
        assert decided == [
            (s.name, st) for s in BOOKING.steps for st in ("dispatched", "succeeded")
        ]


async def _until_both_consume(*coordinators: Coordinator) -> None:
    async with asyncio.timeout(30):
        while not all(
            c.runtime.consumer is not None and c.runtime.consumer.assignment() for c in coordinators
        ):
            await asyncio.sleep(0.1)


async def test_a_command_committed_but_never_published_is_sent_by_the_relay(
    saga_env: SagaEnvironment,
) -> None:
    """The process that commits publishes right after; if it dies in between, the relay
    of whichever process runs next sweeps the row up."""
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running:
        coordinator = running.coordinators[0]
        publisher = coordinator.runtime.publisher
        publish = publisher.publish

        async def crash_before_publishing(messages: Sequence[PendingMessage]) -> None:
            publisher.publish = publish  # type: ignore[method-assign]

        publisher.publish = crash_before_publishing  # type: ignore[method-assign]
        saga_id = await coordinator.start(BOOKING, {"n": 1})
        unpublished = await env.database.run_driver(
            lambda conn: conn.fetchval(
                "SELECT count(*) FROM shared.saga_outbox WHERE published_at IS NULL"
            )
        )
        assert unpublished == 1
        summary = await coordinator.wait(saga_id, timeout=30)
    assert summary.status is SagaStatus.COMPLETED
    assert publisher.relayed >= 1
    assert await executions(env.database, saga_id) == ALL_DONE


async def test_two_members_serving_one_command_at_once_apply_it_once(
    saga_env: SagaEnvironment,
) -> None:
    """During a rebalance two members of a journey's group may hold the same command."""
    env = saga_env
    await create_effect_tables(env.database)
    async with Coordinator(
        settings=env.settings, database=env.database, bootstrap_servers=env.bootstrap
    ) as coordinator:
        await coordinator.register(BOOKING)
        saga_id = uuid.uuid4()
        payload = {"sleep": {"reserve": 0.3}}  # both pass the inbox check before either commits
        await env.database.run_driver(
            lambda conn: conn.execute(
                "INSERT INTO shared.saga_instance (id, saga_definition_id, definition_name, "
                "definition_version, payload) SELECT $1, id, name, version, $2::jsonb "
                "FROM shared.saga_definition WHERE name = $3",
                saga_id,
                json.dumps(payload),
                BOOKING.name,
            )
        )
        command = build_command(
            saga_id=saga_id,
            definition=BOOKING,
            dispatch=Dispatch(0, Phase.EXECUTE, 1),
            payload=payload,
            context={},
            reply_to=coordinator.topics.replies,
        )
    incoming = Incoming("commands", 0, 0, str(saga_id), command.to_bytes(), {}, 0)
    members = [participant_for("care", env.settings, env.database, env.bootstrap) for _ in "ab"]
    try:
        await asyncio.gather(*(member.handle(incoming) for member in members))
    finally:
        for member in members:
            await member.stop()
    assert await executions(env.database, saga_id) == [("reserve", "do")]
    assert sum(m.stats.duplicates for m in members) == 1
    assert sum(m.stats.errored for m in members) == 0
