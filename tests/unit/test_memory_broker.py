"""The in-memory broker's own promises: what the contract suite cannot ask of Kafka.

Partitioning, its size limit, and the faults a test kit injects (duplicates, an outage, a
restart that loses everything). The transport behaviour it shares with Kafka is in
``tests/integration/test_transport_contract.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from saga.errors import BrokerUnavailable, ConfigurationError, MessageRejected
from saga.transport import DeadLetters, Incoming, OutgoingMessage
from saga.transport.memory import InMemoryBroker, InMemoryTransport
from saga.transport.memory.transport import InMemorySender


@pytest.fixture
async def sender() -> AsyncIterator[InMemorySender]:
    transport = InMemoryTransport(InMemoryBroker(), partitions=4)
    await transport.ensure_topics(["orders", "dead"])
    started = transport.sender(client_id="unit")
    await started.start()
    yield started
    await started.stop()


def message(key: str, value: bytes, topic: str = "orders") -> OutgoingMessage:
    return OutgoingMessage(topic, key, value)


async def test_one_key_always_lands_on_one_partition_in_offset_order(
    sender: InMemorySender,
) -> None:
    for n in range(10):
        await sender.send(message("saga-1", str(n).encode()))
    records = [r for r in sender.broker.records("orders") if r.key == b"saga-1"]
    assert len({r.partition for r in records}) == 1
    assert [r.value for r in records] == [str(n).encode() for n in range(10)]
    assert [r.offset for r in records] == list(range(10))
    assert sender.broker.topics() == {"orders": 4, "dead": 4}


async def test_an_unknown_topic_is_an_outage_unless_topics_are_created_on_demand() -> None:
    broker = InMemoryBroker()
    with pytest.raises(BrokerUnavailable, match="no topic 'nowhere'"):
        broker.append(message("k", b"v", topic="nowhere"))
    broker.auto_create_topics = True
    broker.append(message("k", b"v", topic="nowhere"))
    assert broker.topics() == {"nowhere": broker.default_partitions}


def test_the_broker_refuses_a_record_over_its_own_limit() -> None:
    broker = InMemoryBroker(max_message_bytes=100)
    broker.create_topic("orders", 1)
    with pytest.raises(MessageRejected, match="at most 100 bytes"):
        broker.append(message("k", b"x" * 100))


def test_bad_settings_are_refused_with_what_was_wrong() -> None:
    with pytest.raises(ConfigurationError, match="default_partitions"):
        InMemoryBroker(default_partitions=0)
    with pytest.raises(ConfigurationError, match="at least one partition"):
        InMemoryBroker().create_topic("orders", 0)
    with pytest.raises(ConfigurationError, match="partitions"):
        InMemoryTransport(partitions=0)


async def test_deliver_twice_stores_every_message_at_two_offsets(sender: InMemorySender) -> None:
    sender.broker.deliver_twice = True
    await sender.send(message("k", b"once"))
    records = sender.broker.records("orders")
    assert [r.value for r in records] == [b"once", b"once"]
    assert [r.offset for r in records] == [0, 1]


async def test_an_unavailable_broker_fails_sends_and_holds_consumers_until_it_is_back(
    sender: InMemorySender,
) -> None:
    seen: list[bytes] = []

    async def handle(incoming: Incoming) -> None:
        seen.append(incoming.value or b"")

    transport = InMemoryTransport(sender.broker, partitions=4)
    consumer = transport.consumer(
        topics=["orders"],
        group_id="g",
        handle=handle,
        dead_letters=DeadLetters(sender, "dead", max_message_bytes=1_000_000),
        client_id="unit",
    )
    running = asyncio.create_task(consumer.run())
    await asyncio.wait_for(consumer.ready.wait(), 1)
    await sender.send(message("k", b"before"))
    sender.broker.set_available(False)
    (outcome,) = await sender.send_many([message("k", b"during")])
    assert isinstance(outcome, BrokerUnavailable)
    with pytest.raises(BrokerUnavailable):
        await transport.ensure_topics(["more"])
    sender.broker.set_available(True)
    await sender.send(message("k", b"after"))
    async with asyncio.timeout(2):
        while seen != [b"before", b"after"]:
            await asyncio.sleep(0.01)
    await consumer.stop()
    await running
    assert sender.broker.committed("g")


async def test_losing_everything_empties_the_broker_and_rebalances_its_groups(
    sender: InMemorySender,
) -> None:
    handled: list[bytes] = []

    async def handle(incoming: Incoming) -> None:
        handled.append(incoming.value or b"")

    restored = asyncio.Event()
    transport = InMemoryTransport(sender.broker, partitions=4)

    async def restore_topics() -> None:
        await transport.ensure_topics(["orders", "dead"])
        restored.set()

    consumer = transport.consumer(
        topics=["orders"],
        group_id="g",
        handle=handle,
        dead_letters=DeadLetters(sender, "dead", max_message_bytes=1_000_000),
        client_id="unit",
        on_rebalance=restore_topics,
    )
    running = asyncio.create_task(consumer.run())
    await asyncio.wait_for(consumer.ready.wait(), 1)
    await sender.send(message("k", b"old"))
    sender.broker.lose_everything()
    assert sender.broker.records("orders") == []
    await asyncio.wait_for(restored.wait(), 1)
    await sender.send(message("k", b"new"))
    async with asyncio.timeout(2):
        while b"new" not in handled:
            await asyncio.sleep(0.01)
    await consumer.stop()
    await running
    assert consumer.rebalances >= 1
    assert len(consumer.assignment()) == 4
