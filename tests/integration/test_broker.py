"""The test broker speaks Kafka's protocol: create a topic, produce, consume in order."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

pytestmark = pytest.mark.integration


async def test_round_trip_keeps_per_key_order(kafka_bootstrap_servers: str) -> None:
    topic = f"test.roundtrip.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap_servers, enable_idempotence=False, acks="all"
    )
    await producer.start()
    try:
        for n in range(20):
            await producer.send_and_wait(topic, key=f"saga-{n % 4}".encode(), value=str(n).encode())
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap_servers,
        group_id=f"tests-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    received: dict[str, list[int]] = {}
    try:
        while sum(len(v) for v in received.values()) < 20:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    assert record.key is not None
                    assert record.value is not None
                    received.setdefault(record.key.decode(), []).append(int(record.value))
    finally:
        await consumer.stop()
    assert received == {f"saga-{k}": list(range(k, 20, 4)) for k in range(4)}
