"""One contract for every adapter of the saga log port, run against each of them.

:class:`SagaLogContract` holds the tests and moves sagas only through the port
(:class:`~saga.store.port.SagaLog`); each adapter's class below says how to make its log,
how to move the log's clock forward and how to read back the step log and the commands a
saga was given, which the port itself never returns. The PostgreSQL adapter runs on a
migrated database of the test's own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import pytest

from saga.coordinator.commands import (
    PreparedWrite,
    build_command,
    log_rows,
    outbox_row,
    prepare_write,
)
from saga.coordinator.signals import consume_kept_signals
from saga.definition import SagaDefinition, Step
from saga.errors import DefinitionConflict, UniqueViolation, UnknownDefinition, UsageError
from saga.machine import (
    BranchOutcome,
    InstanceState,
    LogEntry,
    LogStatus,
    Outcome,
    Phase,
    SagaStatus,
    StepEvent,
    advance,
    begin,
    expire,
)
from saga.settings import Settings
from saga.shapes import AwaitEvent, Parallel
from saga.store import Database
from saga.store.port import ClaimedSagas, LockedSaga, SagaLog, SettleClaimed
from saga.store.postgres_log import PostgresSagaLog
from saga.store.records import InstanceRow, LogRow, StoredDefinition, StoredSignal
from saga.testing.clock import TestClock
from saga.transport import Topics

pytestmark = pytest.mark.integration

TOPICS = Topics(prefix="contract")
STEP_TIMEOUT = 30.0
SAGA_TIMEOUT = 600.0


@dataclass(frozen=True)
class Logged:
    """A step-log row read back: what the contract checks of it."""

    step_index: int
    action: str
    status: str
    attempt: int


class Adapter(Protocol):
    """What the contract needs from each adapter's test class."""

    @property
    def saga_log(self) -> SagaLog: ...

    def advance(self, seconds: float) -> None:
        """Move the clock the log writes and judges deadlines by."""
        ...

    async def step_log(self, saga_id: uuid.UUID) -> list[Logged]:
        """The saga's step-log rows, oldest first."""
        ...

    async def commands(self, saga_id: uuid.UUID) -> list[uuid.UUID]:
        """The message ids of the commands written for the saga, in any order."""
        ...


def trip(name: str = "contract_trip", *, version: int = 1, action: str = "book") -> SagaDefinition:
    """Two compensatable steps; the step's and the saga's deadlines are far apart, so a
    test moves the clock past one without the other."""
    return SagaDefinition(
        name,
        version,
        [
            Step(
                name="book",
                journey="care",
                action=action,
                compensation="cancel",
                timeout=STEP_TIMEOUT,
            ),
            Step(
                name="pay",
                journey="plan",
                action="pay",
                compensation="refund",
                timeout=STEP_TIMEOUT,
            ),
        ],
        timeout=SAGA_TIMEOUT,
    )


async def start(
    saga_log: SagaLog,
    stored: StoredDefinition,
    *,
    key: str | None = None,
    payload: Mapping[str, Any] | None = None,
) -> uuid.UUID:
    """Start a saga the way the coordinator does: its first step dispatched."""
    saga_id = uuid.uuid4()
    definition = stored.definition
    first = begin(definition)
    assert first.dispatch is not None
    command = build_command(
        saga_id=saga_id,
        definition=definition,
        dispatch=first.dispatch,
        payload=payload or {},
        context={},
        reply_to=TOPICS.replies,
    )
    return await saga_log.insert_start(
        saga_id=saga_id,
        definition=stored,
        payload=payload or {},
        idempotency_key=key,
        log=log_rows(saga_id, definition, first.log, command=command, attempt_started_at=None),
        outbox=outbox_row(command, TOPICS.commands(command.journey), 0.0),
    )


def answer(
    definition: SagaDefinition,
    instance: InstanceRow,
    outcome: Outcome = Outcome.SUCCEEDED,
    result: Mapping[str, Any] | None = None,
) -> tuple[PreparedWrite, InstanceState]:
    """What the coordinator would write for a reply to the current attempt."""
    state = instance.state
    event = StepEvent(
        state.current_step, state.phase, state.step_attempt, outcome, result or {}, "no"
    )
    transition = advance(definition, state, event)
    assert transition.ignored is None, transition.ignored
    return prepare_write(instance, definition, transition, TOPICS), transition.state


SHORT_TIMEOUT = 5.0


def forked() -> SagaDefinition:
    """Two branches at once (the second with a shorter timeout), then a wait."""
    return SagaDefinition(
        "contract_fork",
        1,
        [
            Parallel(
                "both",
                [
                    Step(
                        name="hold",
                        journey="care",
                        action="hold",
                        compensation="release",
                        timeout=STEP_TIMEOUT,
                    ),
                    Step(
                        name="charge",
                        journey="plan",
                        action="charge",
                        compensation="refund",
                        timeout=SHORT_TIMEOUT,
                    ),
                ],
            ),
            AwaitEvent("checked", "checked", STEP_TIMEOUT),
        ],
        timeout=SAGA_TIMEOUT,
    )


async def start_shaped(
    saga_log: SagaLog, stored: StoredDefinition, key: str | None = None
) -> uuid.UUID:
    """Start a saga with shapes the way the coordinator does."""
    saga_id = uuid.uuid4()
    definition = stored.definition
    first = begin(definition, payload={})
    fresh = InstanceRow(saga_id, definition.name, definition.version, first.state, {}, 0, None)
    prepared = prepare_write(fresh, definition, first, TOPICS)
    assert prepared.shape is not None
    return await saga_log.insert_shaped_start(
        saga_id=saga_id,
        definition=stored,
        payload={},
        idempotency_key=key,
        state=first.state,
        log=prepared.log,
        shape=prepared.shape,
    )


def answer_branch(
    definition: SagaDefinition, instance: InstanceRow, branch: int
) -> tuple[PreparedWrite, InstanceState]:
    state = instance.state
    event = StepEvent(
        state.current_step, Phase.EXECUTE, 1, Outcome.SUCCEEDED, {"n": branch}, branch=branch
    )
    transition = advance(definition, state, event, payload=instance.payload)
    assert transition.ignored is None, transition.ignored
    return prepare_write(instance, definition, transition, TOPICS), transition.state


async def load(saga_log: SagaLog, saga_id: uuid.UUID) -> InstanceRow:
    instance = await saga_log.load_instance(saga_id)
    assert instance is not None, f"saga {saga_id} was not found"
    return instance


class SagaLogContract:
    """The saga log port's contract; subclasses provide the ``adapter`` fixture."""

    @pytest.fixture
    async def stored(self, adapter: Adapter) -> StoredDefinition:
        return await adapter.saga_log.register_definition(trip())

    async def test_a_definition_is_stored_once_per_version_and_never_changed(
        self, adapter: Adapter
    ) -> None:
        log = adapter.saga_log
        first = await log.register_definition(trip())
        assert await log.register_definition(trip()) == first
        with pytest.raises(DefinitionConflict, match="contract_trip"):
            await log.register_definition(trip(action="reserve"))
        second = await log.register_definition(trip(version=2, action="reserve"))
        assert second.id != first.id
        assert (await log.load_definition("contract_trip", 1)) == first
        assert (await log.load_definition("contract_trip")).definition == second.definition
        with pytest.raises(UnknownDefinition, match="nowhere"):
            await log.load_definition("nowhere")

    async def test_a_start_is_idempotent_by_its_key(
        self, adapter: Adapter, stored: StoredDefinition
    ) -> None:
        log = adapter.saga_log
        first = await start(log, stored, key="request-1", payload={"n": 1})
        again = await start(log, stored, key="request-1", payload={"n": 2})
        other = await start(log, stored, key="request-2")
        assert again == first
        assert other != first
        assert (await load(log, first)).payload == {"n": 1}
        assert await adapter.step_log(first) == [Logged(0, "execute", "dispatched", 1)]
        assert len(await adapter.commands(first)) == 1

    async def test_load_returns_what_was_written(
        self, adapter: Adapter, stored: StoredDefinition
    ) -> None:
        log = adapter.saga_log
        saga_id = await start(log, stored, payload={"slot": "a"})
        started = await load(log, saga_id)
        assert (started.id, started.definition_name, started.definition_version) == (
            saga_id,
            "contract_trip",
            1,
        )
        assert (started.state.status, started.state.current_step, started.state.step_attempt) == (
            SagaStatus.RUNNING,
            0,
            1,
        )
        assert started.payload == {"slot": "a"}
        assert started.step_started_at is not None

        prepared, state = answer(stored.definition, started, result={"booking": 7})
        written = await log.write_transition(
            started,
            state,
            log=prepared.log,
            outbox=prepared.outbox,
            step_timeout=prepared.step_timeout,
        )
        assert written is not None
        assert written.version == started.version + 1
        assert await load(log, saga_id) == written
        assert written.state.current_step == 1
        assert written.state.context["booking"] == 7
        assert await log.load_instance(uuid.uuid4()) is None

    async def test_a_transition_is_written_with_its_log_rows_and_command(
        self, adapter: Adapter, stored: StoredDefinition
    ) -> None:
        log = adapter.saga_log
        saga_id = await start(log, stored)
        instance = await load(log, saga_id)
        prepared, state = answer(stored.definition, instance)
        assert prepared.outbox is not None
        await log.write_transition(
            instance,
            state,
            log=prepared.log,
            outbox=prepared.outbox,
            step_timeout=prepared.step_timeout,
        )
        assert await adapter.step_log(saga_id) == [
            Logged(0, "execute", "dispatched", 1),
            Logged(0, "execute", "succeeded", 1),
            Logged(1, "execute", "dispatched", 1),
        ]
        assert prepared.outbox.message_id in await adapter.commands(saga_id)

    async def test_a_transition_that_cannot_be_written_whole_writes_nothing(
        self, adapter: Adapter, stored: StoredDefinition
    ) -> None:
        log = adapter.saga_log
        saga_id = await start(log, stored)
        instance = await load(log, saga_id)
        prepared, state = answer(stored.definition, instance)
        assert prepared.outbox is not None
        # A command whose id is taken: the instance and the log rows must not stay behind.
        (taken,) = await adapter.commands(saga_id)
        clash = replace(prepared.outbox, message_id=taken)
        with pytest.raises(UniqueViolation):
            await log.write_transition(
                instance,
                state,
                log=prepared.log,
                outbox=clash,
                step_timeout=prepared.step_timeout,
            )
        assert await load(log, saga_id) == instance
        assert await adapter.step_log(saga_id) == [Logged(0, "execute", "dispatched", 1)]
        assert await adapter.commands(saga_id) == [taken]

    async def test_a_transition_on_a_stale_version_writes_nothing(
        self, adapter: Adapter, stored: StoredDefinition
    ) -> None:
        log = adapter.saga_log
        saga_id = await start(log, stored)
        instance = await load(log, saga_id)
        first, first_state = answer(stored.definition, instance)
        moved = await log.write_transition(
            instance,
            first_state,
            log=first.log,
            outbox=first.outbox,
            step_timeout=first.step_timeout,
        )
        assert moved is not None
        log_before = await adapter.step_log(saga_id)
        commands_before = sorted(await adapter.commands(saga_id))

        # A second writer decided on the same, now stale, version: try the step again.
        late, late_state = answer(stored.definition, instance, Outcome.ERROR)
        assert late.outbox is not None
        assert late.outbox.message_id not in commands_before
        stale = await log.write_transition(
            instance,
            late_state,
            log=late.log,
            outbox=late.outbox,
            step_timeout=late.step_timeout,
        )
        assert stale is None
        assert await load(log, saga_id) == moved
        assert await adapter.step_log(saga_id) == log_before
        assert sorted(await adapter.commands(saga_id)) == commands_before

    async def test_an_ignored_reply_is_appended_without_moving_the_saga(
        self, adapter: Adapter, stored: StoredDefinition
    ) -> None:
        log = adapter.saga_log
        saga_id = await start(log, stored)
        instance = await load(log, saga_id)
        row = LogRow(
            entry=LogEntry(
                0,
                Phase.EXECUTE,
                LogStatus.IGNORED,
                1,
                {"outcome": "succeeded"},
                "ignored: a duplicate",
            ),
            step_name="book",
            journey="care",
            message_id=uuid.uuid4(),
        )
        await log.record_ignored(saga_id, row)
        await log.record_ignored(saga_id, row)
        assert await adapter.step_log(saga_id) == [
            Logged(0, "execute", "dispatched", 1),
            Logged(0, "execute", "ignored", 1),
            Logged(0, "execute", "ignored", 1),
        ]
        assert await load(log, saga_id) == instance

    async def test_the_summary_follows_the_saga_to_its_end(
        self, adapter: Adapter, stored: StoredDefinition
    ) -> None:
        log = adapter.saga_log
        saga_id = await start(log, stored)
        running = await log.summary(saga_id)
        assert running is not None
        assert (running.id, running.status, running.finished_at) == (
            saga_id,
            SagaStatus.RUNNING,
            None,
        )
        for result in ({"booking": 7}, {"paid": 12}):
            instance = await load(log, saga_id)
            prepared, state = answer(stored.definition, instance, result=result)
            await log.write_transition(
                instance,
                state,
                log=prepared.log,
                outbox=prepared.outbox,
                step_timeout=prepared.step_timeout,
            )
        done = await log.summary(saga_id)
        assert done is not None
        assert done.status is SagaStatus.COMPLETED
        assert done.context == {"booking": 7, "paid": 12}
        assert done.finished_at is not None
        assert done.finished_at >= done.started_at
        assert await log.summary(uuid.uuid4()) is None

    async def test_overdue_steps_are_claimed_once_across_concurrent_claimers(
        self, adapter: Adapter, stored: StoredDefinition
    ) -> None:
        log = adapter.saga_log
        sagas = {await start(log, stored) for _ in range(6)}
        assert await log.claim_overdue_steps(10, _ids) == []
        adapter.advance(STEP_TIMEOUT + 1)
        first, second = await _two_claimers(log.claim_overdue_steps, stored.definition, "timeout")
        assert (len(first), len(second)) == (4, 2)
        assert set(first) | set(second) == sagas
        # Each was re-sent with a fresh deadline: nothing is overdue any more.
        assert await log.claim_overdue_steps(10, _ids) == []
        for saga_id in sagas:
            assert (await load(log, saga_id)).state.step_attempt == 2

    async def test_expired_sagas_are_claimed_once_across_concurrent_claimers(
        self, adapter: Adapter, stored: StoredDefinition
    ) -> None:
        log = adapter.saga_log
        sagas = {await start(log, stored) for _ in range(6)}
        adapter.advance(SAGA_TIMEOUT + 1)
        first, second = await _two_claimers(log.claim_expired_sagas, stored.definition, "expire")
        assert (len(first), len(second)) == (4, 2)
        assert set(first) | set(second) == sagas
        assert await log.claim_expired_sagas(10, _ids) == []
        for saga_id in sagas:
            status = (await load(log, saga_id)).state.status
            assert status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED)

    async def test_a_claim_whose_unit_fails_keeps_nothing_and_frees_its_sagas(
        self, adapter: Adapter, stored: StoredDefinition
    ) -> None:
        log = adapter.saga_log
        saga_id = await start(log, stored)
        adapter.advance(STEP_TIMEOUT + 1)
        before = await load(log, saga_id)

        async def write_then_fail(claimed: ClaimedSagas) -> None:
            (instance,) = claimed.instances
            await claimed.write_transition(
                instance,
                _timed_out(stored.definition, instance)[1],
                log=[],
                outbox=None,
                step_timeout=STEP_TIMEOUT,
            )
            raise LookupError("the unit gave up")

        with pytest.raises(LookupError):
            await log.claim_overdue_steps(10, write_then_fail)
        assert await load(log, saga_id) == before
        assert await log.claim_overdue_steps(10, _ids) == [saga_id]

    async def test_a_claim_writes_only_the_sagas_it_holds(
        self, adapter: Adapter, stored: StoredDefinition
    ) -> None:
        log = adapter.saga_log
        unclaimed = await load(log, await start(log, stored))

        async def write_unclaimed(claimed: ClaimedSagas) -> None:
            assert len(claimed.instances) == 0
            state = replace(unclaimed.state, status=SagaStatus.PARKED, error="by hand")
            await claimed.write_transition(unclaimed, state, log=[], outbox=None, step_timeout=0)

        with pytest.raises(UsageError, match=str(unclaimed.id)):
            await log.claim_overdue_steps(10, write_unclaimed)
        assert await load(log, unclaimed.id) == unclaimed

    # --- sagas with parallel groups and waits ----------------------------------------------

    async def test_a_group_starts_with_every_branch_command_and_a_clock_each(
        self, adapter: Adapter
    ) -> None:
        log = adapter.saga_log
        stored = await log.register_definition(forked())
        saga_id = await start_shaped(log, stored)
        assert await adapter.step_log(saga_id) == [
            Logged(0, "execute", "dispatched", 1),
            Logged(0, "execute", "dispatched", 1),
        ]
        assert len(await adapter.commands(saga_id)) == 2
        started = await load(log, saga_id)
        assert [b.outcome for b in started.state.branches] == [BranchOutcome.PENDING] * 2
        assert sorted(started.clock) == [0, 1]
        # The short branch's clock runs out first; the claim names it alone.
        adapter.advance(SHORT_TIMEOUT + 1)
        overdue: list[tuple[int, ...]] = []

        async def branches(claimed: ClaimedSagas) -> None:
            overdue.extend(i.overdue_branches for i in claimed.instances)

        await log.claim_overdue_steps(10, branches)
        assert overdue == [(1,)]

    async def test_a_shaped_transition_on_a_stale_version_writes_nothing(
        self, adapter: Adapter
    ) -> None:
        log = adapter.saga_log
        stored = await log.register_definition(forked())
        instance = await load(log, await start_shaped(log, stored))
        prepared, state = answer_branch(stored.definition, instance, 0)
        assert prepared.shape is not None
        moved = await log.write_shaped_transition(
            instance, state, log=prepared.log, shape=prepared.shape
        )
        assert moved is not None
        assert moved.state.branches[0].outcome is BranchOutcome.SUCCEEDED
        assert sorted(moved.clock) == [1]  # the answered branch's clock is gone
        before = await adapter.step_log(instance.id)
        again = await log.write_shaped_transition(
            instance, state, log=prepared.log, shape=prepared.shape
        )
        assert again is None
        assert await adapter.step_log(instance.id) == before
        assert await load(log, instance.id) == moved

    async def test_a_signal_kept_before_the_wait_is_consumed_by_the_transition_entering_it(
        self, adapter: Adapter
    ) -> None:
        log = adapter.saga_log
        stored = await log.register_definition(forked())
        definition = stored.definition
        saga_id = await start_shaped(log, stored)
        kept = StoredSignal(saga_id, "checked", "early", {"ok": True}, "ana", None, False)

        async def keep(locked: LockedSaga | None) -> None:
            assert locked is not None
            await locked.touch()
            assert await locked.insert_signal(kept, consumed_by_transition=None)

        await log.signal_unit(saga_id, keep)
        found = await log.kept_signal(saga_id, "checked")
        assert found is not None
        assert found.signal_id == "early"
        assert await log.kept_signal(saga_id, "checked", ["early"]) is None

        instance = await load(log, saga_id)
        prepared, state = answer_branch(definition, instance, 0)
        assert prepared.shape is not None
        instance = await log.write_shaped_transition(
            instance, state, log=prepared.log, shape=prepared.shape
        ) or pytest.fail("not written")
        last = advance(
            definition,
            instance.state,
            StepEvent(0, Phase.EXECUTE, 1, Outcome.SUCCEEDED, {"n": 2}, branch=1),
        )
        assert last.wait is not None  # the group joined: the saga enters its wait
        transition, consumed = await consume_kept_signals(
            definition, saga_id, instance.payload, last, log.kept_signal
        )
        assert [c.signal_id for c in consumed] == ["early"]
        prepared = prepare_write(instance, definition, transition, TOPICS, signals=consumed)
        assert prepared.shape is not None
        written = await log.write_shaped_transition(
            instance, transition.state, log=prepared.log, shape=prepared.shape
        )
        assert written is not None
        assert written.state.status is SagaStatus.COMPLETED
        assert written.state.context["checked"] == {"ok": True}
        assert await log.kept_signal(saga_id, "checked") is None
        assert [entry.status for entry in await adapter.step_log(saga_id)][-2:] == [
            "waiting",
            "succeeded",
        ]


async def _ids(claimed: ClaimedSagas) -> list[uuid.UUID]:
    return [instance.id for instance in claimed.instances]


def _timed_out(
    definition: SagaDefinition, instance: InstanceRow
) -> tuple[PreparedWrite, InstanceState]:
    state = instance.state
    event = StepEvent(
        state.current_step, state.phase, state.step_attempt, Outcome.TIMED_OUT, reason="late"
    )
    transition = advance(definition, state, event)
    return prepare_write(instance, definition, transition, TOPICS), transition.state


async def _two_claimers(
    claim: Callable[[int, SettleClaimed[list[uuid.UUID]]], Awaitable[list[uuid.UUID]]],
    definition: SagaDefinition,
    how: str,
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """The first claimer takes four sagas and holds them while the second claims; each
    then writes what the timeout worker would."""
    holding = asyncio.Event()
    second_done = asyncio.Event()

    async def settle(claimed: ClaimedSagas, *, first: bool) -> list[uuid.UUID]:
        if first:
            holding.set()
            await asyncio.wait_for(second_done.wait(), 10)
        for instance in claimed.instances:
            if how == "timeout":
                prepared, state = _timed_out(definition, instance)
            else:
                transition = expire(definition, instance.state, "saga deadline passed")
                prepared = prepare_write(instance, definition, transition, TOPICS)
                state = transition.state
            await claimed.write_transition(
                instance,
                state,
                log=prepared.log,
                outbox=prepared.outbox,
                step_timeout=prepared.step_timeout,
            )
        return [instance.id for instance in claimed.instances]

    async def settle_first(claimed: ClaimedSagas) -> list[uuid.UUID]:
        return await settle(claimed, first=True)

    async def settle_second(claimed: ClaimedSagas) -> list[uuid.UUID]:
        return await settle(claimed, first=False)

    async def claim_first() -> list[uuid.UUID]:
        return await claim(4, settle_first)

    first = asyncio.create_task(claim_first())
    await asyncio.wait_for(holding.wait(), 10)
    try:
        second = await claim(4, settle_second)
    finally:
        second_done.set()
    return await first, second


class TestPostgresSagaLog(SagaLogContract):
    """The ``shared`` schema's saga tables, on a migrated database of the test's own."""

    @pytest.fixture
    async def adapter(self, settings: Settings, kit_database: str) -> AsyncIterator[Adapter]:
        clock = TestClock()
        database = Database.from_settings(
            settings, url=kit_database, application_name="tests", clock=clock
        )
        try:
            yield _Postgres(PostgresSagaLog(database), database, clock)
        finally:
            await database.dispose()


class _Postgres:
    def __init__(self, saga_log: PostgresSagaLog, database: Database, clock: TestClock) -> None:
        self._log = saga_log
        self._database = database
        self._clock = clock

    @property
    def saga_log(self) -> SagaLog:
        return self._log

    def advance(self, seconds: float) -> None:
        self._clock.advance(seconds)

    async def step_log(self, saga_id: uuid.UUID) -> list[Logged]:
        rows = await self._database.run_driver(
            lambda conn: conn.fetch(
                "SELECT step_index, action, status, attempt FROM shared.saga_step_log "
                "WHERE saga_instance_id = $1 ORDER BY created_at, started_at, step_index",
                saga_id,
            ),
            transaction=False,
        )
        return [Logged(r["step_index"], r["action"], r["status"], r["attempt"]) for r in rows]

    async def commands(self, saga_id: uuid.UUID) -> list[uuid.UUID]:
        rows = await self._database.run_driver(
            lambda conn: conn.fetch(
                "SELECT message_id FROM shared.saga_outbox WHERE saga_instance_id = $1", saga_id
            ),
            transaction=False,
        )
        return [r["message_id"] for r in rows]
