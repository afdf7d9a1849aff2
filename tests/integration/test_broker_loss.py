"""The broker restarts twice in the middle of a load and loses everything it held.

Real ``saga run ...`` processes (a coordinator, the four journey participants, the worker)
run a mixed load of bookings, claims and goal completions on a broker of this test's own
(the in-memory Tansu broker, not the session's). While sagas are in flight the broker is
restarted on the same port, twice a few seconds apart: every message, topic, committed
offset and consumer group it held is gone. Nothing is injected into the engine to help it.

What must hold afterwards:

- every process is still the one that was started (none crashed or exited on the lost
  topics, groups or offsets) and answers ``/ready``;
- every saga finishes: none left running, none parked (two restarts cost a step at most
  two of its three attempts, so nothing needs an operator), and the invariant check is
  clean (each completed saga's effects once, each compensated saga's none);
- the consumers really consume again: sagas started after the restarts finish without a
  single step timing out, so they were carried by the consumers, not rescued by the
  worker re-sending lost commands.

It prints the seconds from the last restart until every saga started before it has
finished (and requires fewer than RECOVERY_LIMIT: lost messages wait for their step's
timeout, 5 s, or a lost child saga's end for its parent's next look at it, 30 s; not for a
broker-side timeout). Without the topics made again after each rebalance
(``MessagingRuntime.restore_topics``), sagas are left running.

Below it, one test per other failure the fleet ran into, each on a consumer or a producer
of its own, so that each fix is proven by itself: a batch in hand during the restart must
not commit its old offsets over the new log, a commit the broker keeps refusing must not
stop the consumer, and a send refused while the topic is made again is tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from journeys.health.sagas import COMPLETE_HEALTH_GOAL_V2
from journeys.invariants import check_invariants
from saga import SubSaga
from saga.embedded import EmbeddedBroker
from saga.settings import Settings
from saga.store import admin
from saga.store.driver import DriverConnection
from saga.transport import (
    BatchConsumer,
    DeadLetters,
    Handler,
    Incoming,
    OutgoingMessage,
    Producer,
    ensure_topics,
)
from tests.integration.conftest import SagaEnvironment, open_saga_environment
from tests.integration.fleet import Fleet, count_finished, fleet, log_events, prepare_mix
from tests.integration.sagas import starter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SAGAS = 200
AFTER = 12  # sagas started once the broker is back for good: they must not need rescue
BURST = 4  # sagas started at once, every BURST_PAUSE seconds: about 16 a second
BURST_PAUSE = 0.25
RESTART_GAP = 3.0  # seconds between the two restarts
IN_FLIGHT = 3  # a restart waits until at least this many sagas are unfinished
DRAIN_WITHIN = 90.0
# A lost command is sent again at its step's timeout (5 s); a child saga's end that the
# broker lost is found at its parent's next look at the child (SubSaga.check_every, 30 s
# for the goal completion's wellness credit). Seconds from the last restart until the
# sagas it caught finish, with room for the worker's poll and a loaded machine:
RECOVERY_LIMIT = 15.0 + next(
    position.check_every
    for position in COMPLETE_HEALTH_GOAL_V2.positions
    if isinstance(position, SubSaga)
)
# Every state a saga ends in, parked included: waiting stops when none is left moving.
TERMINAL = ("completed", "compensated", "aborted", "parked")
LAYOUT = {
    "coordinator": ["run", "coordinator"],
    "care": ["run", "participant", "--journey", "care"],
    "plan": ["run", "participant", "--journey", "plan"],
    "health": ["run", "participant", "--journey", "health"],
    "gamification": ["run", "participant", "--journey", "gamification"],
    "worker": ["run", "worker"],
}


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture
async def lossy_env(
    settings: Settings,
    admin_database_url: str,
    template_database_name: str,
    own_broker: EmbeddedBroker,
) -> AsyncIterator[SagaEnvironment]:
    name = f"austa_test_saga_{uuid.uuid4().hex[:12]}"
    env = await open_saga_environment(
        settings, admin_database_url, template_database_name, own_broker.bootstrap_servers, name
    )
    try:
        yield env
    finally:
        await env.database.dispose()
        await admin.drop_database(admin_database_url, name)


async def test_broker_restarts_mid_load_lose_no_saga(
    lossy_env: SagaEnvironment, own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    env = lossy_env
    starting = await prepare_mix(env, SAGAS + AFTER)
    load, after = starting[:SAGAS], starting[SAGAS:]
    with fleet(env, tmp_path) as running:
        for name, argv in LAYOUT.items():
            running.add(name, *argv)
            running.start(name)
        await running.wait_ready()

        ids: list[uuid.UUID] = []
        async with starter(env) as coordinator:

            async def start_load() -> None:
                for first in range(0, SAGAS, BURST):
                    burst = load[first : first + BURST]
                    ids.extend(await asyncio.gather(*(start(coordinator) for start in burst)))
                    await asyncio.sleep(BURST_PAUSE)

            loading = asyncio.create_task(start_load())
            try:
                await until_finished(env, ids, SAGAS // 6)
                await restart(own_broker, env, ids, loading)
                await asyncio.sleep(RESTART_GAP)
                restarted_at, in_hand = await restart(own_broker, env, ids, loading)
                await loading
            finally:
                loading.cancel()

            await wait_terminal(env, ids, within=DRAIN_WITHIN)
            # Those started before the last restart, since the load goes on after it.
            recovery = await seconds_to_last_finish(env, in_hand, restarted_at)
            drained = await seconds_to_last_finish(env, ids, restarted_at)
            print(
                f"{len(in_hand)} sagas started before the last restart all finished "
                f"{recovery:.1f} s after it; the whole load {drained:.1f} s after it"
            )
            # Lost messages wait for their step's timeout (5 s) to be sent again, a lost
            # child's end for its parent's next look (30 s); a recovery much longer means
            # something waited on a broker-side timeout (the producer's 40 s request
            # timeout, a consumer stuck in a commit).
            assert recovery < RECOVERY_LIMIT, f"recovery took {recovery:.1f} s"

            # The broker is back for good: fresh sagas must flow through the consumers.
            fresh = [await start(coordinator) for start in after]
            await wait_terminal(env, fresh, within=30)

        assert_still_running(running)
        await running.wait_ready(within=10)

    report = await check_invariants(env.database, saga_ids=[*ids, *fresh], allow_parked=False)
    assert report.ok, report.describe()
    assert sum(report.sagas_by_status.values()) == SAGAS + AFTER
    assert report.sagas_by_status["completed"] > 0
    assert report.sagas_by_status["compensated"] > 0
    assert await timed_out_steps(env, fresh) == 0, "fresh sagas needed the worker's rescue"


async def restart(
    broker: EmbeddedBroker,
    env: SagaEnvironment,
    ids: list[uuid.UUID],
    loading: asyncio.Task[None],
) -> tuple[float, list[uuid.UUID]]:
    """Restart the broker once at least IN_FLIGHT sagas are in flight; the database's
    clock at the restart (saga ``finished_at`` is on that clock too) and the sagas started
    by then."""
    while (in_flight := len(ids) - await count_finished(env.database, ids)) < IN_FLIGHT:
        assert not loading.done(), "the load ended before the restart: start more sagas"
        await asyncio.sleep(0.01)
    at, started = await db_clock(env), list(ids)
    await asyncio.to_thread(broker.restart)
    print(f"broker restarted with {in_flight} sagas in flight")
    return at, started


async def until_finished(env: SagaEnvironment, ids: list[uuid.UUID], count: int) -> None:
    deadline = time.monotonic() + 60
    while await count_finished(env.database, ids) < count:
        assert time.monotonic() < deadline, f"fewer than {count} sagas finished within 60 s"
        await asyncio.sleep(0.05)


async def wait_terminal(env: SagaEnvironment, ids: list[uuid.UUID], within: float) -> None:
    async def moving(conn: DriverConnection) -> int:
        found = await conn.fetchval(
            "SELECT count(*) FROM shared.saga_instance WHERE id = ANY($1::uuid[]) "
            "AND NOT status::text = ANY($2::text[])",
            ids,
            list(TERMINAL),
        )
        return int(found)

    deadline = time.monotonic() + within
    while left := await env.database.run_driver(moving, transaction=False):
        assert time.monotonic() < deadline, f"{left} of {len(ids)} sagas still moving"
        await asyncio.sleep(0.2)


async def db_clock(env: SagaEnvironment) -> float:
    async def now(conn: DriverConnection) -> float:
        return float(await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())"))

    return await env.database.run_driver(now, transaction=False)


async def seconds_to_last_finish(env: SagaEnvironment, ids: list[uuid.UUID], since: float) -> float:
    async def last(conn: DriverConnection) -> float:
        found = await conn.fetchval(
            "SELECT extract(epoch FROM max(coalesce(finished_at, updated_at))) "
            "FROM shared.saga_instance WHERE id = ANY($1::uuid[])",
            ids,
        )
        return float(found)

    return await env.database.run_driver(last, transaction=False) - since


async def timed_out_steps(env: SagaEnvironment, ids: list[uuid.UUID]) -> int:
    async def count(conn: DriverConnection) -> int:
        found = await conn.fetchval(
            "SELECT count(*) FROM shared.saga_step_log "
            "WHERE saga_instance_id = ANY($1::uuid[]) AND status = 'timed_out'",
            ids,
        )
        return int(found)

    return await env.database.run_driver(count, transaction=False)


def assert_still_running(running: Fleet) -> None:
    """Each process is the run it started with, and none logged giving up."""
    for name, engine in running.processes.items():
        assert engine.process is not None
        assert engine.process.poll() is None, f"{name} exited with {engine.process.returncode}"
        assert engine.runs == 1, f"{name} was restarted"
        events = [event.get("event") for event in log_events(engine.output_text())]
        assert "consumer_stopped" not in events, f"{name} stopped consuming"


# -- each fix on its own --------------------------------------------------------------------

MAX_BYTES = 1_000_000


def consumer_on(
    broker: EmbeddedBroker, producer: Producer, topic: str, group: str, handle: Handler
) -> BatchConsumer:
    return BatchConsumer(
        bootstrap_servers=broker.bootstrap_servers,
        topics=[topic],
        group_id=group,
        handle=handle,
        dead_letters=DeadLetters(producer, f"{topic}.dead-letter", max_message_bytes=MAX_BYTES),
        client_id="test-broker-loss",
        fetch_max_wait_ms=100,
        max_message_bytes=MAX_BYTES,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )


async def eventually(check: Callable[[], bool], what: str, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {within} s"
        await asyncio.sleep(0.05)


async def stop(consumer: BatchConsumer, running: asyncio.Task[None]) -> None:
    """Stop the consumer; one stuck (the failure some tests look for) is cancelled, so the
    test reports its assertion instead of hanging."""
    try:
        await asyncio.wait_for(consumer.stop(grace=5), 15)
    except TimeoutError:
        running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running


async def send(producer: Producer, topic: str, *values: str) -> None:
    for value in values:
        await producer.send(OutgoingMessage(topic, "k", value.encode()))


@pytest.fixture
async def producer(own_broker: EmbeddedBroker) -> AsyncIterator[Producer]:
    async with Producer(
        own_broker.bootstrap_servers, client_id="test-broker-loss", max_message_bytes=MAX_BYTES
    ) as started:
        yield started


async def test_a_batch_in_hand_during_a_restart_commits_nothing_over_the_new_log(
    own_broker: EmbeddedBroker, producer: Producer
) -> None:
    """The broker hands the same partitions out again after the restart (Tansu even keeps
    generation 0), so a commit of the old batch's offsets would succeed; the log restarts
    at 0, and whoever takes the partition next would wait past every new record below the
    old offsets (Tansu answers a fetch beyond the end with nothing, not out of range)."""
    topic, group = f"test.{uuid.uuid4().hex[:10]}.stale", f"g.{uuid.uuid4().hex[:10]}"
    await ensure_topics(own_broker.bootstrap_servers, [topic], partitions=1)
    await send(producer, topic, *(f"old-{n}" for n in range(10)))
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold_the_first(incoming: Incoming) -> None:
        if incoming.value == b"old-0":
            holding.set()
            await release.wait()

    first = consumer_on(own_broker, producer, topic, group, hold_the_first)
    running = asyncio.create_task(first.run())
    try:
        await asyncio.wait_for(holding.wait(), 15)
        await asyncio.to_thread(own_broker.restart)
        # Made again, as the engine's rebalance hook does: the commit is then accepted.
        await ensure_topics(own_broker.bootstrap_servers, [topic], partitions=1)
        await eventually(lambda: first.rebalances > 0, "the rejoin after the restart")
        release.set()
        await eventually(lambda: first.processed == 10, "the batch in hand finishing")
    finally:
        await stop(first, running)

    await send(producer, topic, "new-0", "new-1", "new-2")
    seen: list[bytes] = []

    async def collect(incoming: Incoming) -> None:
        seen.append(incoming.value or b"")

    second = consumer_on(own_broker, producer, topic, group, collect)
    running = asyncio.create_task(second.run())
    try:
        await eventually(lambda: len(seen) >= 3, "the records sent after the restart arriving")
    finally:
        await stop(second, running)
    assert seen == [b"new-0", b"new-1", b"new-2"]


async def test_a_commit_the_broker_keeps_refusing_does_not_stop_the_consumer(
    own_broker: EmbeddedBroker, producer: Producer
) -> None:
    """After the restart, records sent to a topic nobody made again are stored, fetched and
    handled, but Tansu refuses their commit with UNKNOWN_TOPIC_OR_PARTITION, which aiokafka
    retries forever: the consumer must give up on that commit and go on."""
    topic, group = f"test.{uuid.uuid4().hex[:10]}.refused", f"g.{uuid.uuid4().hex[:10]}"
    await ensure_topics(own_broker.bootstrap_servers, [topic], partitions=1)
    seen: list[bytes] = []

    async def collect(incoming: Incoming) -> None:
        seen.append(incoming.value or b"")

    consumer = consumer_on(own_broker, producer, topic, group, collect)
    running = asyncio.create_task(consumer.run())
    try:
        await send(producer, topic, "before")
        await eventually(lambda: seen == [b"before"], "the first record arriving")
        await asyncio.to_thread(own_broker.restart)
        await eventually(lambda: consumer.rebalances > 0, "the rejoin after the restart")
        await send(producer, topic, "after-0")
        await eventually(lambda: b"after-0" in seen, "a record sent after the restart arriving")
        await send(producer, topic, "after-1")
        await eventually(lambda: b"after-1" in seen, "the consumer going on past the commit")
    finally:
        await stop(consumer, running)


async def test_a_send_refused_while_its_topic_is_made_again_is_sent_again(
    own_broker: EmbeddedBroker, producer: Producer
) -> None:
    """Once the lost topic is made again, Tansu answers the next send to it with
    UNKNOWN_SERVER_ERROR (-1), which aiokafka does not retry; the producer does, briefly,
    instead of leaving the message to the outbox relay's grace of 5 s."""
    topic = f"test.{uuid.uuid4().hex[:10]}.refused-send"
    await ensure_topics(own_broker.bootstrap_servers, [topic], partitions=4)
    await send(producer, topic, "before")
    await asyncio.to_thread(own_broker.restart)
    await send(producer, topic, "while-gone")
    await ensure_topics(own_broker.bootstrap_servers, [topic], partitions=4)
    messages = [OutgoingMessage(topic, key, b"after") for key in "abcdefgh"]
    outcomes = await producer.send_many(messages)
    assert outcomes == [None] * len(messages)
