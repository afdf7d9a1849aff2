"""Units of work sharing a transaction on the real PostgreSQL (Database.run_shared), and a
participant whose commands share theirs: each unit keeps all or nothing of its own, a
failure reaches only its caller, and every effect happens once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from saga.coordinator import Coordinator
from saga.definition import IsolationLevel, NoCompensation, SagaDefinition, Step
from saga.errors import StatementTimeout, StepRefused, UniqueViolation
from saga.machine import SagaStatus
from saga.participant import Participant, StepContext
from saga.retry import RetryPolicy
from saga.settings import Settings
from saga.store import Database
from saga.store.driver import DriverConnection
from tests.integration.conftest import SagaEnvironment
from tests.integration.sagas import FAST_RELAY, FAST_RETRY

pytestmark = pytest.mark.integration

UNITS = 24


@pytest.fixture
async def database(settings: Settings, kit_database: str) -> AsyncIterator[Database]:
    database = Database.from_settings(settings, url=kit_database, application_name="tests")
    await database.run_driver(
        lambda conn: conn.execute(
            "CREATE TABLE public.shared_effect (n integer PRIMARY KEY, at timestamptz);"
            "CREATE TABLE public.shared_promise (n integer NOT NULL, "
            "CONSTRAINT shared_promise_unique UNIQUE (n) DEFERRABLE INITIALLY DEFERRED)"
        )
    )
    try:
        yield database
    finally:
        await database.dispose()


def insert(n: int, then: Callable[[], None] | None = None) -> Any:
    async def unit(conn: DriverConnection) -> int:
        await conn.execute("INSERT INTO public.shared_effect (n) VALUES ($1)", n)
        if then is not None:
            then()
        return n

    return unit


def refuse() -> None:
    raise RuntimeError("refused after its write")


async def written(database: Database) -> list[int]:
    rows = await database.run_driver(
        lambda conn: conn.fetch("SELECT n FROM public.shared_effect ORDER BY n"),
        transaction=False,
    )
    return [r["n"] for r in rows]


def shared(database: Database) -> Any:
    return database._shared[IsolationLevel.READ_COMMITTED]


async def test_units_in_hand_at_once_share_transactions_and_each_commits_its_own(
    database: Database,
) -> None:
    results = await asyncio.gather(*(database.run_shared(insert(n)) for n in range(UNITS)))
    assert results == list(range(UNITS))
    assert await written(database) == list(range(UNITS))
    assert shared(database).units == UNITS
    assert shared(database).transactions < UNITS / 2


async def test_a_unit_that_raises_leaves_nothing_and_the_others_commit(
    database: Database,
) -> None:
    units = [insert(n, refuse if n == 5 else None) for n in range(UNITS)]
    # A duplicate key in the middle: the statement fails, its savepoint is rolled back.
    units[9] = insert(3)
    results = await asyncio.gather(*(database.run_shared(u) for u in units), return_exceptions=True)
    assert isinstance(results[5], RuntimeError)
    assert str(results[5]) == "refused after its write"
    assert isinstance(results[9], UniqueViolation)
    assert await written(database) == [n for n in range(UNITS) if n not in (5, 9)]
    assert shared(database).transactions < UNITS / 2


async def test_each_unit_runs_under_its_own_statement_timeout(database: Database) -> None:
    def sleeps(seconds: float) -> Any:
        async def unit(conn: DriverConnection) -> float:
            await conn.execute(f"SELECT pg_sleep({seconds})")
            return seconds

        return unit

    results = await asyncio.gather(
        database.run_shared(insert(0)),
        database.run_shared(sleeps(0.3), statement_timeout_ms=50),
        database.run_shared(sleeps(0.2)),
        database.run_shared(insert(1)),
        return_exceptions=True,
    )
    assert isinstance(results[1], StatementTimeout)
    assert results[2] == 0.2  # the default timeout again, not the unit before it's 50 ms
    assert await written(database) == [0, 1]


async def test_a_commit_refused_for_one_units_sake_is_redone_unit_by_unit(
    database: Database,
) -> None:
    def promise(n: int) -> Any:
        async def unit(conn: DriverConnection) -> int:
            await conn.execute("INSERT INTO public.shared_promise (n) VALUES ($1)", n)
            return n

        return unit

    # Two promises of 7: the deferred constraint refuses the commit, not a statement.
    units = [promise(n) for n in range(UNITS)] + [promise(7)]
    results = await asyncio.gather(*(database.run_shared(u) for u in units), return_exceptions=True)
    assert results[:UNITS] == list(range(UNITS))
    assert isinstance(results[UNITS], UniqueViolation)
    rows = await database.run_driver(
        lambda conn: conn.fetch("SELECT n FROM public.shared_promise ORDER BY n"),
        transaction=False,
    )
    assert [r["n"] for r in rows] == list(range(UNITS))


async def test_serializable_units_share_until_a_conflict_then_each_runs_alone(
    database: Database,
) -> None:
    serializable = IsolationLevel.SERIALIZABLE

    def share(units: list[Any]) -> Any:
        return asyncio.gather(
            *(database.run_shared(u, isolation=serializable) for u in units),
            return_exceptions=True,
        )

    assert await share([insert(n) for n in range(UNITS)]) == list(range(UNITS))
    group = database._shared[serializable]
    assert group.transactions < UNITS / 2
    assert group.ran_alone_after_conflict == 0

    await database.run_driver(
        lambda conn: conn.execute(
            "CREATE TABLE public.shared_tally (id integer PRIMARY KEY, n integer NOT NULL);"
            "INSERT INTO public.shared_tally VALUES (1, 0)"
        )
    )
    read, moved = asyncio.Event(), asyncio.Event()
    runs = 0

    async def contended(conn: DriverConnection) -> int:
        nonlocal runs
        runs += 1
        n = int(await conn.fetchval("SELECT n FROM public.shared_tally WHERE id = 1"))
        if runs == 1:
            read.set()
            await moved.wait()  # meanwhile another transaction moves the row
        await conn.execute("UPDATE public.shared_tally SET n = $1 WHERE id = 1", n + 1)
        return n + 1

    async def move_the_row() -> None:
        await read.wait()
        await database.run_driver(
            lambda conn: conn.execute("UPDATE public.shared_tally SET n = 100 WHERE id = 1")
        )
        moved.set()

    conflicts = database.retries.by_sqlstate["40001"]
    units = [insert(n) for n in range(UNITS, UNITS + 4)] + [contended]
    units += [insert(n) for n in range(UNITS + 4, UNITS + 8)]
    results, _ = await asyncio.gather(share(units), move_the_row())

    # Its conflict doomed the transaction it shared: every unit in it was rolled back and
    # ran again alone, the contended one on the moved row.
    assert results == [*range(UNITS, UNITS + 4), 101, *range(UNITS + 4, UNITS + 8)]
    assert runs == 2
    assert await written(database) == list(range(UNITS + 8))
    assert group.ran_alone_after_conflict >= 2
    assert database.retries.by_sqlstate["40001"] - conflicts == group.ran_alone_after_conflict


# --- a participant's commands ------------------------------------------------------------

LEDGER = """
CREATE TABLE IF NOT EXISTS public.shared_ledger (
    saga_id uuid NOT NULL, step text NOT NULL, kind text NOT NULL,
    PRIMARY KEY (saga_id, step, kind)
);
CREATE TABLE IF NOT EXISTS public.shared_counter (id integer PRIMARY KEY, n integer NOT NULL);
INSERT INTO public.shared_counter VALUES (1, 0) ON CONFLICT DO NOTHING;
"""

# Three steps on one journey: the first two share transactions, the middle one
# Serializable (it bumps one hot row, so concurrent sagas conflict and are re-run).
MIXED = SagaDefinition(
    "shared_mixed",
    1,
    [
        Step(
            name="hold",
            journey="care",
            action="hold",
            compensation="unhold",
            retry=FAST_RETRY,
            compensation_retry=FAST_RETRY,
        ),
        Step(
            name="count",
            journey="care",
            action="count",
            compensation="uncount",
            isolation=IsolationLevel.SERIALIZABLE,
            retry=FAST_RETRY,
            compensation_retry=FAST_RETRY,
        ),
        Step(
            name="settle",
            journey="care",
            action="settle",
            no_compensation=NoCompensation.LAST,
            retry=FAST_RETRY,
        ),
    ],
)


def ledger_handler(step_name: str, kind: str) -> Any:
    async def handler(step: StepContext) -> Mapping[str, Any]:
        conn = step.connection
        await conn.execute(
            "INSERT INTO public.shared_ledger (saga_id, step, kind) VALUES ($1, $2, $3)",
            step.saga_id,
            step_name,
            kind,
        )
        if step_name == "count":
            delta = 1 if kind == "do" else -1
            await conn.execute("UPDATE public.shared_counter SET n = n + $1 WHERE id = 1", delta)
        if kind == "do" and step.payload.get("refuse") == step_name:
            raise StepRefused(f"{step_name} refused by the test")
        return {step_name: True}

    return handler


async def test_a_participants_batch_with_refusals_and_serializable_conflicts_keeps_each_effect_once(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await env.database.run_driver(lambda conn: conn.execute(LEDGER))
    participant = Participant(
        "care",
        schema="care_journey",
        settings=env.settings.model_copy(update={"participant_shared_transactions": True}),
        database=env.database,
        bootstrap_servers=env.bootstrap,
        # Every saga's Serializable step bumps one row: conflicts are the point, and
        # each is re-run until it goes through.
        retry=RetryPolicy(max_attempts=30, initial_delay=0.005, max_delay=0.1),
        relay=FAST_RELAY,
    )
    for action, step_name, kind in [
        ("hold", "hold", "do"),
        ("unhold", "hold", "undo"),
        ("count", "count", "do"),
        ("uncount", "count", "undo"),
        ("settle", "settle", "do"),
    ]:
        participant.register(action, ledger_handler(step_name, kind))
    conflicts_before = env.database.retries.by_sqlstate["40001"]
    async with Coordinator(
        settings=env.settings,
        database=env.database,
        bootstrap_servers=env.bootstrap,
        relay=FAST_RELAY,
    ) as coordinator:
        await coordinator.register(MIXED)
        running = [
            asyncio.create_task(coordinator.run()),
            asyncio.create_task(participant.run()),
        ]
        try:
            payloads = [
                {"refuse": "settle"} if n % 5 == 2 else {"refuse": "hold"} if n % 7 == 3 else {}
                for n in range(40)
            ]
            ids = await asyncio.gather(*(coordinator.start(MIXED, p) for p in payloads))
            summaries = await asyncio.gather(*(coordinator.wait(s, timeout=60) for s in ids))
        finally:
            await participant.stop()
            await coordinator.stop()
            await asyncio.wait_for(asyncio.gather(*running), 20)

    rows = await env.database.run_driver(
        lambda conn: conn.fetch("SELECT saga_id, step, kind FROM public.shared_ledger"),
        transaction=False,
    )
    ledger: dict[uuid.UUID, list[tuple[str, str]]] = {}
    for r in rows:
        ledger.setdefault(r["saga_id"], []).append((r["step"], r["kind"]))
    completed = 0
    for payload, saga_id, summary in zip(payloads, ids, summaries, strict=True):
        effects = sorted(ledger.get(saga_id, []))
        if payload.get("refuse") == "hold":
            # Refused: its write rolled back with its savepoint, nothing else ran.
            assert summary.status is SagaStatus.COMPENSATED
            assert effects == []
        elif payload.get("refuse") == "settle":
            assert summary.status is SagaStatus.COMPENSATED
            assert effects == sorted(
                [("hold", "do"), ("hold", "undo"), ("count", "do"), ("count", "undo")]
            )
        else:
            completed += 1
            assert summary.status is SagaStatus.COMPLETED
            assert effects == sorted([("hold", "do"), ("count", "do"), ("settle", "do")])
    [counter] = await env.database.run_driver(
        lambda conn: conn.fetch("SELECT n FROM public.shared_counter WHERE id = 1"),
        transaction=False,
    )
    assert counter["n"] == completed
    assert env.database.retries.by_sqlstate["40001"] > conflicts_before
    shared_units = env.database._shared[IsolationLevel.READ_COMMITTED]
    assert shared_units.transactions < shared_units.units, "no commands shared a transaction"
    # The Serializable step went by shared transactions too, and its conflicts sent the
    # commands that met them to transactions of their own.
    serializable = env.database._shared[IsolationLevel.SERIALIZABLE]
    assert serializable.units >= len(payloads) - sum(1 for p in payloads if "refuse" in p)
    assert serializable.ran_alone_after_conflict > 0


async def test_a_unit_that_would_wait_for_a_lock_runs_alone_and_stalls_no_one(
    database: Database,
) -> None:
    await database.run_shared(insert(1000))
    release = asyncio.Event()
    locked = asyncio.Event()

    async def hold(conn: DriverConnection) -> None:
        await conn.execute("SELECT 1 FROM public.shared_effect WHERE n = 1000 FOR UPDATE")
        locked.set()
        await release.wait()

    async def touch(conn: DriverConnection) -> str:
        return await conn.execute("UPDATE public.shared_effect SET at = now() WHERE n = 1000")

    holder = asyncio.create_task(database.run_driver(hold))
    await locked.wait()
    blocked = asyncio.create_task(database.run_shared(touch))
    others = [asyncio.create_task(database.run_shared(insert(n))) for n in range(UNITS)]
    async with asyncio.timeout(10):
        assert [await task for task in others] == list(range(UNITS))
    assert not blocked.done()
    release.set()
    await holder
    assert await blocked == "UPDATE 1"
    assert shared(database).ran_alone == 1
