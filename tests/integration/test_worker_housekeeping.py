"""The worker's housekeeping jobs against the real database and broker: outbox republish
and retention, inbox and saga retention, the soft-deleted purge, partition maintenance.

Every row a job should act on (or must leave alone) is made on purpose, aged by setting
its timestamp into the past, and looked at afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from structlog.testing import capture_logs

from journeys.world import create_provider, create_slots, create_user
from saga import Row
from saga.participant.journey import JourneyService, discover_journeys
from saga.settings import RetentionMode, to_plain_url
from saga.store.driver import DriverConnection
from saga.transport import ensure_topics
from saga.worker.job import Job, lock_key
from saga.worker.jobs.inbox import INBOX_RETENTION
from saga.worker.jobs.outbox import OUTBOX_REPUBLISH, OUTBOX_RETENTION
from saga.worker.jobs.partitions import PARTITION_MAINTENANCE
from saga.worker.jobs.purge import SOFT_DELETED_PURGE
from saga.worker.jobs.retention import SAGA_RETENTION
from saga.worker.policies import PartitionPolicy
from saga.worker.scheduler import JobReport, Worker
from tests.integration.conftest import SagaEnvironment

pytestmark = pytest.mark.integration

OLD = 40  # days: older than every retention period's default
SHARED_OUTBOX = "shared.saga_outbox"


def journeys() -> list[JourneyService]:
    return list(discover_journeys().values())


def journey(name: str) -> JourneyService:
    return discover_journeys()[name]


@asynccontextmanager
async def workers(
    env: SagaEnvironment,
    job: Job,
    count: int = 1,
    *,
    services: Sequence[JourneyService] | None = None,
    **settings: Any,
) -> AsyncIterator[list[Worker]]:
    """``count`` workers (as if separate processes) running only ``job``."""
    made = [
        Worker(
            settings=env.settings.model_copy(update=settings),
            database=env.database,
            journeys=journeys() if services is None else services,
            jobs=[job],
            bootstrap_servers=env.bootstrap,
            name=f"housekeeping-{n}",
        )
        for n in range(count)
    ]
    try:
        yield made
    finally:
        for worker in made:
            await worker.close()


async def run_once(env: SagaEnvironment, job: Job, **settings: Any) -> JobReport:
    async with workers(env, job, **settings) as (worker,):
        return await worker.run_job(job.name)


async def run_concurrently(env: SagaEnvironment, job: Job) -> list[JobReport]:
    """Two workers running the same job at the same moment."""
    async with workers(env, job, 2) as pair:
        for worker in pair:
            await worker.start()  # both connected before either runs
        return list(await asyncio.gather(*(w.run_job(job.name) for w in pair)))


async def fetch(env: SagaEnvironment, query: str, *args: Any) -> list[Row]:
    return await env.database.run_driver(lambda conn: conn.fetch(query, *args), name="test")


async def fetchval(env: SagaEnvironment, query: str, *args: Any) -> Any:
    return await env.database.run_driver(lambda conn: conn.fetchval(query, *args), name="test")


async def execute(env: SagaEnvironment, query: str, *args: Any) -> str:
    return await env.database.run_driver(lambda conn: conn.execute(query, *args), name="test")


# -- scenes ---------------------------------------------------------------------------------


async def create_definition(env: SagaEnvironment) -> uuid.UUID:
    definition_id: uuid.UUID = await fetchval(
        env,
        "INSERT INTO shared.saga_definition (name, version, content_hash, steps) "
        "VALUES ('test_housekeeping', 1, 'test', '[]'::jsonb) RETURNING id",
    )
    return definition_id


async def create_saga(
    env: SagaEnvironment,
    definition_id: uuid.UUID,
    status: str,
    *,
    days_ago: int = OLD,
    steps: int = 0,
    outbox: int = 0,
) -> uuid.UUID:
    """A saga started ``days_ago`` days ago (and finished then, if its status is final),
    with ``steps`` step-log rows and ``outbox`` published command rows."""

    async def create(conn: DriverConnection) -> uuid.UUID:
        saga_id: uuid.UUID = await conn.fetchval(
            """
            INSERT INTO shared.saga_instance (
                saga_definition_id, definition_name, definition_version, status,
                current_step, payload, context, idempotency_key, error, started_at,
                finished_at
            ) VALUES (
                $1, 'test_housekeeping', 1, $2, 1, '{"member": 7}'::jsonb,
                '{"slot": "a"}'::jsonb, $3, CASE WHEN $2 = 'parked' THEN 'stuck' END,
                now() - make_interval(days => $4),
                CASE WHEN $2 IN ('completed', 'compensated')
                     THEN now() - make_interval(days => $4) END
            ) RETURNING id
            """,
            definition_id,
            status,
            uuid.uuid4().hex,
            days_ago,
        )
        for step in range(steps):
            await conn.execute(
                """
                INSERT INTO shared.saga_step_log (
                    saga_instance_id, step_index, step_name, journey, action, status,
                    message_id, request, response, actor, started_at, finished_at,
                    serialization_retries
                ) VALUES (
                    $1, $2, $3, 'care', 'execute', 'succeeded', gen_random_uuid(),
                    '{"ask": 1}'::jsonb, '{"ok": true}'::jsonb, 'tests',
                    now() - interval '2 seconds', now() - interval '1 second', $2
                )
                """,
                saga_id,
                step,
                f"step_{step}",
            )
        for _ in range(outbox):
            await conn.execute(
                """
                INSERT INTO shared.saga_outbox (
                    message_id, saga_instance_id, topic, message_key, payload, published_at
                ) VALUES (gen_random_uuid(), $1, 'commands', $2, '{}'::jsonb, now())
                """,
                saga_id,
                str(saga_id),
            )
        return saga_id

    return await env.database.run_driver(create, name="test.create_saga")


async def add_outbox_row(
    env: SagaEnvironment,
    table: str,
    *,
    topic: str = "housekeeping",
    saga_id: uuid.UUID | None = None,
    due_seconds_ago: float = 0.0,
    published_days_ago: int | None = None,
    padding: int = 0,
) -> uuid.UUID:
    message_id = uuid.uuid4()
    payload = json.dumps(
        {"message_id": str(message_id), **({"pad": "x" * padding} if padding else {})}
    )
    headers = json.dumps({"message-id": str(message_id)})
    columns = "message_id, topic, message_key, payload, headers, available_at, published_at"
    values = (
        "$1, $2, $3, $4::text::jsonb, $5::text::jsonb, now() - make_interval(secs => $6), "
        "now() - make_interval(days => $7)"
    )
    args: list[Any] = [
        message_id,
        topic,
        str(message_id),
        payload,
        headers,
        due_seconds_ago,
        published_days_ago,
    ]
    if table == SHARED_OUTBOX:
        assert saga_id is not None
        columns += ", saga_instance_id"
        values += ", $8"
        args.append(saga_id)
    await execute(env, f"INSERT INTO {table} ({columns}) VALUES ({values})", *args)
    return message_id


async def add_inbox_row(
    env: SagaEnvironment, table: str, saga_id: uuid.UUID, *, days_ago: int = OLD
) -> uuid.UUID:
    row_id: uuid.UUID = await fetchval(
        env,
        f"""
        INSERT INTO {table} (message_id, saga_id, step_name, action, attempt, reply,
                             processed_at)
        VALUES (gen_random_uuid(), $1, 'reserve', 'reserve', 1, '{{}}'::jsonb,
                now() - make_interval(days => $2))
        RETURNING id
        """,
        saga_id,
        days_ago,
    )
    return row_id


async def read_topic(bootstrap: str, topic: str, count: int, *, within: float = 10.0) -> list[Any]:
    """At least ``count`` records of ``topic`` from its start (or what came in time)."""
    reader = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=10
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


async def outbox_state(env: SagaEnvironment, table: str) -> dict[uuid.UUID, tuple[bool, int]]:
    """message id -> (published, publish_attempts)."""
    rows = await fetch(
        env, f"SELECT message_id, published_at IS NOT NULL AS sent, publish_attempts FROM {table}"
    )
    return {row["message_id"]: (row["sent"], row["publish_attempts"]) for row in rows}


# -- outbox republish -----------------------------------------------------------------------


async def test_republish_sends_rows_left_unpublished_and_marks_them_published(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    topic = f"{env.settings.kafka_topic_prefix}.housekeeping"
    await ensure_topics(env.bootstrap, [topic], partitions=1)
    saga_id = await create_saga(env, await create_definition(env), "running")
    care, plan = journey("care").tables.outbox, journey("plan").tables.outbox

    overdue_shared = await add_outbox_row(
        env, SHARED_OUTBOX, topic=topic, saga_id=saga_id, due_seconds_ago=120
    )
    overdue_care = await add_outbox_row(env, care, topic=topic, due_seconds_ago=120)
    # Still within its writer's time to publish it: not the worker's to send.
    recent = await add_outbox_row(env, plan, topic=topic, due_seconds_ago=10)
    # Already published: never sent again.
    published = await add_outbox_row(env, plan, topic=topic, published_days_ago=1)
    # Over the broker's size limit: refused, so it stays unpublished, with the reason.
    refused = await add_outbox_row(env, care, topic=topic, due_seconds_ago=120, padding=4096)

    report = await run_once(
        env, OUTBOX_REPUBLISH, outbox_republish_after_seconds=60, kafka_max_message_bytes=2048
    )

    assert report.claimed == 3
    assert report.counts == {"republished": 2, "failed": 1}
    records = await read_topic(env.bootstrap, topic, 2)
    assert sorted(r.key.decode() for r in records) == sorted(
        [str(overdue_shared), str(overdue_care)]
    )
    sent = {r.key.decode(): r for r in records}[str(overdue_care)]
    assert json.loads(sent.value) == {"message_id": str(overdue_care)}
    assert (("message-id", str(overdue_care).encode()),) == tuple(sent.headers)

    assert (await outbox_state(env, SHARED_OUTBOX))[overdue_shared] == (True, 1)
    care_rows = await outbox_state(env, care)
    assert care_rows[overdue_care] == (True, 1)
    assert care_rows[refused] == (False, 1)
    error = await fetchval(env, f"SELECT last_error FROM {care} WHERE message_id = $1", refused)
    assert error.startswith("MessageRejected")
    plan_rows = await outbox_state(env, plan)
    assert plan_rows[recent] == (False, 0)
    assert plan_rows[published] == (True, 0)


async def test_republish_takes_one_batch_at_a_time_and_two_workers_share_the_rows(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    topic = f"{env.settings.kafka_topic_prefix}.housekeeping"
    await ensure_topics(env.bootstrap, [topic], partitions=1)
    saga_id = await create_saga(env, await create_definition(env), "running")
    tables = [SHARED_OUTBOX, *(j.tables.outbox for j in journeys())]
    made: dict[str, list[uuid.UUID]] = {table: [] for table in tables}
    for n in range(30):
        table = tables[n % len(tables)]
        made[table].append(
            await add_outbox_row(env, table, topic=topic, saga_id=saga_id, due_seconds_ago=600)
        )
    job = dataclasses.replace(OUTBOX_REPUBLISH, batch=7)

    first = await run_once(env, job, worker_max_batches_per_run=1)
    assert first.claimed == 7
    assert first.counts["republished"] == 7
    states = {t: await outbox_state(env, t) for t in tables}
    assert sum(sent for rows in states.values() for sent, _ in rows.values()) == 7

    reports = await run_concurrently(env, job)

    assert sum(r.claimed for r in reports) == 23
    assert sum(r.counts["republished"] for r in reports) == 23
    for table in tables:
        # One claim per row: no row was taken by both workers (nor twice by one).
        assert await outbox_state(env, table) == {m: (True, 1) for m in made[table]}
    records = await read_topic(env.bootstrap, topic, 30)
    assert {r.key.decode() for r in records} == {str(m) for ids in made.values() for m in ids}


# -- outbox retention -----------------------------------------------------------------------


async def test_outbox_retention_deletes_only_rows_published_long_ago_in_batches(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    saga_id = await create_saga(env, await create_definition(env), "running")
    care = journey("care").tables.outbox
    gamification = journey("gamification").tables.outbox
    doomed = [
        await add_outbox_row(env, SHARED_OUTBOX, saga_id=saga_id, published_days_ago=10),
        *[await add_outbox_row(env, care, published_days_ago=8 + n) for n in range(6)],
        await add_outbox_row(env, gamification, published_days_ago=30),
    ]
    kept = [
        await add_outbox_row(env, SHARED_OUTBOX, saga_id=saga_id, published_days_ago=1),
        await add_outbox_row(env, care, published_days_ago=6),
        # Never published, however old: the republish job's, not retention's.
        await add_outbox_row(env, care, due_seconds_ago=30 * 86400),
    ]
    job = dataclasses.replace(OUTBOX_RETENTION, batch=3)

    first = await run_once(env, job, worker_max_batches_per_run=1)
    assert (first.claimed, first.counts["deleted"]) == (3, 3)
    reports = await run_concurrently(env, job)
    assert sum(r.counts["deleted"] for r in reports) == len(doomed) - 3

    left = set()
    for table in (SHARED_OUTBOX, care, gamification):
        left |= set(await outbox_state(env, table))
    assert left == set(kept)


# -- inbox retention ------------------------------------------------------------------------


async def test_inbox_retention_keeps_the_rows_of_sagas_that_may_still_send_commands(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition_id = await create_definition(env)
    care, plan = journey("care").tables.inbox, journey("plan").tables.inbox
    sagas = {
        status: await create_saga(env, definition_id, status)
        for status in ("running", "compensating", "parked", "completed", "compensated")
    }
    gone = uuid.uuid4()  # archived or deleted from the log already

    kept = [
        await add_inbox_row(env, care, sagas["running"]),
        await add_inbox_row(env, plan, sagas["compensating"], days_ago=365),
        await add_inbox_row(env, care, sagas["parked"]),
        await add_inbox_row(env, plan, sagas["completed"], days_ago=1),  # recent
    ]
    doomed = [
        await add_inbox_row(env, care, sagas["completed"]),
        await add_inbox_row(env, plan, sagas["compensated"]),
        *[await add_inbox_row(env, care, gone) for _ in range(9)],
    ]
    job = dataclasses.replace(INBOX_RETENTION, batch=4)

    first = await run_once(env, job, worker_max_batches_per_run=1)
    assert (first.claimed, first.counts["deleted"]) == (4, 4)
    reports = await run_concurrently(env, job)
    assert sum(r.counts["deleted"] for r in reports) == len(doomed) - 4

    left = {r["id"] for table in (care, plan) for r in await fetch(env, f"SELECT id FROM {table}")}
    assert left == set(kept)


# -- saga retention -------------------------------------------------------------------------

INSTANCE_COLUMNS = (
    "id, saga_definition_id, definition_name, definition_version, status, current_step, "
    "step_attempt, payload, context, idempotency_key, deadline, error, version, started_at, "
    "finished_at, created_at, updated_at, deleted_at"
)
STEP_COLUMNS = (
    "id, saga_instance_id, step_index, step_name, journey, action, status, attempt, "
    "message_id, request, response, error, actor, started_at, finished_at, duration_ms, "
    "serialization_retries, deadlock_retries, created_at, updated_at, deleted_at"
)


async def rows_of(env: SagaEnvironment, columns: str, table: str, where: str) -> list[Any]:
    return [dict(r) for r in await fetch(env, f"SELECT {columns} FROM {table} WHERE {where}")]


async def test_saga_retention_archives_finished_sagas_exactly_and_spares_the_rest(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition_id = await create_definition(env)
    completed = await create_saga(env, definition_id, "completed", steps=3, outbox=2)
    compensated = await create_saga(env, definition_id, "compensated", steps=2)
    spared = [
        await create_saga(env, definition_id, "completed", days_ago=5, steps=1),
        await create_saga(env, definition_id, "running", days_ago=90, steps=2, outbox=1),
        await create_saga(env, definition_id, "compensating", days_ago=90, steps=1),
        await create_saga(env, definition_id, "parked", days_ago=90, steps=1),
    ]
    old = [completed, compensated]
    instances = await rows_of(
        env, INSTANCE_COLUMNS, "shared.saga_instance", f"id IN ('{completed}', '{compensated}')"
    )
    steps = await rows_of(
        env,
        STEP_COLUMNS,
        "shared.saga_step_log",
        f"saga_instance_id IN ('{completed}', '{compensated}')",
    )
    assert len(steps) == 5

    report = await run_once(env, SAGA_RETENTION, retention_saga_mode=RetentionMode.ARCHIVE)

    assert report.claimed == 2
    assert report.counts == {"archived": 2, "step_log_rows": 5}
    archived = await rows_of(env, INSTANCE_COLUMNS, "shared.saga_instance_archive", "true")
    by_id = {row["id"]: row for row in instances}
    assert {row["id"]: row for row in archived} == by_id
    archived_steps = await rows_of(
        env, STEP_COLUMNS + ", logged_at", "shared.saga_step_log_archive", "true"
    )
    assert {r["id"]: {k: v for k, v in r.items() if k != "logged_at"} for r in archived_steps} == {
        r["id"]: r for r in steps
    }
    assert all(r["logged_at"] == r["created_at"] for r in archived_steps)

    live = {r["id"] for r in await fetch(env, "SELECT id FROM shared.saga_instance")}
    assert live == set(spared)
    for table, column in (
        ("saga_step_log", "saga_instance_id"),
        ("saga_outbox", "saga_instance_id"),
    ):
        left = await fetchval(
            env, f"SELECT count(*) FROM shared.{table} WHERE {column} = ANY($1::uuid[])", old
        )
        assert left == 0, table
    # The sagas in flight keep every row of their log.
    assert (
        await fetchval(
            env,
            "SELECT count(*) FROM shared.saga_step_log WHERE saga_instance_id = ANY($1)",
            spared,
        )
        == 5
    )
    assert await fetchval(env, "SELECT count(*) FROM shared.saga_outbox") == 1


async def test_saga_retention_delete_mode_in_batches_and_two_workers_archive_each_once(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition_id = await create_definition(env)
    deleted = [await create_saga(env, definition_id, "completed", steps=2) for _ in range(5)]
    delete_job = dataclasses.replace(SAGA_RETENTION, batch=3)

    first = await run_once(
        env, delete_job, retention_saga_mode=RetentionMode.DELETE, worker_max_batches_per_run=1
    )
    assert first.claimed == 3
    assert first.counts == {"deleted": 3, "step_log_rows": 6}
    rest = await run_once(env, delete_job, retention_saga_mode=RetentionMode.DELETE)
    assert rest.counts == {"deleted": 2, "step_log_rows": 4}
    assert (
        await fetchval(
            env,
            "SELECT count(*) FROM shared.saga_step_log WHERE saga_instance_id = ANY($1)",
            deleted,
        )
        == 0
    )
    assert await fetchval(env, "SELECT count(*) FROM shared.saga_instance") == 0
    # Deleting archives nothing.
    assert await fetchval(env, "SELECT count(*) FROM shared.saga_instance_archive") == 0

    # Archiving one saga twice would break the archive's primary key: two workers at once
    # must each take sagas the other did not.
    archived = [await create_saga(env, definition_id, "compensated", steps=1) for _ in range(8)]
    job = dataclasses.replace(SAGA_RETENTION, batch=2)
    reports = await run_concurrently(env, job)
    assert sum(r.counts["archived"] for r in reports) == 8
    assert {
        r["id"] for r in await fetch(env, "SELECT id FROM shared.saga_instance_archive")
    } == set(archived)
    assert await fetchval(env, "SELECT count(*) FROM shared.saga_step_log_archive") == 8


async def test_saga_retention_does_not_wait_for_sagas_another_transaction_holds(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition_id = await create_definition(env)
    running = await create_saga(env, definition_id, "running", days_ago=90, steps=1)
    held = await create_saga(env, definition_id, "completed", steps=1)
    free = await create_saga(env, definition_id, "completed", steps=1)

    coordinator = await asyncpg.connect(to_plain_url(env.database_url))
    try:
        transaction = coordinator.transaction()
        await transaction.start()
        # A coordinator handling a reply holds its saga's row for its transaction.
        await coordinator.execute(
            "SELECT id FROM shared.saga_instance WHERE id = ANY($1::uuid[]) FOR UPDATE",
            [running, held],
        )
        started = time.monotonic()
        report = await asyncio.wait_for(
            run_once(env, SAGA_RETENTION, retention_saga_mode=RetentionMode.ARCHIVE), 10
        )
        assert time.monotonic() - started < 5
        assert report.counts == {"archived": 1, "step_log_rows": 1}
        await transaction.rollback()
    finally:
        await coordinator.close()

    live = {r["id"] for r in await fetch(env, "SELECT id FROM shared.saga_instance")}
    assert live == {running, held}
    assert await fetchval(env, "SELECT id FROM shared.saga_instance_archive") == free
    # Its turn comes at the next run.
    later = await run_once(env, SAGA_RETENTION, retention_saga_mode=RetentionMode.ARCHIVE)
    assert later.counts == {"archived": 1, "step_log_rows": 1}


# -- soft-deleted purge ---------------------------------------------------------------------


async def soft_delete(
    env: SagaEnvironment, table: str, ids: Sequence[uuid.UUID], days: int
) -> None:
    await execute(
        env,
        f"UPDATE {table} SET deleted_at = now() - make_interval(days => $2) "
        "WHERE id = ANY($1::uuid[])",
        list(ids),
        days,
    )


async def existing(env: SagaEnvironment, table: str, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    rows = await fetch(env, f"SELECT id FROM {table} WHERE id = ANY($1::uuid[])", list(ids))
    return {row["id"] for row in rows}


async def test_soft_deleted_purge_keeps_rows_that_live_rows_still_reference(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env

    async def scene(conn: DriverConnection) -> dict[str, Any]:
        providers = {
            name: await create_provider(conn)
            for name in ("lonely", "busy", "recent", "with_old_slot")
        }
        busy_slots = await create_slots(conn, providers["busy"], 2)
        old_slot = (await create_slots(conn, providers["with_old_slot"], 1))[0]
        users = {name: await create_user(conn) for name in ("lonely", "with_event", "with_ledger")}
        await conn.execute(
            "INSERT INTO gamification.gamification_event (user_id, event_type, source_journey) "
            "VALUES ($1, 'login', 'health')",
            users["with_event"],
        )
        old_event = await conn.fetchval(
            "INSERT INTO gamification.gamification_event "
            "(user_id, event_type, source_journey, deleted_at) "
            "VALUES ($1, 'login', 'health', now() - interval '40 days') RETURNING id",
            users["with_event"],
        )
        profile = await conn.fetchval(
            "INSERT INTO gamification.gamification_profile (user_id, display_name) "
            "VALUES ($1, 'Ledger') RETURNING id",
            users["with_ledger"],
        )
        # The ledger is append-only (its trigger refuses DELETE): even a row marked
        # deleted stays, and the purge must not fail on it.
        ledger = await conn.fetchval(
            "INSERT INTO gamification.gamification_points_ledger "
            "(profile_id, points, reason, source_journey, source_ref, deleted_at) "
            "VALUES ($1, 5, 'test', 'care', 'test', now() - interval '40 days') RETURNING id",
            profile,
        )
        # A month partition maintenance detached is an archive: left as it was.
        await conn.execute(
            "CREATE TABLE gamification.gamification_event_p202001 PARTITION OF "
            "gamification.gamification_event FOR VALUES FROM ('2020-01-01') TO ('2020-02-01')"
        )
        archived_event = await conn.fetchval(
            "INSERT INTO gamification.gamification_event "
            "(user_id, event_type, source_journey, occurred_at, deleted_at) "
            "VALUES ($1, 'login', 'health', '2020-01-15', '2020-01-16') RETURNING id",
            users["with_event"],
        )
        await conn.execute(
            "ALTER TABLE gamification.gamification_event "
            "DETACH PARTITION gamification.gamification_event_p202001"
        )
        # The saga log has retention of its own.
        definition = await conn.fetchval(
            "INSERT INTO shared.saga_definition (name, version, content_hash, steps, deleted_at) "
            "VALUES ('test_purge', 1, 'x', '[]'::jsonb, now() - interval '40 days') RETURNING id"
        )
        return {
            "providers": providers,
            "busy_slots": [s.slot_id for s in busy_slots],
            "old_slot": old_slot.slot_id,
            "users": users,
            "old_event": old_event,
            "archived_event": archived_event,
            "profile": profile,
            "ledger": ledger,
            "definition": definition,
        }

    made = await env.database.run_driver(scene, name="test.scene")
    providers, users = made["providers"], made["users"]
    await soft_delete(
        env,
        "care_journey.care_provider",
        [providers["lonely"], providers["busy"], providers["with_old_slot"]],
        OLD,
    )
    await soft_delete(env, "care_journey.care_provider", [providers["recent"]], 3)
    await soft_delete(env, "care_journey.care_slot", [made["old_slot"]], OLD)
    await soft_delete(env, "shared.shared_user", list(users.values()), OLD)
    await soft_delete(env, "gamification.gamification_profile", [made["profile"]], OLD)

    report = await run_once(env, SOFT_DELETED_PURGE)

    # The lonely provider and user, the old slot and then its provider, the old event.
    assert report.counts == {"purged": 5}
    assert await existing(env, "care_journey.care_provider", list(providers.values())) == {
        providers["busy"],  # its slots would have gone with it (ON DELETE CASCADE)
        providers["recent"],
    }
    assert await existing(env, "care_journey.care_slot", made["busy_slots"]) == set(
        made["busy_slots"]
    )
    assert await existing(env, "care_journey.care_slot", [made["old_slot"]]) == set()
    assert await existing(env, "shared.shared_user", list(users.values())) == {
        users["with_event"],
        users["with_ledger"],
    }
    assert await existing(env, "gamification.gamification_event", [made["old_event"]]) == set()
    assert await existing(
        env, "gamification.gamification_event_p202001", [made["archived_event"]]
    ) == {made["archived_event"]}
    assert await existing(env, "gamification.gamification_profile", [made["profile"]]) == {
        made["profile"]
    }
    assert await existing(env, "gamification.gamification_points_ledger", [made["ledger"]]) == {
        made["ledger"]
    }
    assert await existing(env, "shared.saga_definition", [made["definition"]]) == {
        made["definition"]
    }
    again = await run_once(env, SOFT_DELETED_PURGE)
    assert (again.claimed, again.counts["purged"]) == (0, 0)


async def test_soft_deleted_purge_in_batches_with_two_workers(saga_env: SagaEnvironment) -> None:
    env = saga_env
    rows = await fetch(
        env,
        "INSERT INTO shared.shared_role (name, deleted_at) "
        "SELECT 'test_role_' || n, now() - interval '40 days' FROM generate_series(1, 11) n "
        "RETURNING id",
    )
    roles = [row["id"] for row in rows]
    job = dataclasses.replace(SOFT_DELETED_PURGE, batch=3)

    first = await run_once(env, job, worker_max_batches_per_run=1)
    assert (first.claimed, first.counts["purged"]) == (3, 3)
    assert len(await existing(env, "shared.shared_role", roles)) == 8
    reports = await run_concurrently(env, job)
    assert sum(r.counts["purged"] for r in reports) == 8
    assert await existing(env, "shared.shared_role", roles) == set()


# -- partition maintenance ------------------------------------------------------------------

EVENTS = "gamification.gamification_event"


async def partitions_of(env: SagaEnvironment, parent: str) -> set[str]:
    rows = await fetch(
        env,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass",
        parent,
    )
    return {row["relname"] for row in rows}


async def test_partition_maintenance_creates_months_ahead_and_detaches_old_months(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    services = [
        dataclasses.replace(
            journey("gamification"),
            partitions=(
                PartitionPolicy(EVENTS, retention_months=12),
                # Not partitioned (as a TimescaleDB hypertable would not be): skipped.
                PartitionPolicy("gamification.gamification_profile"),
            ),
        )
    ]
    await execute(
        env,
        "CREATE TABLE gamification.gamification_event_p202001 PARTITION OF "
        f"{EVENTS} FOR VALUES FROM ('2020-01-01') TO ('2020-02-01')",
    )
    # This month and the 13 before it: with 12 months' retention, the month 13 months
    # back ended 12 months ago or more (detached); the one 12 back ended later (kept).
    await fetchval(env, "SELECT shared.create_monthly_partitions($1::regclass, 13, 0)", EVENTS)

    async def month(offset: int) -> str:
        name: str = await fetchval(
            env,
            "SELECT 'gamification_event_p' || "
            "to_char(date_trunc('month', now()) + make_interval(months => $1), 'YYYYMM')",
            offset,
        )
        return name

    before = await partitions_of(env, EVENTS)
    ahead = {await month(n) for n in range(6)}
    expired = {"gamification_event_p202001", await month(-13)}
    assert expired | {await month(-12), await month(-1)} <= before

    # Another worker holding the job's lock: this one does nothing at all.
    holder = await asyncpg.connect(to_plain_url(env.database_url))
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", lock_key(PARTITION_MAINTENANCE.name))
        async with workers(
            env, PARTITION_MAINTENANCE, services=services, partitions_months_ahead=5
        ) as (worker,):
            skipped = await worker.run_job(PARTITION_MAINTENANCE.name)
        assert (skipped.claimed, sum(skipped.counts.values())) == (0, 0)
        assert await partitions_of(env, EVENTS) == before
    finally:
        await holder.close()

    with capture_logs() as logs:
        async with workers(
            env, PARTITION_MAINTENANCE, services=services, partitions_months_ahead=5
        ) as (worker,):
            report = await worker.run_job(PARTITION_MAINTENANCE.name)
            after = await partitions_of(env, EVENTS)
            again = await worker.run_job(PARTITION_MAINTENANCE.name)

    assert report.counts == {"created": len(ahead - before), "detached": 2}
    assert len(ahead - before) >= 2  # the template made 3 months ahead
    assert after == (before | ahead) - expired
    # Detached, not dropped: an operator archives them.
    for name in expired:
        assert await fetchval(env, "SELECT to_regclass($1) IS NOT NULL", f"gamification.{name}")
    assert again.counts == {"created": 0, "detached": 0}
    assert await partitions_of(env, EVENTS) == after
    warnings = [
        e
        for e in logs
        if e["event"] == "partition_maintenance_skipped" and e["log_level"] == "warning"
    ]
    assert [w["table"] for w in warnings] == ["gamification.gamification_profile"] * 2
