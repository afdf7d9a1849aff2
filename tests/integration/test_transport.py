"""The Kafka transport against a real broker: topics, producing, batch consuming.

Group timings on the embedded Tansu broker shape these tests: a group's first join waits
about half the session timeout, and a group's first generation is numbered 0, for which
aiokafka sends no LeaveGroup, so the next member waits out the session timeout. Apache
Kafka refuses session timeouts under 6 s, so the short one is used on Tansu only.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from saga.embedded.broker import free_port
from saga.errors import (
    BrokerUnavailable,
    ConfigurationError,
    DatabaseUnavailable,
    MessageRejected,
)
from saga.settings import Settings
from saga.transport import (
    BatchConsumer,
    DeadLetters,
    Incoming,
    OutgoingMessage,
    Producer,
    Topics,
    ensure_topics,
)

pytestmark = pytest.mark.integration

MAX_BYTES = 1_000_000


@pytest.fixture
def topics() -> Topics:
    return Topics(prefix=f"test.{uuid.uuid4().hex[:10]}")


@pytest.fixture
def session_timeout_ms(settings: Settings) -> int:
    return 6000 if settings.kafka_bootstrap_servers else 2000


@pytest.fixture
async def producer(kafka_bootstrap_servers: str) -> AsyncIterator[Producer]:
    async with Producer(
        kafka_bootstrap_servers, client_id="tests", max_message_bytes=MAX_BYTES
    ) as started:
        yield started


class Recorder:
    """A handler that records what it saw and can be told to misbehave per value."""

    def __init__(self) -> None:
        self.seen: list[Incoming] = []
        self.calls: dict[bytes, int] = {}
        self.behaviour: dict[bytes, Callable[[int], Awaitable[None]]] = {}

    async def __call__(self, incoming: Incoming) -> None:
        value = incoming.value or b""
        self.calls[value] = self.calls.get(value, 0) + 1
        if value in self.behaviour:
            await self.behaviour[value](self.calls[value])
        self.seen.append(incoming)

    def values(self, key: str | None = None) -> list[bytes]:
        return [i.value or b"" for i in self.seen if key is None or i.key == key]


def consumer_for(
    servers: str,
    topics: Topics,
    producer: Producer,
    handle: Callable[[Incoming], Awaitable[None]],
    session_timeout_ms: int,
    *,
    group_id: str | None = None,
    **options: Any,
) -> BatchConsumer:
    return BatchConsumer(
        bootstrap_servers=servers,
        topics=[topics.commands("booking")],
        group_id=group_id or f"{topics.prefix}.group",
        handle=handle,
        dead_letters=DeadLetters(producer, topics.dead_letter, max_message_bytes=MAX_BYTES),
        client_id="tests",
        fetch_max_wait_ms=10,
        max_message_bytes=options.pop("max_message_bytes", MAX_BYTES),
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=session_timeout_ms // 4,
        retry_delay=0.01,
        max_retry_delay=0.05,
        **options,
    )


@asynccontextmanager
async def running(consumer: BatchConsumer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(consumer.run())
    try:
        yield task
    finally:
        await consumer.stop(grace=1.0)
        await task


async def eventually(condition: Callable[[], bool], *, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def read(servers: str, topic: str, count: int, *, within: float = 5.0) -> list[Any]:
    """Up to ``count`` records of ``topic`` from the start, without joining a group."""
    reader = AIOKafkaConsumer(
        topic, bootstrap_servers=servers, auto_offset_reset="earliest", fetch_max_wait_ms=10
    )
    await reader.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + within
        while len(records) < count and time.monotonic() < deadline:
            for batch in (await reader.getmany(timeout_ms=100)).values():
                records.extend(batch)
    finally:
        await reader.stop()
    return records


async def setup(servers: str, topics: Topics, *, partitions: int = 1) -> None:
    await ensure_topics(
        servers, [topics.commands("booking"), topics.dead_letter], partitions=partitions
    )


def command(topics: Topics, key: str, value: bytes, **headers: str) -> OutgoingMessage:
    return OutgoingMessage(topics.commands("booking"), key, value, headers)


# -- topics ---------------------------------------------------------------------------------


async def test_ensure_topics_is_idempotent_and_creates_the_partitions(
    kafka_bootstrap_servers: str, topics: Topics
) -> None:
    names = [topics.commands("booking"), topics.replies, topics.dead_letter]
    # Two processes racing to create the same topics, then a third call once they exist.
    await asyncio.gather(
        ensure_topics(kafka_bootstrap_servers, names, partitions=3),
        ensure_topics(kafka_bootstrap_servers, names, partitions=3),
    )
    await ensure_topics(kafka_bootstrap_servers, names, partitions=3)

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    assert {t["topic"]: len(t["partitions"]) for t in described} == dict.fromkeys(names, 3)


async def test_ensure_topics_without_a_broker_raises_broker_unavailable() -> None:
    with pytest.raises(BrokerUnavailable):
        await ensure_topics(f"127.0.0.1:{free_port()}", ["t"], partitions=1)


# -- producing ------------------------------------------------------------------------------


async def test_send_many_delivers_and_keeps_per_key_order(
    kafka_bootstrap_servers: str, topics: Topics, producer: Producer
) -> None:
    await setup(kafka_bootstrap_servers, topics, partitions=4)
    messages = [command(topics, f"saga-{n % 4}", str(n).encode(), step=f"s{n}") for n in range(40)]
    assert await producer.send_many(messages) == [None] * 40

    records = await read(kafka_bootstrap_servers, topics.commands("booking"), 40)
    by_key: dict[bytes, list[int]] = {}
    for record in records:
        by_key.setdefault(record.key, []).append(int(record.value))
        assert dict(record.headers) == {"step": f"s{int(record.value)}".encode()}
    assert by_key == {f"saga-{k}".encode(): list(range(k, 40, 4)) for k in range(4)}
    # Each key stays on one partition.
    assert len({(r.key, r.partition) for r in records}) == 4


async def test_one_bad_message_does_not_fail_the_others(
    kafka_bootstrap_servers: str, topics: Topics
) -> None:
    await setup(kafka_bootstrap_servers, topics)
    async with Producer(
        kafka_bootstrap_servers, client_id="tests", max_message_bytes=2048
    ) as small:
        outcomes = await small.send_many(
            [
                command(topics, "k", b"first"),
                command(topics, "k", b"x" * 4096),
                command(topics, "k", b"third"),
            ]
        )
        assert outcomes[0] is None
        assert isinstance(outcomes[1], MessageRejected)
        assert outcomes[2] is None
        with pytest.raises(MessageRejected):
            await small.send(command(topics, "k", b"x" * 4096))
    records = await read(kafka_bootstrap_servers, topics.commands("booking"), 2)
    assert [r.value for r in records] == [b"first", b"third"]


async def test_producer_without_a_broker_raises_broker_unavailable() -> None:
    producer = Producer(f"127.0.0.1:{free_port()}", client_id="tests", max_message_bytes=MAX_BYTES)
    with pytest.raises(BrokerUnavailable):
        await producer.start()
    await producer.stop()


async def test_sending_before_start_is_misuse_and_after_stop_fails_per_message(
    kafka_bootstrap_servers: str, topics: Topics
) -> None:
    producer = Producer(kafka_bootstrap_servers, client_id="tests", max_message_bytes=MAX_BYTES)
    with pytest.raises(ConfigurationError, match="not started"):
        await producer.send(command(topics, "k", b"early"))
    await producer.start()
    await producer.stop()
    outcomes = await producer.send_many([command(topics, "k", b"late")] * 2)
    assert all(isinstance(outcome, BrokerUnavailable) for outcome in outcomes)
    with pytest.raises(ConfigurationError, match="started once"):
        await producer.start()


def test_producer_from_settings_needs_a_broker_address(settings: Settings) -> None:
    unset = settings.model_copy(update={"kafka_bootstrap_servers": None})
    with pytest.raises(ConfigurationError, match="KAFKA_BOOTSTRAP_SERVERS"):
        Producer.from_settings(unset)
    producer = Producer.from_settings(unset, bootstrap_servers="127.0.0.1:9")
    assert producer.bootstrap_servers == "127.0.0.1:9"
    assert producer.max_message_bytes == settings.kafka_max_message_bytes


def test_a_dead_letter_too_large_is_truncated_to_fit() -> None:
    producer = Producer("127.0.0.1:9", client_id="tests", max_message_bytes=8192)
    letters = DeadLetters(producer, "dlq", max_message_bytes=8192)
    incoming = Incoming("t", 0, 7, "k", b"v" * 10_000, {"trace": "abc"}, 0)
    letter = letters.letter(incoming, "too big")
    size = len(letter.key) + len(letter.value)
    size += sum(len(k) + len(v) for k, v in letter.headers.items())
    assert size <= 8192 - 4096
    assert letter.headers["x-dead-letter-truncated"] == "true"
    assert letter.headers["trace"] == "abc"
    assert letter.value == b"v" * len(letter.value)
    unknown = letters.letter(Incoming("t", 0, 8, None, None, {}, 0), "why")
    assert (unknown.key, unknown.value) == ("unknown", b"")
    assert "x-dead-letter-truncated" not in unknown.headers


# -- consuming ------------------------------------------------------------------------------


async def test_keys_run_concurrently_and_each_key_in_order(
    kafka_bootstrap_servers: str, topics: Topics, producer: Producer, session_timeout_ms: int
) -> None:
    # One partition, so both keys arrive in the same batch.
    await setup(kafka_bootstrap_servers, topics)
    a_started, b_started = asyncio.Event(), asyncio.Event()

    async def a_waits_for_b(_: int) -> None:
        a_started.set()
        await asyncio.wait_for(b_started.wait(), 5)

    async def b_waits_for_a(_: int) -> None:
        b_started.set()
        await asyncio.wait_for(a_started.wait(), 5)

    handler = Recorder()
    handler.behaviour[b"a-0"] = a_waits_for_b
    handler.behaviour[b"b-0"] = b_waits_for_a
    messages = [command(topics, key, f"{key}-{n}".encode()) for n in range(10) for key in "ab"]
    assert await producer.send_many(messages) == [None] * 20

    consumer = consumer_for(kafka_bootstrap_servers, topics, producer, handler, session_timeout_ms)
    async with running(consumer):
        await eventually(lambda: len(handler.seen) == 20)
        assert consumer.ready.is_set()
    for key in "ab":
        assert handler.values(key) == [f"{key}-{n}".encode() for n in range(10)]
    assert (consumer.processed, consumer.dead_lettered, consumer.retried) == (20, 0, 0)


async def test_a_poison_record_is_dead_lettered_and_those_behind_it_processed(
    kafka_bootstrap_servers: str, topics: Topics, producer: Producer, session_timeout_ms: int
) -> None:
    await setup(kafka_bootstrap_servers, topics)

    async def reject(_: int) -> None:
        raise MessageRejected("payload is not a booking command")

    handler = Recorder()
    handler.behaviour[b"poison"] = reject
    await producer.send_many(
        [
            command(topics, "k", b"v0"),
            command(topics, "k", b"poison", trace="t-1"),
            command(topics, "k", b"v2"),
            command(topics, "k", b"v3"),
        ]
    )
    consumer = consumer_for(kafka_bootstrap_servers, topics, producer, handler, session_timeout_ms)
    async with running(consumer):
        await eventually(lambda: handler.values() == [b"v0", b"v2", b"v3"])
        await eventually(lambda: consumer.dead_lettered == 1)

    (letter,) = await read(kafka_bootstrap_servers, topics.dead_letter, 1)
    headers = {name: value.decode() for name, value in letter.headers}
    assert (letter.key, letter.value) == (b"k", b"poison")
    assert headers["x-dead-letter-reason"] == "payload is not a booking command"
    assert headers["x-original-topic"] == topics.commands("booking")
    assert (headers["x-original-partition"], headers["x-original-offset"]) == ("0", "1")
    assert headers["trace"] == "t-1"
    assert headers["x-dead-lettered-at"].endswith("+00:00")
    assert handler.calls[b"poison"] == 1


async def test_oversize_and_undecodable_records_are_dead_lettered_unhandled(
    kafka_bootstrap_servers: str, topics: Topics, producer: Producer, session_timeout_ms: int
) -> None:
    await setup(kafka_bootstrap_servers, topics)
    await producer.send_many([command(topics, "k", b"small"), command(topics, "k", b"x" * 5000)])
    raw = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap_servers, enable_idempotence=False, acks="all"
    )
    await raw.start()
    try:
        await raw.send_and_wait(topics.commands("booking"), b"bad-key", key=b"\xff\xfe")
        await raw.send_and_wait(topics.commands("booking"), b"after", key=b"k")
    finally:
        await raw.stop()

    handler = Recorder()
    consumer = consumer_for(
        kafka_bootstrap_servers,
        topics,
        producer,
        handler,
        session_timeout_ms,
        max_message_bytes=2048,
    )
    async with running(consumer):
        await eventually(lambda: consumer.processed == 2 and consumer.dead_lettered == 2)
    assert handler.values() == [b"small", b"after"]

    letters = await read(kafka_bootstrap_servers, topics.dead_letter, 2)
    reasons = {r.value[:7]: dict(r.headers)["x-dead-letter-reason"].decode() for r in letters}
    assert reasons[b"x" * 7] == "value of 5000 bytes exceeds the limit of 2048 bytes"
    assert "not valid UTF-8" in reasons[b"bad-key"]
    assert {r.key for r in letters} == {b"k", b"\\xff\\xfe"}


async def test_an_unexpected_error_is_retried_then_dead_lettered(
    kafka_bootstrap_servers: str, topics: Topics, producer: Producer, session_timeout_ms: int
) -> None:
    await setup(kafka_bootstrap_servers, topics)

    async def boom(_: int) -> None:
        raise RuntimeError("boom")

    handler = Recorder()
    handler.behaviour[b"bug"] = boom
    await producer.send_many([command(topics, "k", b"bug"), command(topics, "k", b"next")])
    consumer = consumer_for(
        kafka_bootstrap_servers,
        topics,
        producer,
        handler,
        session_timeout_ms,
        unexpected_error_attempts=3,
    )
    async with running(consumer):
        await eventually(lambda: handler.values() == [b"next"])
    assert handler.calls[b"bug"] == 3
    assert (consumer.processed, consumer.dead_lettered, consumer.retried) == (1, 1, 2)
    (letter,) = await read(kafka_bootstrap_servers, topics.dead_letter, 1)
    assert dict(letter.headers)["x-dead-letter-reason"] == b"unexpected RuntimeError: boom"


async def test_a_retriable_error_is_retried_until_it_passes(
    kafka_bootstrap_servers: str, topics: Topics, producer: Producer, session_timeout_ms: int
) -> None:
    await setup(kafka_bootstrap_servers, topics)

    async def database_down_twice(call: int) -> None:
        if call <= 2:
            raise DatabaseUnavailable("connection refused")

    handler = Recorder()
    handler.behaviour[b"v1"] = database_down_twice
    await producer.send_many([command(topics, "k", b"v1"), command(topics, "k", b"v2")])
    # One attempt for unexpected errors: a retriable error must not count against it.
    consumer = consumer_for(
        kafka_bootstrap_servers,
        topics,
        producer,
        handler,
        session_timeout_ms,
        unexpected_error_attempts=1,
    )
    async with running(consumer):
        await eventually(lambda: handler.values() == [b"v1", b"v2"])
    assert handler.calls[b"v1"] == 3
    assert (consumer.processed, consumer.dead_lettered, consumer.retried) == (2, 0, 2)
    assert await read(kafka_bootstrap_servers, topics.dead_letter, 1, within=0.5) == []


async def test_stop_commits_a_batch_that_finishes_in_time_and_redelivers_one_that_does_not(
    kafka_bootstrap_servers: str, topics: Topics, producer: Producer, session_timeout_ms: int
) -> None:
    await setup(kafka_bootstrap_servers, topics)
    busy, stuck = asyncio.Event(), asyncio.Event()

    async def slow(_: int) -> None:
        busy.set()
        await asyncio.sleep(0.3)

    async def hang(_: int) -> None:
        stuck.set()
        await asyncio.Event().wait()  # a handler that never returns

    def member(handler: Recorder) -> BatchConsumer:
        return consumer_for(kafka_bootstrap_servers, topics, producer, handler, session_timeout_ms)

    async def stop_when(consumer: BatchConsumer, event: asyncio.Event, grace: float) -> float:
        task = asyncio.create_task(consumer.run())
        try:
            await asyncio.wait_for(event.wait(), 12)
        finally:
            started = time.monotonic()
            await consumer.stop(grace=grace)
            await task
        return time.monotonic() - started

    # Stopped mid-batch with time to spare: the batch finishes and is committed.
    await producer.send_many([command(topics, "k", f"v{n}".encode()) for n in range(3)])
    first = Recorder()
    first.behaviour[b"v1"] = slow
    await stop_when(member(first), busy, grace=5)
    assert first.values() == [b"v0", b"v1", b"v2"]

    # Stopped on a record that never finishes: what came before it is committed, the
    # rest is not.
    await producer.send_many([command(topics, "k", f"v{n}".encode()) for n in range(3, 6)])
    second = Recorder()
    second.behaviour[b"v4"] = hang
    assert await stop_when(member(second), stuck, grace=0.3) < 3, "stop() did not give up"
    assert second.values() == [b"v3"]

    third = Recorder()
    async with running(member(third)):
        await eventually(lambda: third.values() == [b"v4", b"v5"], within=12)
        await asyncio.sleep(0.2)  # and nothing else arrives
    assert third.values() == [b"v4", b"v5"]


async def drowsy_consumer(
    servers: str, topics: Topics, producer: Producer, session_timeout_ms: int, idle_poll_ms: int
) -> tuple[BatchConsumer, Recorder]:
    """A consumer of the test topic with ``idle_poll_ms``, and its handler (not started)."""
    await setup(servers, topics)
    handler = Recorder()
    consumer = consumer_for(
        servers, topics, producer, handler, session_timeout_ms, idle_poll_ms=idle_poll_ms
    )
    return consumer, handler


async def test_an_idle_consumer_fetches_less_often_and_wakes_for_the_next_record(
    kafka_bootstrap_servers: str, topics: Topics, producer: Producer, session_timeout_ms: int
) -> None:
    consumer, handler = await drowsy_consumer(
        kafka_bootstrap_servers, topics, producer, session_timeout_ms, idle_poll_ms=300
    )
    async with running(consumer):
        await producer.send_many([command(topics, "k", b"first")])
        await eventually(lambda: handler.values() == [b"first"])
        dozed = consumer.drowsy  # it may have dozed already while the group formed
        # A second without records: its fetches wait longer at the broker.
        await eventually(lambda: consumer.drowsy == dozed + 1, within=5.0)

        sent = time.monotonic()
        await producer.send_many([command(topics, "k", b"second")])
        await eventually(lambda: handler.values() == [b"first", b"second"], within=5.0)
        # At most one long wait (300 ms) stood between the record and its handler.
        assert time.monotonic() - sent < 2.0
        # The record restored the configured wait; the next quiet lengthens it again.
        await eventually(lambda: consumer.drowsy == dozed + 2, within=5.0)


async def test_a_consumer_told_not_to_drowse_keeps_its_fetch_wait(
    kafka_bootstrap_servers: str, topics: Topics, producer: Producer, session_timeout_ms: int
) -> None:
    consumer, handler = await drowsy_consumer(
        kafka_bootstrap_servers, topics, producer, session_timeout_ms, idle_poll_ms=0
    )
    async with running(consumer):
        await producer.send_many([command(topics, "k", b"only")])
        await eventually(lambda: handler.values() == [b"only"])
        await asyncio.sleep(1.5)
        assert consumer.drowsy == 0
