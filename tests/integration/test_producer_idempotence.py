"""KAFKA_ENABLE_IDEMPOTENCE against the session's broker.

The broker is asked (the same probe the producer makes, checked here against the raw
answer to InitProducerId) and each mode is held to its promise for that answer: ``auto``
follows it, ``true`` runs idempotent end to end or refuses to start in one line, ``false``
never asks. On Tansu, which offers InitProducerId and fails it, that means ``auto`` falls
back and ``true`` refuses; on Apache Kafka both run idempotent.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import MutableMapping, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.transaction import InitProducerIdRequest
from structlog.testing import capture_logs

from saga.errors import BrokerFeatureMissing
from saga.settings import Idempotence
from saga.transport import OutgoingMessage, Producer, ensure_topics
from saga.transport.broker_features import idempotence_support
from tests.integration.conftest import SagaEnvironment, engine_process

pytestmark = pytest.mark.integration


async def broker_gives_producer_ids(bootstrap: str) -> bool:
    """InitProducerId asked by hand, as aiokafka's idempotent producer asks it first."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        response: Any = await client.send(
            client.get_random_node(), InitProducerIdRequest(None, 60000)
        )
    finally:
        await client.close()
    return bool(response.error_code == 0 and response.producer_id >= 0)


async def round_trip(producer: Producer, bootstrap: str) -> list[bytes]:
    """Send three messages under one key; read back what the topic holds."""
    topic = f"test.idempotence.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [topic], partitions=1)
    sent = [b"one", b"two", b"three"]
    outcomes = await producer.send_many(
        [OutgoingMessage(topic=topic, key="saga-1", value=value, headers={}) for value in sent]
    )
    assert outcomes == [None, None, None]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    received: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, 0)])
        while len(received) < len(sent):
            batch = await consumer.getmany(timeout_ms=1000)
            received += [record.value for records in batch.values() for record in records]
    finally:
        await consumer.stop()
    return received


def modes(logs: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == "producer_mode"]


async def test_the_probe_reports_what_the_broker_answers(kafka_bootstrap_servers: str) -> None:
    support = await idempotence_support(kafka_bootstrap_servers, client_id="tests")
    assert support.supported is await broker_gives_producer_ids(kafka_bootstrap_servers)


async def test_auto_follows_the_broker_and_says_which_mode_it_runs_in(
    kafka_bootstrap_servers: str,
) -> None:
    supported = await broker_gives_producer_ids(kafka_bootstrap_servers)
    producer = Producer(
        kafka_bootstrap_servers,
        client_id="tests-auto",
        max_message_bytes=1_000_000,
        idempotence=Idempotence.AUTO,
    )
    with capture_logs() as logs:
        await producer.start()
    try:
        assert producer.idempotent is supported
        (mode,) = modes(logs)
        assert mode["idempotent"] is supported
        assert mode["setting"] == "auto"
        assert mode["acks"] == "all"
        if not supported:
            assert "InitProducerId" in mode["reason"]
        assert await round_trip(producer, kafka_bootstrap_servers) == [b"one", b"two", b"three"]
    finally:
        await producer.stop()


async def test_true_runs_idempotent_end_to_end_or_refuses_to_start(
    kafka_bootstrap_servers: str,
) -> None:
    producer = Producer(
        kafka_bootstrap_servers,
        client_id="tests-true",
        max_message_bytes=1_000_000,
        idempotence=Idempotence.TRUE,
    )
    if await broker_gives_producer_ids(kafka_bootstrap_servers):
        async with producer:
            assert producer.idempotent is True
            assert await round_trip(producer, kafka_bootstrap_servers) == [b"one", b"two", b"three"]
        return
    with pytest.raises(BrokerFeatureMissing) as refused:
        await producer.start()
    await producer.stop()
    assert producer.idempotent is None
    assert str(refused.value) == (
        f"KAFKA_ENABLE_IDEMPOTENCE=true, but Kafka at {kafka_bootstrap_servers} cannot run an "
        "idempotent producer: the broker answered InitProducerId with UnknownError; set it "
        "to auto or false"
    )


async def test_false_runs_as_before_without_asking(kafka_bootstrap_servers: str) -> None:
    producer = Producer(
        kafka_bootstrap_servers,
        client_id="tests-false",
        max_message_bytes=1_000_000,
        idempotence=Idempotence.FALSE,
    )
    with capture_logs() as logs:
        await producer.start()
    try:
        assert producer.idempotent is False
        (mode,) = modes(logs)
        assert mode["reason"] == "KAFKA_ENABLE_IDEMPOTENCE=false"
        assert await round_trip(producer, kafka_bootstrap_servers) == [b"one", b"two", b"three"]
    finally:
        await producer.stop()


async def test_a_process_told_true_on_a_broker_without_it_exits_in_one_line(
    saga_env: SagaEnvironment,
) -> None:
    if await broker_gives_producer_ids(saga_env.bootstrap):
        pytest.skip("the broker gives producer ids: `true` is proven end to end above")
    with engine_process(
        saga_env, "run", "coordinator", environ={"KAFKA_ENABLE_IDEMPOTENCE": "true"}
    ) as process:
        try:
            _, stderr = process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("the coordinator kept running with KAFKA_ENABLE_IDEMPOTENCE=true")
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert lines == [
        f"saga: error: KAFKA_ENABLE_IDEMPOTENCE=true, but Kafka at {saga_env.bootstrap} cannot "
        "run an idempotent producer: the broker answered InitProducerId with UnknownError; "
        "set it to auto or false"
    ], stderr.decode()
