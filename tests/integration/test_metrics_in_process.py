"""Metrics measured in this process against the real database and broker: slow units of
work, units waiting for a pooled connection, an outbox's backlog, the publish lag of a row
the relay sweeps, and a consumer's lag, which goes with its partitions."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from saga.outbox import OutboxMonitor, OutboxPublisher
from saga.settings import Settings
from saga.store import Database
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

pytestmark = pytest.mark.integration


def value(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def lag_series(group: str) -> dict[str, float]:
    """The consumer-lag samples of ``group``, by partition."""
    return {
        sample.labels["partition"]: sample.value
        for family in REGISTRY.collect()
        if family.name == "saga_consumer_lag_messages"
        for sample in family.samples
        if sample.labels["group"] == group
    }


async def eventually(condition: Callable[[], bool], what: str, *, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {within} s"
        await asyncio.sleep(0.01)


def tuned(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update=changes)


async def test_a_unit_slower_than_its_threshold_is_counted_and_logged(
    settings: Settings, fresh_database_url: str
) -> None:
    tight = tuned(settings, database_slow_unit_threshold=40)
    db = Database.from_settings(tight, url=fresh_database_url)
    slow_unit = f"slow_{uuid.uuid4().hex[:8]}"
    fast_unit = f"fast_{uuid.uuid4().hex[:8]}"
    try:
        with capture_logs() as logs:
            await db.run_driver(lambda conn: conn.execute("SELECT pg_sleep(0.08)"), name=slow_unit)
            await db.run(lambda conn: conn.exec_driver_sql("SELECT 1"), name=fast_unit)
    finally:
        await db.dispose()
    assert value("saga_db_slow_units_total", {"unit": slow_unit}) == 1.0
    assert value("saga_db_slow_units_total", {"unit": fast_unit}) == 0.0
    slow = [entry for entry in logs if entry["event"] == "slow_unit"]
    assert [entry["unit"] for entry in slow] == [slow_unit]
    assert slow[0]["log_level"] == "warning"
    assert slow[0]["duration_ms"] >= 80
    assert slow[0]["threshold_ms"] == 40


async def test_units_waiting_for_the_only_connection_are_a_gauge(
    settings: Settings, fresh_database_url: str
) -> None:
    small = tuned(
        settings,
        database_pool_size=1,
        database_max_overflow=0,
        database_connection_timeout=10_000,
    )
    waiting_before = value("saga_db_pool_waiting")
    in_use_before = value("saga_db_pool_connections", {"state": "in_use"})
    size_before = value("saga_db_pool_size")
    db = Database.from_settings(small, url=fresh_database_url)
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold(conn: DriverConnection) -> None:
        holding.set()
        await release.wait()

    try:
        holder = asyncio.create_task(db.run_driver(hold))
        await holding.wait()
        waiter = asyncio.create_task(db.run_driver(lambda conn: conn.fetchval("SELECT 42")))
        async with asyncio.timeout(5):
            while value("saga_db_pool_waiting") - waiting_before < 1:
                await asyncio.sleep(0.01)
        assert value("saga_db_pool_waiting") - waiting_before == 1
        assert value("saga_db_pool_connections", {"state": "in_use"}) - in_use_before == 1
        assert value("saga_db_pool_size") - size_before == 1
        release.set()
        assert await waiter == 42
        await holder
        assert value("saga_db_pool_waiting") == waiting_before
        assert value("saga_db_pool_connections", {"state": "in_use"}) == in_use_before
        status = db.pool_status()
        assert status is not None
        assert (status.in_use, status.idle, status.waiting, status.size) == (0, 1, 0, 1)
    finally:
        release.set()
        await db.dispose()
    assert value("saga_db_pool_size") == size_before, "a disposed pool is no longer counted"


async def insert_unpublished(
    db: Database, table: str, topic: str, *, overdue_seconds: float
) -> uuid.UUID:
    message_id = uuid.uuid4()
    await db.run_driver(
        lambda conn: conn.execute(
            f"INSERT INTO {table} (message_id, topic, message_key, payload, available_at) "
            "VALUES ($1, $2, 'k', '{}'::jsonb, now() - make_interval(secs => $3))",
            message_id,
            topic,
            overdue_seconds,
        )
    )
    return message_id


async def test_the_outbox_backlog_and_a_swept_rows_lag_are_measured(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    table = "care_journey.care_outbox"
    topic = f"{env.settings.kafka_topic_prefix}.metrics"
    monitor = OutboxMonitor(env.database, [table, "shared.saga_outbox"])
    await monitor.sample()
    assert value("saga_outbox_backlog", {"outbox": table}) == 0
    assert value("saga_outbox_oldest_unpublished_seconds", {"outbox": table}) == 0

    await insert_unpublished(env.database, table, topic, overdue_seconds=30)
    await insert_unpublished(env.database, table, topic, overdue_seconds=10)
    await insert_unpublished(env.database, table, topic, overdue_seconds=-600)  # not due yet
    await monitor.sample()
    assert value("saga_outbox_backlog", {"outbox": table}) == 3
    assert 30 <= value("saga_outbox_oldest_unpublished_seconds", {"outbox": table}) < 60
    assert value("saga_outbox_backlog", {"outbox": "shared.saga_outbox"}) == 0

    await ensure_topics(env.bootstrap, [topic], partitions=1)
    lag_count = value("saga_outbox_publish_lag_seconds_count", {"outbox": table})
    lag_sum = value("saga_outbox_publish_lag_seconds_sum", {"outbox": table})
    async with Producer.from_settings(env.settings, bootstrap_servers=env.bootstrap) as producer:
        publisher = OutboxPublisher(env.database, producer, table)
        assert await publisher.sweep() == 2, "the two due rows"
        await publisher.flush()
    assert value("saga_outbox_publish_lag_seconds_count", {"outbox": table}) - lag_count == 2
    swept_lag = value("saga_outbox_publish_lag_seconds_sum", {"outbox": table}) - lag_sum
    assert 30 + 10 <= swept_lag < 60, "each row's lag runs from when it came due"

    await monitor.sample()
    assert value("saga_outbox_backlog", {"outbox": table}) == 1
    assert value("saga_outbox_oldest_unpublished_seconds", {"outbox": table}) == 0


async def test_consumer_lag_counts_what_waits_and_goes_with_the_partitions(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    topics = Topics.from_settings(env.settings)
    topic = topics.commands("lag")
    group = f"{topics.prefix}.lag"
    await ensure_topics(env.bootstrap, [topic, topics.dead_letter], partitions=2)
    gate = asyncio.Event()
    holding = asyncio.Event()

    async def handle(incoming: Incoming) -> None:
        if incoming.value == b"first":
            holding.set()
            await gate.wait()

    async with Producer.from_settings(env.settings, bootstrap_servers=env.bootstrap) as producer:
        consumer = BatchConsumer(
            bootstrap_servers=env.bootstrap,
            topics=[topic],
            group_id=group,
            handle=handle,
            dead_letters=DeadLetters(producer, topics.dead_letter, max_message_bytes=100_000),
            client_id="tests",
            fetch_max_wait_ms=10,
            max_message_bytes=100_000,
            session_timeout_ms=env.settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=env.settings.kafka_heartbeat_interval_ms,
        )
        running = asyncio.create_task(consumer.run())
        try:
            await consumer.ready.wait()
            await eventually(lambda: set(lag_series(group)) == {"0", "1"}, "a series per partition")
            assert set(lag_series(group).values()) == {0.0}

            # One key, so one partition: the first record holds the batch while five more
            # arrive behind it; the lag shows them until they are taken.
            await producer.send(OutgoingMessage(topic, "saga", b"first", {}))
            await asyncio.wait_for(holding.wait(), 10)
            await producer.send_many([OutgoingMessage(topic, "saga", b"next", {})] * 5)
            await asyncio.sleep(1.5)  # the next fetch has seen them and a refresh is due
            gate.set()
            # Refreshed once the held batch is done (at most once a second): until the next
            # refresh it still shows the five, though they may be handled by then.
            await eventually(lambda: sum(lag_series(group).values()) == 5, "a lag of five")
            await eventually(lambda: consumer.processed == 6, "all six handled")
            await eventually(lambda: sum(lag_series(group).values()) == 0, "the lag back to 0")
        finally:
            gate.set()
            await consumer.stop(grace=1.0)
            await running
    assert lag_series(group) == {}, "a stopped member shows no partitions"
