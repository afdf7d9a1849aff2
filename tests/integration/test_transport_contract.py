"""One contract for every adapter of the transport port, run against each of them.

:class:`TransportContract` holds the tests and speaks only the port (``Transport``,
``MessageSender``, ``Consumer``); each adapter's class below says how to make its transport,
how to store a raw record no sender would make, and how to read a topic back. The Kafka
adapter runs against the Tansu broker the fixtures start, with the short session timeout
the other transport tests use there (a rebalance then takes a few seconds, so the bounds
below are generous); the in-memory adapter needs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from saga.errors import BrokerUnavailable, ConfigurationError, MessageRejected
from saga.settings import Settings
from saga.transport import (
    Consumer,
    DeadLetters,
    Incoming,
    InMemoryBroker,
    InMemoryTransport,
    KafkaTransport,
    MessageSender,
    OutgoingMessage,
    Topics,
    Transport,
)

MAX_BYTES = 1_000_000
PARTITIONS = 4
REASON = "x-dead-letter-reason"


@dataclass(frozen=True)
class Letter:
    """A record read back from a topic."""

    key: bytes | None
    value: bytes
    headers: dict[str, str]


class Adapter(Protocol):
    """What the contract needs from each adapter's test class."""

    def transport(self, *, max_message_bytes: int = MAX_BYTES) -> Transport: ...

    async def publish_raw(self, topic: str, key: bytes, value: bytes) -> None: ...

    async def read(self, topic: str, count: int, *, within: float = 5.0) -> list[Letter]: ...


@dataclass
class Handled:
    """Every record handled, by which member, in the order handling finished."""

    order: list[tuple[str, str, bytes]] = field(default_factory=list)

    def values(self, key: str | None = None, member: str | None = None) -> list[bytes]:
        return [
            value
            for who, k, value in self.order
            if (key is None or k == key) and (member is None or who == member)
        ]

    def handler(
        self, member: str, misbehave: Callable[[Incoming], Awaitable[None]] | None = None
    ) -> Callable[[Incoming], Awaitable[None]]:
        async def handle(incoming: Incoming) -> None:
            if misbehave is not None:
                await misbehave(incoming)
            self.order.append((member, incoming.key or "", incoming.value or b""))

        return handle


async def eventually(check: Callable[[], bool], what: str, *, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {within} s"
        await asyncio.sleep(0.02)


def numbered(key: str, n: int) -> bytes:
    return f"{key}:{n:04d}".encode()


def number_of(value: bytes) -> int:
    return int(value.rsplit(b":", 1)[1])


def assert_in_order_at_least_once(handled: Handled, keys: list[str], count: int) -> None:
    """Per key, every message was handled, and none before the one ahead of it had been
    handled at least once (a redelivery may repeat earlier ones, never skip ahead)."""
    for key in keys:
        numbers = [number_of(value) for value in handled.values(key)]
        assert set(numbers) == set(range(count)), (
            f"{key}: missing {set(range(count)) - set(numbers)}"
        )
        highest = -1
        for number in numbers:
            assert number <= highest + 1, f"{key}: {number} handled before {highest + 1}"
            highest = max(highest, number)


class TransportContract:
    """The transport port's contract; subclasses provide the ``adapter`` fixture."""

    @pytest.fixture
    def topics(self) -> Topics:
        return Topics(prefix=f"contract.{uuid.uuid4().hex[:10]}")

    @pytest.fixture
    async def sender(self, adapter: Adapter, topics: Topics) -> AsyncIterator[MessageSender]:
        transport = adapter.transport()
        await transport.ensure_topics([topics.commands("booking"), topics.dead_letter])
        sender = transport.sender(client_id="contract")
        await sender.start()
        try:
            yield sender
        finally:
            await sender.stop()

    def member(
        self,
        transport: Transport,
        topics: Topics,
        sender: MessageSender,
        handle: Callable[[Incoming], Awaitable[None]],
        **options: object,
    ) -> Consumer:
        return transport.consumer(
            topics=[topics.commands("booking")],
            group_id=f"{topics.prefix}.group",
            handle=handle,
            dead_letters=DeadLetters(sender, topics.dead_letter, max_message_bytes=MAX_BYTES),
            client_id="contract",
            **options,  # type: ignore[arg-type]
        )

    # -- sending --------------------------------------------------------------------------

    async def test_a_sender_reports_each_message_on_its_own(
        self, adapter: Adapter, topics: Topics, sender: MessageSender
    ) -> None:
        small = OutgoingMessage(topics.commands("booking"), "k", b"fits")
        large = OutgoingMessage(topics.commands("booking"), "k", b"x" * (MAX_BYTES + 1))
        outcomes = await sender.send_many([small, large, small])
        assert outcomes[0] is None
        assert outcomes[2] is None
        assert isinstance(outcomes[1], MessageRejected)
        with pytest.raises(MessageRejected, match="size limit"):
            await sender.send(large)

    async def test_a_sender_must_be_started_and_fails_per_message_once_stopped(
        self, adapter: Adapter, topics: Topics
    ) -> None:
        sender = adapter.transport().sender(client_id="contract")
        message = OutgoingMessage(topics.commands("booking"), "k", b"v")
        with pytest.raises(ConfigurationError):
            await sender.send(message)
        await sender.start()
        await sender.stop()
        (outcome,) = await sender.send_many([message])
        assert isinstance(outcome, BrokerUnavailable)

    # -- order ----------------------------------------------------------------------------

    async def test_each_key_is_handled_in_order_and_keys_concurrently(
        self, adapter: Adapter, topics: Topics, sender: MessageSender
    ) -> None:
        keys = [f"saga-{n}" for n in range(6)]
        count = 25
        a_started, b_started = asyncio.Event(), asyncio.Event()

        async def first_two_keys_wait_for_each_other(incoming: Incoming) -> None:
            if incoming.value == numbered(keys[0], 0):
                a_started.set()
                await asyncio.wait_for(b_started.wait(), 10)
            elif incoming.value == numbered(keys[1], 0):
                b_started.set()
                await asyncio.wait_for(a_started.wait(), 10)

        messages = [
            OutgoingMessage(topics.commands("booking"), key, numbered(key, n))
            for n in range(count)
            for key in keys
        ]
        assert await sender.send_many(messages) == [None] * len(messages)
        handled = Handled()
        consumer = self.member(
            adapter.transport(),
            topics,
            sender,
            handled.handler("a", first_two_keys_wait_for_each_other),
        )
        async with running(consumer):
            await eventually(lambda: len(handled.order) == len(messages), "every message handled")
        for key in keys:
            assert handled.values(key) == [numbered(key, n) for n in range(count)]
        assert (consumer.processed, consumer.dead_lettered, consumer.retried) == (150, 0, 0)

    # -- at least once --------------------------------------------------------------------

    async def test_a_message_handled_but_not_committed_before_a_crash_is_delivered_again(
        self, adapter: Adapter, topics: Topics, sender: MessageSender
    ) -> None:
        transport = adapter.transport()
        handled = Handled()
        crashing = asyncio.Event()

        async def handle_then_hang_on_v3(incoming: Incoming) -> None:
            handled.order.append(("a", incoming.key or "", incoming.value or b""))
            if incoming.value == b"v3":
                crashing.set()
                await asyncio.Event().wait()  # its effect is done; the commit never comes

        values = [f"v{n}".encode() for n in range(6)]
        await sender.send_many(
            [OutgoingMessage(topics.commands("booking"), "k", v) for v in values]
        )
        first = self.member(transport, topics, sender, handle_then_hang_on_v3)
        crashed = asyncio.create_task(first.run())
        await asyncio.wait_for(crashing.wait(), 30)
        crashed.cancel()  # the process dies between handling and committing
        with contextlib.suppress(asyncio.CancelledError):
            await crashed
        assert handled.values(member="a")[-1] == b"v3"

        second = self.member(transport, topics, sender, handled.handler("b"))
        async with running(second):
            await eventually(lambda: handled.values(member="b")[-2:] == [b"v4", b"v5"], "v4, v5")
        again = handled.values(member="b")
        assert b"v3" in again, f"v3 was not delivered again: {again}"
        assert again == values[values.index(again[0]) :], "redelivered out of order"

    async def test_a_stop_commits_what_came_before_a_hung_record_and_not_the_rest(
        self, adapter: Adapter, topics: Topics, sender: MessageSender
    ) -> None:
        transport = adapter.transport()
        handled = Handled()
        stuck = asyncio.Event()

        async def hang_on_v2(incoming: Incoming) -> None:
            if incoming.value == b"v2":
                stuck.set()
                await asyncio.Event().wait()

        values = [f"v{n}".encode() for n in range(5)]
        messages = [OutgoingMessage(topics.commands("booking"), "k", v) for v in values]
        await sender.send_many(messages)
        first = self.member(transport, topics, sender, handled.handler("a", hang_on_v2))
        task = asyncio.create_task(first.run())
        await asyncio.wait_for(stuck.wait(), 30)
        started = time.monotonic()
        await first.stop(grace=0.3)
        await task
        assert time.monotonic() - started < 5, "stop() did not give up on the hung record"
        assert handled.values(member="a") == [b"v0", b"v1"]

        second = self.member(transport, topics, sender, handled.handler("b"))
        async with running(second):
            await eventually(lambda: handled.values(member="b") == values[2:], "v2, v3, v4")
            await asyncio.sleep(0.2)  # and nothing else arrives
        assert handled.values(member="b") == values[2:]

    # -- dead letters ---------------------------------------------------------------------

    async def test_bad_records_are_dead_lettered_and_the_records_behind_them_handled(
        self, adapter: Adapter, topics: Topics, sender: MessageSender
    ) -> None:
        command_topic = topics.commands("booking")
        loose = adapter.transport(max_message_bytes=4 * MAX_BYTES).sender(client_id="loose")
        await loose.start()
        try:
            await loose.send(OutgoingMessage(command_topic, "k", b"o" * (MAX_BYTES + 10)))
        finally:
            await loose.stop()
        await adapter.publish_raw(command_topic, b"\xff\xfe", b"bad-key")
        await sender.send_many(
            [
                OutgoingMessage(command_topic, "k", b"refused"),
                OutgoingMessage(command_topic, "k", b"bug"),
                OutgoingMessage(command_topic, "k", b"after"),
            ]
        )

        async def misbehave(incoming: Incoming) -> None:
            if incoming.value == b"refused":
                raise MessageRejected("no saga knows this message")
            if incoming.value == b"bug":
                raise RuntimeError("boom")

        handled = Handled()
        consumer = self.member(adapter.transport(), topics, sender, handled.handler("a", misbehave))
        async with running(consumer):
            await eventually(lambda: consumer.dead_lettered == 4, "four dead letters")
            await eventually(lambda: handled.values() == [b"after"], "the record behind them")
        assert consumer.retried == 2  # the bug was tried three times in all

        letters = await adapter.read(topics.dead_letter, 4)
        reasons = {letter.value[:7]: letter.headers[REASON] for letter in letters}
        assert reasons[b"o" * 7] == (
            f"value of {MAX_BYTES + 10} bytes exceeds the limit of {MAX_BYTES} bytes"
        )
        assert "not valid UTF-8" in reasons[b"bad-key"]
        assert reasons[b"refused"] == "no saga knows this message"
        assert reasons[b"bug"] == "unexpected RuntimeError: boom"
        assert {letter.key for letter in letters} == {b"k", b"\\xff\\xfe"}
        assert all(letter.headers["x-original-topic"] == command_topic for letter in letters)

    # -- rebalance ------------------------------------------------------------------------

    async def test_members_joining_and_leaving_lose_nothing_and_keep_each_key_in_order(
        self, adapter: Adapter, topics: Topics, sender: MessageSender
    ) -> None:
        transport = adapter.transport()
        keys = [f"saga-{n}" for n in range(12)]
        per_round = 15
        handled = Handled()

        async def slowly(_: Incoming) -> None:
            await asyncio.sleep(0.002)  # so that a rebalance finds batches in hand

        async def send_round(number: int) -> None:
            messages = [
                OutgoingMessage(topics.commands("booking"), key, numbered(key, n))
                for n in range(number * per_round, (number + 1) * per_round)
                for key in keys
            ]
            assert await sender.send_many(messages) == [None] * len(messages)

        first = self.member(transport, topics, sender, handled.handler("a", slowly))
        second = self.member(transport, topics, sender, handled.handler("b", slowly))
        async with running(first):
            await send_round(0)
            await eventually(lambda: len(handled.order) > 0, "the first member handling")
            async with running(second):
                await eventually(
                    lambda: (
                        bool(first.assignment())
                        and bool(second.assignment())
                        and first.assignment().isdisjoint(second.assignment())
                        and len(first.assignment() | second.assignment()) == PARTITIONS
                    ),
                    "the partitions shared between the two members",
                    within=60,
                )
                await send_round(1)
                await eventually(lambda: bool(handled.values(member="b")), "the second handling")
                await send_round(2)
                await first.stop(grace=5)
                await eventually(
                    lambda: len(second.assignment()) == PARTITIONS,
                    "the second member taking every partition",
                    within=60,
                )
                await send_round(3)
                await eventually(
                    lambda: all(
                        numbered(key, 4 * per_round - 1) in handled.values(key) for key in keys
                    ),
                    "every message handled",
                    within=60,
                )
        assert first.rebalances >= 1
        assert second.rebalances >= 1
        assert_in_order_at_least_once(handled, keys, 4 * per_round)


@asynccontextmanager
async def running(consumer: Consumer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(consumer.run())
    try:
        yield task
    finally:
        await consumer.stop(grace=2.0)
        await task


# -- the adapters -----------------------------------------------------------------------------


@pytest.mark.integration
class TestKafkaTransport(TransportContract):
    """Kafka through aiokafka, against the broker the fixtures start (Tansu)."""

    @pytest.fixture
    def adapter(self, kafka_bootstrap_servers: str, settings: Settings) -> Adapter:
        return _Kafka(kafka_bootstrap_servers, settings)


class TestInMemoryTransport(TransportContract):
    """The in-process broker."""

    @pytest.fixture
    def adapter(self) -> Adapter:
        return _InMemory(InMemoryBroker())


class _Kafka:
    def __init__(self, servers: str, settings: Settings) -> None:
        self.servers = servers
        # Apache Kafka refuses session timeouts under 6 s; Tansu takes 2 s, and a
        # rebalance then takes a few seconds instead of ten.
        session_timeout_ms = 6000 if settings.kafka_bootstrap_servers else 2000
        self.settings = settings.model_copy(
            update={
                "kafka_topic_partitions": PARTITIONS,
                "kafka_fetch_max_wait_ms": 10,
                "kafka_session_timeout_ms": session_timeout_ms,
                "kafka_heartbeat_interval_ms": session_timeout_ms // 4,
                "kafka_max_message_bytes": MAX_BYTES,
            }
        )

    def transport(self, *, max_message_bytes: int = MAX_BYTES) -> Transport:
        settings = self.settings.model_copy(update={"kafka_max_message_bytes": max_message_bytes})
        return KafkaTransport(settings, bootstrap_servers=self.servers)

    async def publish_raw(self, topic: str, key: bytes, value: bytes) -> None:
        raw = AIOKafkaProducer(bootstrap_servers=self.servers, enable_idempotence=False, acks="all")
        await raw.start()
        try:
            await raw.send_and_wait(topic, value, key=key)
        finally:
            await raw.stop()

    async def read(self, topic: str, count: int, *, within: float = 5.0) -> list[Letter]:
        reader = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.servers,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,
            max_partition_fetch_bytes=4 * MAX_BYTES,
        )
        await reader.start()
        letters: list[Letter] = []
        try:
            deadline = time.monotonic() + within
            while len(letters) < count and time.monotonic() < deadline:
                for batch in (await reader.getmany(timeout_ms=100)).values():
                    letters.extend(
                        Letter(
                            r.key,
                            r.value or b"",
                            {name: (v or b"").decode() for name, v in r.headers},
                        )
                        for r in batch
                    )
        finally:
            await reader.stop()
        return letters


class _InMemory:
    def __init__(self, broker: InMemoryBroker) -> None:
        self.broker = broker

    def transport(self, *, max_message_bytes: int = MAX_BYTES) -> Transport:
        return InMemoryTransport(
            self.broker, partitions=PARTITIONS, max_message_bytes=max_message_bytes
        )

    async def publish_raw(self, topic: str, key: bytes, value: bytes) -> None:
        self.broker.publish(topic, value, key=key)

    async def read(self, topic: str, count: int, *, within: float = 5.0) -> list[Letter]:
        await eventually(lambda: len(self.broker.records(topic)) >= count, f"{count} records")
        return [
            Letter(r.key, r.value or b"", {name: (v or b"").decode() for name, v in r.headers})
            for r in self.broker.records(topic)
        ]
