"""The coordinator's transitions, group-committed on the real PostgreSQL and broker: many
sagas' transitions share one statement and one commit, yet each keeps every rule of a
transition written alone (the version check, all or nothing, its log rows and command),
and a crash between the commit and the publishes loses nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any

import pytest

from saga.errors import ForeignKeyViolation, UniqueViolation
from saga.machine import LogEntry, LogStatus, Outcome, Phase, SagaStatus
from saga.settings import Settings
from saga.store import Database
from saga.store.driver import DriverConnection
from saga.store.outbox import PendingMessage
from saga.store.postgres_log import PostgresSagaLog
from saga.store.records import InstanceRow, LogRow, StoredDefinition
from saga.testing.clock import TestClock
from tests.integration.conftest import SagaEnvironment
from tests.integration.sagas import (
    ALL_DONE,
    BOOKING,
    cluster,
    create_effect_tables,
    executions,
)
from tests.integration.test_saga_log_contract import (
    answer,
    answer_branch,
    forked,
    load,
    start,
    start_shaped,
    trip,
)

pytestmark = pytest.mark.integration

SAGAS = 24


@pytest.fixture
async def saga_log(settings: Settings, kit_database: str) -> AsyncIterator[PostgresSagaLog]:
    database = Database.from_settings(
        settings, url=kit_database, application_name="tests", clock=TestClock()
    )
    try:
        yield PostgresSagaLog(database)
    finally:
        await database.dispose()


@pytest.fixture
async def stored(saga_log: PostgresSagaLog) -> StoredDefinition:
    return await saga_log.register_definition(trip())


async def started(saga_log: PostgresSagaLog, stored: StoredDefinition, n: int) -> list[InstanceRow]:
    ids = [await start(saga_log, stored, payload={"n": i}) for i in range(n)]
    return [await load(saga_log, saga_id) for saga_id in ids]


async def write_answers(
    saga_log: PostgresSagaLog,
    stored: StoredDefinition,
    instances: Sequence[InstanceRow],
    outcome: Outcome = Outcome.SUCCEEDED,
) -> list[InstanceRow | BaseException | None]:
    """Each instance's answer written at once, as the coordinator's concurrent handlers do."""

    async def one(instance: InstanceRow) -> InstanceRow | None:
        prepared, state = answer(stored.definition, instance, outcome)
        return await saga_log.write_transition(
            instance,
            state,
            log=prepared.log,
            outbox=prepared.outbox,
            step_timeout=prepared.step_timeout,
        )

    return await asyncio.gather(*(one(i) for i in instances), return_exceptions=True)


async def rows(saga_log: PostgresSagaLog, sql: str, saga_id: uuid.UUID) -> list[tuple[object, ...]]:
    found = await saga_log.database.run_driver(
        lambda conn: conn.fetch(sql, saga_id), transaction=False
    )
    return [tuple(r.values()) for r in found]


async def step_log(saga_log: PostgresSagaLog, saga_id: uuid.UUID) -> list[tuple[object, ...]]:
    return await rows(
        saga_log,
        "SELECT step_index, action, status, attempt FROM shared.saga_step_log "
        "WHERE saga_instance_id = $1 ORDER BY created_at, started_at, step_index",
        saga_id,
    )


async def commands(saga_log: PostgresSagaLog, saga_id: uuid.UUID) -> int:
    [(count,)] = await rows(
        saga_log, "SELECT count(*) FROM shared.saga_outbox WHERE saga_instance_id = $1", saga_id
    )
    assert isinstance(count, int)
    return count


async def test_concurrent_transitions_share_commits_and_each_writes_its_own_rows(
    saga_log: PostgresSagaLog, stored: StoredDefinition
) -> None:
    instances = await started(saga_log, stored, SAGAS)
    batches = saga_log.transitions.batches

    written = await write_answers(saga_log, stored, instances)

    # The first write goes alone; the others queue behind it and share the next commits.
    assert saga_log.transitions.batches - batches < SAGAS / 2
    for instance, stored_row in zip(instances, written, strict=True):
        assert isinstance(stored_row, InstanceRow), stored_row
        assert stored_row.version == instance.version + 1
        assert await load(saga_log, instance.id) == stored_row
        assert stored_row.state.current_step == 1
        assert await step_log(saga_log, instance.id) == [
            (0, "execute", "dispatched", 1),
            (0, "execute", "succeeded", 1),
            (1, "execute", "dispatched", 1),
        ]
        assert await commands(saga_log, instance.id) == 2


async def test_a_write_on_a_stale_version_loses_alone_and_the_rest_of_its_batch_commits(
    saga_log: PostgresSagaLog, stored: StoredDefinition
) -> None:
    instances = await started(saga_log, stored, SAGAS)
    # Another process moves one saga first; this process still holds the old version.
    raced = instances[SAGAS // 2]
    [moved] = await write_answers(saga_log, stored, [raced])
    assert isinstance(moved, InstanceRow)
    log_before = await step_log(saga_log, raced.id)

    written = await write_answers(saga_log, stored, instances, Outcome.ERROR)

    for instance, stored_row in zip(instances, written, strict=True):
        if instance is raced:
            assert stored_row is None
            assert await load(saga_log, raced.id) == moved
            assert await step_log(saga_log, raced.id) == log_before
            assert await commands(saga_log, raced.id) == 2
        else:
            assert isinstance(stored_row, InstanceRow), stored_row
            assert stored_row.state.step_attempt == 2  # the error retries the step
            assert await commands(saga_log, instance.id) == 2


async def test_a_write_the_database_refuses_fails_alone_and_writes_nothing_of_its_own(
    saga_log: PostgresSagaLog, stored: StoredDefinition
) -> None:
    instances = await started(saga_log, stored, SAGAS)
    refused = instances[3]

    async def one(instance: InstanceRow) -> InstanceRow | None:
        prepared, state = answer(stored.definition, instance)
        assert prepared.outbox is not None
        outbox = prepared.outbox
        if instance is refused:
            # A command whose id is taken by the saga's first command.
            [(taken,)] = await rows(
                saga_log,
                "SELECT message_id FROM shared.saga_outbox WHERE saga_instance_id = $1",
                refused.id,
            )
            outbox = replace(outbox, message_id=uuid.UUID(str(taken)))
        return await saga_log.write_transition(
            instance, state, log=prepared.log, outbox=outbox, step_timeout=prepared.step_timeout
        )

    # Every write waits behind a first one, so the refused write shares a batch.
    written = await asyncio.gather(*(one(i) for i in instances), return_exceptions=True)

    assert saga_log.transitions.batches < 2 * SAGAS
    for instance, stored_row in zip(instances, written, strict=True):
        if instance is refused:
            assert isinstance(stored_row, UniqueViolation), stored_row
            assert await load(saga_log, refused.id) == refused
            assert await step_log(saga_log, refused.id) == [(0, "execute", "dispatched", 1)]
            assert await commands(saga_log, refused.id) == 1
        else:
            assert isinstance(stored_row, InstanceRow), stored_row
            assert await commands(saga_log, instance.id) == 2


async def test_two_transitions_of_one_saga_never_share_a_statement_and_one_of_them_wins(
    saga_log: PostgresSagaLog, stored: StoredDefinition
) -> None:
    instances = await started(saga_log, stored, SAGAS)
    twice = instances[0]
    # A duplicate decision on the same version, in the same burst as the others.
    written = await write_answers(saga_log, stored, [twice, *instances])

    first, again = written[0], written[1]
    assert [isinstance(w, InstanceRow) for w in (first, again)].count(True) == 1
    assert None in (first, again)
    assert await step_log(saga_log, twice.id) == [
        (0, "execute", "dispatched", 1),
        (0, "execute", "succeeded", 1),
        (1, "execute", "dispatched", 1),
    ]
    assert all(isinstance(w, InstanceRow) for w in written[2:])


async def test_concurrent_starts_share_commits_and_a_key_used_before_returns_its_saga(
    saga_log: PostgresSagaLog, stored: StoredDefinition
) -> None:
    first = await start(saga_log, stored, key="used-before")
    batches = saga_log.starts.batches
    keys = [f"fresh-{n}" for n in range(SAGAS)] + ["used-before", "used-before", "new", "new"]

    ids = await asyncio.gather(*(start(saga_log, stored, key=key) for key in keys))

    assert saga_log.starts.batches - batches < len(keys) / 2
    assert ids[SAGAS] == ids[SAGAS + 1] == first
    assert ids[SAGAS + 2] == ids[SAGAS + 3]
    assert len(set(ids)) == SAGAS + 2
    [(count,)] = await rows(
        saga_log,
        "SELECT count(*) FROM shared.saga_instance WHERE saga_definition_id = $1",
        stored.id,
    )
    assert count == SAGAS + 2
    for saga_id in set(ids):
        assert await step_log(saga_log, saga_id) == [(0, "execute", "dispatched", 1)]
        assert await commands(saga_log, saga_id) == 1


async def test_a_crash_between_a_group_commit_and_its_publishes_loses_no_command(
    saga_env: SagaEnvironment,
) -> None:
    """The commands of committed batches are dropped before the broker sees them, as if
    the coordinator died right after the commit; the relay sends them, and every saga
    ends with each of its effects applied once."""
    env = saga_env
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running:
        coordinator = running.coordinators[0]
        publisher = coordinator.runtime.publisher
        publish = publisher.publish
        dropped: list[uuid.UUID] = []

        async def crash_before_publishing(messages: Sequence[PendingMessage]) -> None:
            if len(dropped) < 3 * SAGAS // 2:
                dropped.extend(m.message_id for m in messages)
                return
            await publish(messages)

        payloads = [{"n": n} if n % 4 else {"refuse": "award"} for n in range(SAGAS)]
        ids = await asyncio.gather(*(coordinator.start(BOOKING, p) for p in payloads))
        publisher.publish = crash_before_publishing  # type: ignore[method-assign]
        summaries = await asyncio.gather(*(coordinator.wait(s, timeout=60) for s in ids))

    transitions = coordinator.saga_log.transitions  # type: ignore[attr-defined]
    assert transitions.batches < transitions.writes, "no transitions shared a commit"
    assert len(dropped) >= 3 * SAGAS // 2
    # A relay sweep that came while the drops went on was dropped too, and swept again.
    assert publisher.relayed >= len(set(dropped))
    for payload, saga_id, summary in zip(payloads, ids, summaries, strict=True):
        if "refuse" in payload:
            assert summary.status is SagaStatus.COMPENSATED
        else:
            assert summary.status is SagaStatus.COMPLETED
            assert await executions(env.database, saga_id) == ALL_DONE


async def written_while_the_first_is_held(
    settings: Settings,
    kit_database: str,
    instances: Sequence[InstanceRow],
    write_all: Callable[[], Coroutine[Any, Any, list[InstanceRow | BaseException | None]]],
) -> list[InstanceRow | BaseException | None]:
    """``write_all`` (a transition of every saga) while another transaction holds the
    first saga's row: every other saga must be written meanwhile, the held one only once
    the hold ends. What ``write_all`` returned."""
    held = instances[0]
    release = asyncio.Event()
    locked = asyncio.Event()
    # The holder and the test's reads have a pool of their own: the engine's is busy.
    other = Database.from_settings(settings, url=kit_database, application_name="holder")

    async def hold(conn: DriverConnection) -> None:
        # As a worker's claim or an operator's action holds a saga while it decides.
        await conn.execute("SELECT 1 FROM shared.saga_instance WHERE id = $1 FOR UPDATE", held.id)
        locked.set()
        await release.wait()

    async def versions() -> dict[uuid.UUID, int]:
        rows = await other.run_driver(
            lambda conn: conn.fetch(
                "SELECT id, version FROM shared.saga_instance WHERE id = ANY($1::uuid[])",
                [i.id for i in instances],
            ),
            transaction=False,
        )
        return {r["id"]: r["version"] for r in rows}

    try:
        holder = asyncio.create_task(other.run_driver(hold))
        await locked.wait()
        writes = asyncio.create_task(write_all())
        async with asyncio.timeout(4):
            while True:
                found = await versions()
                if all(found[i.id] == i.version + 1 for i in instances[1:]):
                    break
                await asyncio.sleep(0.05)
        assert not writes.done()
        assert found[held.id] == held.version
        release.set()
        await holder
    finally:
        release.set()
        await other.dispose()
    return await writes


async def test_a_saga_another_transaction_holds_is_written_alone_and_stalls_no_one(
    saga_log: PostgresSagaLog, stored: StoredDefinition, settings: Settings, kit_database: str
) -> None:
    instances = await started(saga_log, stored, SAGAS)
    held = instances[0]
    written = await written_while_the_first_is_held(
        settings,
        kit_database,
        instances,
        lambda: write_answers(saga_log, stored, instances),
    )
    assert all(isinstance(w, InstanceRow) for w in written), written
    assert await step_log(saga_log, held.id) == [
        (0, "execute", "dispatched", 1),
        (0, "execute", "succeeded", 1),
        (1, "execute", "dispatched", 1),
    ]


# --- sagas with parallel groups and waits ----------------------------------------------


async def started_shaped(saga_log: PostgresSagaLog, n: int) -> list[InstanceRow]:
    stored = await saga_log.register_definition(forked())
    ids = [await start_shaped(saga_log, stored) for _ in range(n)]
    return [await load(saga_log, saga_id) for saga_id in ids]


async def write_branch_answers(
    saga_log: PostgresSagaLog, instances: Sequence[InstanceRow]
) -> list[InstanceRow | BaseException | None]:
    """The first branch of each saga's group answered at once."""
    definition = forked()

    async def one(instance: InstanceRow) -> InstanceRow | None:
        prepared, state = answer_branch(definition, instance, 0)
        assert prepared.shape is not None
        return await saga_log.write_shaped_transition(
            instance, state, log=prepared.log, shape=prepared.shape
        )

    return await asyncio.gather(*(one(i) for i in instances), return_exceptions=True)


def first_branch_answered(instance: InstanceRow, written: object) -> None:
    assert isinstance(written, InstanceRow), written
    assert written.version == instance.version + 1
    assert [b.outcome.value for b in written.state.branches] == ["succeeded", "pending"]
    assert sorted(written.clock) == [1]  # the answered branch's clock is gone


async def test_concurrent_shaped_transitions_share_commits_and_each_keeps_its_own_state(
    saga_log: PostgresSagaLog,
) -> None:
    instances = await started_shaped(saga_log, SAGAS)
    batches = saga_log.shaped.batches

    written = await write_branch_answers(saga_log, instances)

    assert saga_log.shaped.batches - batches < SAGAS / 2
    for instance, stored_row in zip(instances, written, strict=True):
        first_branch_answered(instance, stored_row)
        assert await load(saga_log, instance.id) == stored_row
        assert await step_log(saga_log, instance.id) == [
            (0, "execute", "dispatched", 1),
            (0, "execute", "dispatched", 1),
            (0, "execute", "succeeded", 1),
        ]
        assert await commands(saga_log, instance.id) == 2


async def test_concurrent_shaped_starts_share_commits_and_a_key_used_before_returns_its_saga(
    saga_log: PostgresSagaLog,
) -> None:
    stored = await saga_log.register_definition(forked())
    first = await start_shaped(saga_log, stored, key="used-before")
    batches = saga_log.shaped_starts.batches
    keys = [f"fresh-{n}" for n in range(SAGAS)] + ["used-before", "used-before", "new", "new"]

    ids = await asyncio.gather(*(start_shaped(saga_log, stored, key=key) for key in keys))

    assert saga_log.shaped_starts.batches - batches < len(keys) / 2
    assert ids[SAGAS] == ids[SAGAS + 1] == first
    assert ids[SAGAS + 2] == ids[SAGAS + 3]
    assert len(set(ids)) == SAGAS + 2
    for saga_id in set(ids):
        assert await step_log(saga_log, saga_id) == [
            (0, "execute", "dispatched", 1),
            (0, "execute", "dispatched", 1),
        ]
        assert await commands(saga_log, saga_id) == 2
        assert sorted((await load(saga_log, saga_id)).clock) == [0, 1]


async def test_a_shaped_write_on_a_stale_version_loses_alone_and_the_rest_commits(
    saga_log: PostgresSagaLog,
) -> None:
    instances = await started_shaped(saga_log, SAGAS)
    raced = instances[SAGAS // 2]
    [moved] = await write_branch_answers(saga_log, [raced])
    assert isinstance(moved, InstanceRow)
    log_before = await step_log(saga_log, raced.id)

    written = await write_branch_answers(saga_log, instances)

    for instance, stored_row in zip(instances, written, strict=True):
        if instance is raced:
            assert stored_row is None
            assert await load(saga_log, raced.id) == moved
            assert await step_log(saga_log, raced.id) == log_before
        else:
            first_branch_answered(instance, stored_row)


async def test_a_shaped_saga_another_transaction_holds_is_written_alone_and_stalls_no_one(
    saga_log: PostgresSagaLog, settings: Settings, kit_database: str
) -> None:
    instances = await started_shaped(saga_log, SAGAS)
    written = await written_while_the_first_is_held(
        settings,
        kit_database,
        instances,
        lambda: write_branch_answers(saga_log, instances),
    )
    for instance, stored_row in zip(instances, written, strict=True):
        first_branch_answered(instance, stored_row)


def ignored_row(attempt: int) -> LogRow:
    entry = LogEntry(
        0, Phase.EXECUTE, LogStatus.IGNORED, attempt, {"outcome": "succeeded"}, "ignored: late"
    )
    return LogRow(entry=entry, step_name="reserve", journey="care", message_id=uuid.uuid4())


async def test_concurrent_reads_share_statements_and_each_gets_its_own_instance(
    saga_log: PostgresSagaLog, stored: StoredDefinition
) -> None:
    instances = await started(saga_log, stored, SAGAS)
    unknown = uuid.uuid4()
    asked = [i.id for i in instances] + [unknown, instances[0].id]
    batches = saga_log.loads.batches

    found = await asyncio.gather(*(saga_log.load_instance(saga_id) for saga_id in asked))

    assert saga_log.loads.batches - batches < len(asked) / 2
    assert found == [*instances, None, instances[0]]


async def test_ignored_replies_share_commits_and_a_refused_note_fails_alone(
    saga_log: PostgresSagaLog, stored: StoredDefinition
) -> None:
    instances = await started(saga_log, stored, SAGAS)
    # A saga that does not exist: its note breaks the log's foreign key.
    noted = [i.id for i in instances] + [uuid.uuid4()]
    batches = saga_log.ignored.batches

    outcomes = await asyncio.gather(
        *(saga_log.record_ignored(saga_id, ignored_row(n + 2)) for n, saga_id in enumerate(noted)),
        return_exceptions=True,
    )

    assert saga_log.ignored.batches - batches < len(noted) / 2
    assert outcomes[:-1] == [None] * SAGAS
    assert isinstance(outcomes[-1], ForeignKeyViolation), outcomes[-1]
    for n, instance in enumerate(instances):
        log = await step_log(saga_log, instance.id)
        assert log[-1] == (0, "execute", "ignored", n + 2)
        # Noted only: the instance is as it was.
        assert await load(saga_log, instance.id) == instance
