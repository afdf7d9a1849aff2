"""The reliability suite's fault injectors (benchmarks/reliability/faults.py) against the
real broker and PostgreSQL: each injects what it counts, and the engine copes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy.engine import make_url

from benchmarks.reliability.faults import (
    BACKEND_TERMINATED,
    COPY_HEADER,
    DUPLICATE_DELIVERY,
    FAULT_DEFINITION,
    FAULT_KIND_HEADER,
    POISON_KINDS,
    POISON_OVERSIZE,
    POISON_UNKNOWN_ACTION,
    REPLY_REORDERED,
    SERIALIZATION_CONFLICT,
    SPOILERS,
    BackendTerminator,
    Contention,
    DeadLetterCounter,
    Duplicator,
    PoisonInjector,
    topic_role,
)
from journeys import world
from journeys.care.sagas import book_appointment
from journeys.invariants import check_invariants
from saga.embedded import EmbeddedBroker
from saga.errors import MalformedMessage, MessageRejected
from saga.machine import Outcome, Phase, SagaStatus
from saga.messages import Command, Reply, decode
from saga.participant import Handler, StepContext
from saga.participant.journey import JourneyService, discover_journeys
from saga.settings import Settings, to_plain_url
from saga.stack import RunningServices, running_services
from saga.store.driver import DriverConnection
from saga.transport import (
    BatchConsumer,
    DeadLetters,
    Incoming,
    OutgoingMessage,
    Producer,
    Topics,
    ensure_topics,
)
from tests.integration.conftest import SagaEnvironment
from tests.integration.sagas import ALL_DONE, BOOKING, cluster, create_effect_tables, executions

pytestmark = pytest.mark.integration


@pytest.fixture
def session_timeout_ms(settings: Settings) -> int:
    # Kafka refuses session timeouts under 6 s; on Tansu a short one makes joins quick.
    return 6000 if settings.kafka_bootstrap_servers else 2000


@contextlib.asynccontextmanager
async def running(*injectors: Any) -> AsyncIterator[asyncio.Event]:
    """Each injector's run() as a task until the block ends; a task that failed fails
    the test."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(injector.run(stop)) for injector in injectors]
    try:
        yield stop
    finally:
        stop.set()
        async with asyncio.timeout(30):
            for task in tasks:
                await task


async def eventually(condition: Callable[[], bool], *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.05)


async def read_all(servers: str, topic: str, *, quiet: float = 1.0) -> list[Any]:
    """Every record of ``topic`` from its start, read without a group, until none came
    for ``quiet`` seconds."""
    reader = AIOKafkaConsumer(
        topic, bootstrap_servers=servers, auto_offset_reset="earliest", fetch_max_wait_ms=10
    )
    await reader.start()
    records: list[Any] = []
    try:
        last = time.monotonic()
        while time.monotonic() - last < quiet:
            for batch in (await reader.getmany(timeout_ms=100)).values():
                records.extend(batch)
                last = time.monotonic()
    finally:
        await reader.stop()
    return sorted(records, key=lambda r: (r.partition, r.offset))


def headers_of(record: Any) -> dict[str, str]:
    return {name: (value or b"").decode() for name, value in record.headers}


def reply_message(saga_id: uuid.UUID, step: int, *, definition: str = "test_booking") -> Reply:
    return Reply(
        message_id=uuid.uuid4(),
        saga_id=saga_id,
        definition=definition,
        definition_version=1,
        step_index=step,
        step_name=f"step{step}",
        journey="care",
        phase=Phase.EXECUTE,
        attempt=1,
        in_reply_to=uuid.uuid4(),
        outcome=Outcome.SUCCEEDED,
    )


def command_message(saga_id: uuid.UUID, step: int, topics: Topics) -> Command:
    return Command(
        message_id=uuid.uuid4(),
        saga_id=saga_id,
        definition="test_booking",
        definition_version=1,
        step_index=step,
        step_name=f"step{step}",
        journey="care",
        phase=Phase.EXECUTE,
        attempt=1,
        action="reserve",
        timeout_ms=1000,
        reply_to=topics.replies,
    )


# -- what the poison is made of -------------------------------------------------------------


def test_topic_roles_and_poison_values_are_what_they_claim() -> None:
    assert topic_role("test.ab.care.commands").journey == "care"
    assert topic_role("test.ab.care.commands").topics.replies == "test.ab.replies"
    assert topic_role("test.ab.replies").replies
    for wrong in ("test.ab.dead-letter", "commands", "test.commands.x"):
        with pytest.raises(ValueError, match="neither"):
            topic_role(wrong)

    topics = ["p.care.commands", "p.replies"]
    injector = PoisonInjector("127.0.0.1:9", topics, 2048, draw=random.Random(3))
    for topic in topics:
        role = topic_role(topic)
        # Every way of spoiling a valid envelope fails validation.
        for _, spoil in SPOILERS:
            document = injector._envelope(role, uuid.uuid4()).to_document()
            spoil(document)
            with pytest.raises(MalformedMessage):
                decode(json.dumps(document).encode())
        for kind in POISON_KINDS:
            for _ in range(25):  # every variant of each kind, drawn at random
                value = injector._value(role, kind, uuid.uuid4())
                if kind == POISON_OVERSIZE:
                    assert len(value) > 2048
                elif kind == POISON_UNKNOWN_ACTION:
                    message = decode(value)
                    assert isinstance(message, Reply if role.replies else Command)
                    assert message.definition == FAULT_DEFINITION
                else:
                    with pytest.raises(MalformedMessage):
                        decode(value)


# -- duplicate delivery and reordered replies -----------------------------------------------


async def test_duplicator_delivers_each_original_twice_and_replies_copies_late(
    kafka_bootstrap_servers: str, session_timeout_ms: int
) -> None:
    topics = Topics(prefix=f"test.{uuid.uuid4().hex[:10]}")
    commands = topics.commands("care")
    await ensure_topics(kafka_bootstrap_servers, [commands, topics.replies], partitions=2)
    duplicator = Duplicator(
        kafka_bootstrap_servers,
        [commands, topics.replies],
        draw=random.Random(7),
        reply_delay=(1.0, 1.4),
        session_timeout_ms=session_timeout_ms,
    )
    sagas = [uuid.uuid4(), uuid.uuid4()]
    originals: list[tuple[str, bytes, bytes]] = []  # (topic, key, value)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        async with running(duplicator):
            async with asyncio.timeout(30):
                await duplicator.ready.wait()
            # Three rounds half a second apart: each saga's command, then its reply.
            for step in range(3):
                for saga_id in sagas:
                    for topic, message in (
                        (commands, command_message(saga_id, step, topics)),
                        (topics.replies, reply_message(saga_id, step)),
                    ):
                        value = message.to_bytes()
                        key = str(saga_id).encode()
                        await producer.send_and_wait(
                            topic, value, key=key, headers=[("traceparent", b"t")]
                        )
                        originals.append((topic, key, value))
                await asyncio.sleep(0.5)
            # What must never be copied: a poison record, and the participant's failed
            # reply to an unknown action (an envelope of the fault definition).
            await producer.send_and_wait(
                commands, b"garbage", key=b"k", headers=[(FAULT_KIND_HEADER, b"poison_garbage")]
            )
            failed = reply_message(uuid.uuid4(), 0, definition=FAULT_DEFINITION).to_bytes()
            await producer.send_and_wait(topics.replies, failed, key=b"k")
            await eventually(
                lambda: duplicator.injected[DUPLICATE_DELIVERY] >= 12, within=20, what="copies"
            )
            await asyncio.sleep(1.0)  # a copy of a copy would show up by now
    finally:
        await producer.stop()

    assert duplicator.injected[DUPLICATE_DELIVERY] == 12
    logs = {
        commands: await read_all(kafka_bootstrap_servers, commands),
        topics.replies: await read_all(kafka_bootstrap_servers, topics.replies),
    }
    seen: Counter[tuple[str, bytes, bytes, bool]] = Counter()
    for topic, records in logs.items():
        for record in records:
            headers = headers_of(record)
            is_copy = headers.pop(COPY_HEADER, None) == "1"
            seen[(topic, record.key, record.value, is_copy)] += 1
            if record.value not in (b"garbage", failed):
                assert headers == {"traceparent": "t"}  # the original's headers, kept
    # Each original is there twice: once as itself, once as a copy; the rest once.
    assert seen == Counter(
        {(topic, key, value, copy): 1 for topic, key, value in originals for copy in (False, True)}
        | {(commands, b"k", b"garbage", False): 1, (topics.replies, b"k", failed, False): 1}
    )
    # A copy shares its original's partition.
    for records in logs.values():
        partitions: dict[tuple[bytes, bytes], set[int]] = {}
        for r in records:
            partitions.setdefault((r.key, r.value), set()).add(r.partition)
        assert all(len(found) == 1 for found in partitions.values())

    # Reordered: a copy that lands after a later original of its key. Commands' copies go
    # out at once (never); replies' copies wait 1-1.4 s, so those of the first two rounds
    # land behind the next round's reply.
    def reordered(records: list[Any]) -> int:
        count = 0
        for index, record in enumerate(records):
            if COPY_HEADER not in headers_of(record):
                continue
            position = next(
                i
                for i, r in enumerate(records)
                if r.value == record.value and COPY_HEADER not in headers_of(r)
            )
            count += any(
                r.key == record.key and COPY_HEADER not in headers_of(r)
                for r in records[position + 1 : index]
            )
        return count

    assert reordered(logs[commands]) == 0
    assert reordered(logs[topics.replies]) == 4
    assert duplicator.injected[REPLY_REORDERED] == 4


# -- poison ---------------------------------------------------------------------------------


async def test_poison_is_dead_lettered_and_a_saga_behind_it_completes(
    saga_env: SagaEnvironment, session_timeout_ms: int
) -> None:
    env = saga_env
    # One partition per topic: the saga's messages queue behind every poison record.
    settings = env.settings.model_copy(update={"kafka_topic_partitions": 1})
    topics = Topics.from_settings(settings)
    poisoned = [*(topics.commands(j) for j in ("care", "plan", "gamification")), topics.replies]
    await ensure_topics(env.bootstrap, [*poisoned, topics.dead_letter], partitions=1)
    await create_effect_tables(env.database)
    injector = PoisonInjector(
        env.bootstrap,
        poisoned,
        settings.kafka_max_message_bytes,
        draw=random.Random(11),
        every=0.05,
    )
    counter = DeadLetterCounter(
        env.bootstrap, topics.dead_letter, session_timeout_ms=session_timeout_ms
    )
    async with running(counter):
        # Every kind on every topic, then a second of random ones.
        for topic in poisoned:
            for kind in POISON_KINDS:
                assert await injector.inject(topic, kind) is not None
        async with running(injector):
            await asyncio.sleep(1.0)
        assert injector.injected.total() == len(injector.sent) > 16
        assert set(injector.injected) == set(POISON_KINDS)

        async with cluster(settings, env.database, env.bootstrap) as services:
            coordinator = services.coordinators[0]
            await coordinator.register(BOOKING)
            saga_id = await coordinator.start(BOOKING, {"n": 1})
            summary = await coordinator.wait(saga_id, timeout=60)
            assert summary.status is SagaStatus.COMPLETED, summary.error
            expected = injector.expected_dead_letters()
            await eventually(
                lambda: counter.total >= expected, within=30, what=f"{expected} dead letters"
            )
            await asyncio.sleep(1.0)  # nothing more is dead-lettered
    assert await executions(env.database, saga_id) == ALL_DONE

    assert counter.total == expected
    assert counter.by_kind == injector.expected_by_kind()
    # Every poison record is on the dead-letter topic once, still marked with its kind;
    # the unknown actions' failed replies are the only dead letters not marked.
    assert counter.by_fault == injector.injected
    unmarked = [letter for letter in counter.letters if letter.fault is None]
    unknown_commands = [
        p for p in injector.sent if p.kind == POISON_UNKNOWN_ACTION and not p.replies
    ]
    assert sorted(letter.key or "" for letter in unmarked) == sorted(
        p.key for p in unknown_commands
    )
    assert all(letter.original_topic == topics.replies for letter in unmarked)
    assert all("unknown saga" in letter.reason for letter in unmarked)
    assert {letter.key for letter in counter.letters} <= {p.key for p in injector.sent}
    assert set(counter.by_topic) == set(poisoned)


# -- dead letters ---------------------------------------------------------------------------


async def dead_letter_some(
    broker: EmbeddedBroker, topics: Topics, values: list[bytes], handled: int
) -> None:
    """Feed ``values`` through a real BatchConsumer whose handler decodes each and
    rejects what decodes (``b"boom"`` raises instead), until ``handled`` were dead-lettered."""

    async def handle(incoming: Incoming) -> None:
        if incoming.value == b"boom":
            raise RuntimeError("boom")
        message = decode(incoming.value)
        raise MessageRejected(f"nobody handles a {message.kind} here")

    async with Producer(
        broker.bootstrap_servers, client_id="tests", max_message_bytes=1_000_000
    ) as producer:
        records = [OutgoingMessage(topics.commands("care"), str(uuid.uuid4()), v) for v in values]
        assert await producer.send_many(records) == [None] * len(values)
        consumer = BatchConsumer(
            bootstrap_servers=broker.bootstrap_servers,
            topics=[topics.commands("care")],
            group_id=f"{topics.prefix}.{uuid.uuid4().hex[:6]}",
            handle=handle,
            dead_letters=DeadLetters(producer, topics.dead_letter, max_message_bytes=1_000_000),
            client_id="tests",
            fetch_max_wait_ms=10,
            max_message_bytes=2048,
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
            unexpected_error_attempts=2,
            retry_delay=0.01,
            max_retry_delay=0.05,
        )
        task = asyncio.create_task(consumer.run())
        try:
            await eventually(
                lambda: consumer.dead_lettered == handled, within=30, what="dead-lettered"
            )
        finally:
            await consumer.stop(grace=1.0)
            await task


async def test_dead_letter_counter_counts_by_kind_and_survives_a_broker_restart() -> None:
    topics = Topics(prefix=f"test.{uuid.uuid4().hex[:10]}")
    names = [topics.commands("care"), topics.dead_letter]
    valid = command_message(uuid.uuid4(), 0, topics).to_bytes()
    with EmbeddedBroker() as broker:
        await ensure_topics(broker.bootstrap_servers, names, partitions=1)
        counter = DeadLetterCounter(
            broker.bootstrap_servers, topics.dead_letter, session_timeout_ms=2000
        )
        async with running(counter):
            await dead_letter_some(broker, topics, [b"{not json", b"x" * 5000, valid, b"boom"], 4)
            await eventually(lambda: counter.total == 4, within=20, what="4 counted")
            assert counter.by_kind == {"malformed": 1, "oversize": 1, "rejected": 1, "exhausted": 1}

            # Everything the broker held is lost; the counter must notice the new letters
            # by itself once the topics are back.
            await asyncio.to_thread(broker.restart)
            await ensure_topics(broker.bootstrap_servers, names, partitions=1)
            await dead_letter_some(broker, topics, [b"", valid, valid], 3)
            await eventually(lambda: counter.total == 7, within=60, what="7 counted")
            await asyncio.sleep(1.0)
    assert counter.total == 7
    assert counter.by_kind == {"malformed": 2, "oversize": 1, "rejected": 3, "exhausted": 1}
    assert counter.by_topic == {topics.commands("care"): 7}


# -- database faults ------------------------------------------------------------------------


@pytest.mark.embedded
async def test_backend_terminator_terminates_only_the_engines_backends_on_its_database(
    admin_database_url: str, fresh_database_url: str
) -> None:
    database = make_url(fresh_database_url).database
    assert database is not None

    async def connect(url: str, name: str) -> asyncpg.Connection:
        return await asyncpg.connect(to_plain_url(url), server_settings={"application_name": name})

    victims = [
        await connect(fresh_database_url, "saga-participant-care"),
        await connect(fresh_database_url, "saga-worker"),
    ]
    bystander = await connect(fresh_database_url, "tests")
    elsewhere = await connect(admin_database_url, "saga-coordinator")
    pids = {conn.get_server_pid(): conn for conn in victims}
    terminator = BackendTerminator(admin_database_url, database, draw=random.Random(5), every=0.05)
    try:
        async with running(terminator):
            await eventually(
                lambda: terminator.injected[BACKEND_TERMINATED] == 2, within=20, what="2 kills"
            )
            await asyncio.sleep(0.5)  # nothing else is eligible
        assert terminator.injected == {BACKEND_TERMINATED: 2}
        assert {b.pid for b in terminator.terminated} == set(pids)
        assert {b.application_name for b in terminator.terminated} == {
            "saga-participant-care",
            "saga-worker",
        }
        # Gone for PostgreSQL and for the client.
        listed = await bystander.fetch(
            "SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])", list(pids)
        )
        assert listed == []
        for conn in victims:
            with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
                await conn.fetchval("SELECT 1")
        assert await bystander.fetchval("SELECT 1") == 1
        assert await elsewhere.fetchval("SELECT 1") == 1
    finally:
        for conn in [*victims, bystander, elsewhere]:
            await conn.close()


def snapshot_first(service: JourneyService, action: str, seconds: float) -> JourneyService:
    """``service`` whose ``action`` takes its transaction's snapshot and waits
    ``seconds`` before running, the first time for each saga: long enough for a
    concurrent commit to land in between, as it would by chance under load."""
    handler = service.handlers[action]
    waited: set[uuid.UUID] = set()

    async def run(step: StepContext) -> Mapping[str, Any] | None:
        if step.saga_id not in waited:
            waited.add(step.saga_id)
            await step.connection.execute("SELECT 1")
            await asyncio.sleep(seconds)
        return await handler(step)

    handlers: dict[str, Handler] = {**service.handlers, action: run}
    return dataclasses.replace(service, handlers=handlers)


@pytest.fixture
async def slowed_plan(saga_env: SagaEnvironment) -> AsyncIterator[RunningServices]:
    journeys = [
        snapshot_first(service, "authorize_coverage", 0.4) if service.name == "plan" else service
        for service in discover_journeys().values()
    ]
    async with running_services(
        saga_env.settings,
        database_url=saga_env.database_url,
        bootstrap_servers=saga_env.bootstrap,
        journeys=journeys,
    ) as services:
        yield services


@pytest.mark.embedded
async def test_contention_makes_the_plan_step_retry_without_changing_what_it_decides(
    saga_env: SagaEnvironment, slowed_plan: RunningServices
) -> None:
    services = slowed_plan

    async def build(conn: DriverConnection) -> tuple[world.Member, list[world.Slot]]:
        # Room for two bookings of 10,000: the third must be refused, contention or not.
        member = await world.create_member(conn, limit_cents=25_000)
        provider = await world.create_provider(conn)
        return member, await world.create_slots(conn, provider, 3)

    member, slots = await services.database.run_driver(build)
    contention = Contention(
        saga_env.database_url,
        draw=random.Random(13),
        every=0.05,
        hold=(0.01, 0.03),
        targets=("coverage",),
    )
    outcomes = []
    async with running(contention):
        for slot in slots:  # one at a time: the bookings never conflict with each other
            saga_id = await book_appointment(
                services.coordinator,
                user_id=member.user_id,
                slot_id=slot.slot_id,
                amount_cents=10_000,
            )
            summary = await services.coordinator.wait(saga_id, timeout=60)
            outcomes.append((summary.status, summary.error))
    retries = await contention.participant_retries()
    await contention.close()

    assert [status for status, _ in outcomes] == [
        SagaStatus.COMPLETED,
        SagaStatus.COMPLETED,
        SagaStatus.COMPENSATED,
    ], outcomes
    assert "not covered" in (outcomes[2][1] or "")
    assert contention.injected[SERIALIZATION_CONFLICT] > 0
    # Each booking's authorization lost to a contention commit at least once and re-ran.
    assert retries["40001"] >= 3, (retries, contention.aborted)
    assert services.journey_databases["plan"].retries.by_sqlstate["40001"] >= 3
    coverage = await services.database.run_driver(
        lambda conn: conn.fetchrow(
            "SELECT used_cents, reserved_cents FROM plan_journey.plan_member_coverage "
            "WHERE id = $1",
            member.coverage_id,
        ),
        transaction=False,
    )
    assert coverage is not None
    assert dict(coverage) == {"used_cents": 0, "reserved_cents": 20_000}
    (await check_invariants(services.database)).raise_if_violated()
