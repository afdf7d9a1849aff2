"""The engine end to end over the in-memory transport: the same coordinator and
participants as over Kafka, the real PostgreSQL, no broker process.

What the in-memory adapter promises as a transport is in the contract suite
(``test_transport_contract.py``); this shows the engine runs on it unchanged, duplicates
included.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from saga.coordinator import Coordinator
from saga.errors import ConfigurationError
from saga.machine import SagaStatus
from saga.participant import Participant
from saga.runtime import resolve_transport
from saga.settings import Settings
from saga.transport import InMemoryBroker, InMemoryTransport, KafkaTransport, Transport
from tests.integration.conftest import SagaEnvironment
from tests.integration.sagas import (
    ACTIONS,
    ALL_DONE,
    BOOKING,
    FAST_RELAY,
    FAST_RETRY,
    SCHEMAS,
    create_effect_tables,
    effects,
    executions,
    make_compensation,
    make_handler,
)

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def engine(env: SagaEnvironment, transport: Transport) -> AsyncIterator[Coordinator]:
    """A coordinator and the three participants, all on ``transport``."""
    participants = []
    for journey, actions in ACTIONS.items():
        participant = Participant(
            journey,
            schema=SCHEMAS[journey],
            settings=env.settings,
            database=env.database,
            retry=FAST_RETRY,
            relay=FAST_RELAY,
            transport=transport,
        )
        for action, compensation in actions.items():
            participant.register(action, make_handler(action))
            if compensation is not None:
                participant.register(compensation, make_compensation(action, compensation))
        participants.append(participant)
    coordinator = Coordinator(
        settings=env.settings, database=env.database, relay=FAST_RELAY, transport=transport
    )
    services: list[Any] = [*participants, coordinator]
    tasks = [asyncio.create_task(service.run()) for service in services]
    try:
        yield coordinator
    finally:
        for service in services:
            await service.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)


async def test_sagas_complete_and_compensate_over_the_in_memory_transport(
    saga_env: SagaEnvironment,
) -> None:
    await create_effect_tables(saga_env.database)
    broker = InMemoryBroker()
    async with engine(saga_env, InMemoryTransport(broker)) as coordinator:
        done = await coordinator.wait(await coordinator.start(BOOKING, {"n": 1}), timeout=30)
        undone = await coordinator.wait(
            await coordinator.start(BOOKING, {"refuse": "award"}), timeout=30
        )
    assert done.status is SagaStatus.COMPLETED
    assert await executions(saga_env.database, done.id) == ALL_DONE
    assert undone.status is SagaStatus.COMPENSATED
    assert await effects(saga_env.database, undone.id) == []
    prefix = saga_env.settings.kafka_topic_prefix
    assert f"{prefix}.care.commands" in broker.topics()
    assert broker.records(f"{prefix}.dead-letter") == []


async def test_every_message_delivered_twice_still_has_each_effect_once(
    saga_env: SagaEnvironment,
) -> None:
    await create_effect_tables(saga_env.database)
    broker = InMemoryBroker(deliver_twice=True)
    async with engine(saga_env, InMemoryTransport(broker)) as coordinator:
        ids = [await coordinator.start(BOOKING, {"n": n}) for n in range(5)]
        summaries = [await coordinator.wait(saga_id, timeout=30) for saga_id in ids]
    assert {summary.status for summary in summaries} == {SagaStatus.COMPLETED}
    for saga_id in ids:
        assert await executions(saga_env.database, saga_id) == ALL_DONE
    replies = broker.records(f"{saga_env.settings.kafka_topic_prefix}.replies")
    assert len(replies) >= 2 * 4 * len(ids), "the replies were not duplicated"


def test_a_transport_and_a_broker_address_together_are_refused(settings: Settings) -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        resolve_transport(settings, "127.0.0.1:9092", InMemoryTransport())
    kafka = resolve_transport(settings, "127.0.0.1:9092", None)
    assert isinstance(kafka, KafkaTransport)
    assert kafka.bootstrap_servers == "127.0.0.1:9092"
