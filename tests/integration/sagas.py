"""A test saga across three journeys whose handlers write real rows, and the plumbing to
run it: a migrated database of the test's own, topics of the test's own on the broker,
participants and coordinators started and always stopped.

Each handler's effect is a row in ``public.test_effect``; its compensation deletes it.
``public.test_effect_log`` counts committed executions, so a handler that ran twice shows.
The saga's payload steers failures: ``refuse`` names an action that refuses, ``error``
maps an action to how many attempts raise, ``sleep`` maps an action to seconds it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from saga.coordinator import Coordinator
from saga.definition import NoCompensation, SagaDefinition, Step
from saga.errors import StepRefused
from saga.outbox import RelaySettings
from saga.participant import Participant, StepContext
from saga.retry import RetryPolicy
from saga.settings import Settings
from saga.store import Database

if TYPE_CHECKING:
    from tests.integration.conftest import SagaEnvironment

FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.05)
FAST_RELAY = RelaySettings(interval=0.2, grace=1.0, lease=5.0)

SCHEMAS = {"care": "care_journey", "plan": "plan_journey", "gamification": "gamification"}

BOOKING = SagaDefinition(
    "test_booking",
    1,
    [
        Step(
            name="reserve",
            journey="care",
            action="reserve",
            compensation="release",
            retry=FAST_RETRY,
            compensation_retry=FAST_RETRY,
        ),
        Step(
            name="authorize",
            journey="plan",
            action="authorize",
            compensation="void",
            retry=FAST_RETRY,
            compensation_retry=FAST_RETRY,
        ),
        Step(
            name="award",
            journey="gamification",
            action="award",
            compensation="revoke",
            retry=FAST_RETRY,
            compensation_retry=FAST_RETRY,
        ),
        Step(
            name="confirm",
            journey="care",
            action="confirm",
            no_compensation=NoCompensation.LAST,
            retry=FAST_RETRY,
        ),
    ],
)

# What a completed BOOKING leaves in the execution log: each action once, in order.
ALL_DONE = [("reserve", "do"), ("authorize", "do"), ("award", "do"), ("confirm", "do")]

ACTIONS: dict[str, dict[str, str | None]] = {
    "care": {"reserve": "release", "confirm": None},
    "plan": {"authorize": "void"},
    "gamification": {"award": "revoke"},
}

EFFECT_TABLES = """
CREATE TABLE IF NOT EXISTS public.test_effect (
    saga_id uuid NOT NULL, action text NOT NULL, PRIMARY KEY (saga_id, action)
);
CREATE TABLE IF NOT EXISTS public.test_effect_log (
    saga_id uuid NOT NULL, action text NOT NULL, kind text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""


async def create_effect_tables(database: Database) -> None:
    async def create(conn: Any) -> None:
        await conn.execute(EFFECT_TABLES)

    await database.run_driver(create)


def make_handler(action: str) -> Any:
    async def handler(step: StepContext) -> Mapping[str, Any]:
        payload = step.payload
        if payload.get("sleep", {}).get(action):
            await asyncio.sleep(payload["sleep"][action])
        if step.attempt <= payload.get("error", {}).get(action, 0):
            raise RuntimeError(f"{action} broke on attempt {step.attempt}")
        if payload.get("refuse") == action:
            # Written, then refused: the refusal must roll this back.
            await _effect(step, action)
            raise StepRefused(f"{action} refused by the test")
        await _effect(step, action)
        return {f"{action}_id": str(uuid.uuid4()), "last": action}

    return handler


def make_compensation(action: str, compensation: str) -> Any:
    async def handler(step: StepContext) -> Mapping[str, Any]:
        if step.attempt <= step.payload.get("error", {}).get(compensation, 0):
            raise RuntimeError(f"{compensation} broke on attempt {step.attempt}")
        deleted = await step.connection.execute(
            "DELETE FROM public.test_effect WHERE saga_id = $1 AND action = $2",
            step.saga_id,
            action,
        )
        await step.connection.execute(
            "INSERT INTO public.test_effect_log (saga_id, action, kind) VALUES ($1, $2, 'undo')",
            step.saga_id,
            action,
        )
        return {"deleted": deleted}

    return handler


async def _effect(step: StepContext, action: str) -> None:
    await step.connection.execute(
        "INSERT INTO public.test_effect (saga_id, action) VALUES ($1, $2)", step.saga_id, action
    )
    await step.connection.execute(
        "INSERT INTO public.test_effect_log (saga_id, action, kind) VALUES ($1, $2, 'do')",
        step.saga_id,
        action,
    )


def participant_for(
    journey: str, settings: Settings, database: Database, bootstrap: str
) -> Participant:
    participant = Participant(
        journey,
        schema=SCHEMAS[journey],
        settings=settings,
        database=database,
        bootstrap_servers=bootstrap,
        retry=FAST_RETRY,
        relay=FAST_RELAY,
    )
    for action, compensation in ACTIONS[journey].items():
        participant.register(action, make_handler(action))
        if compensation is not None:
            participant.register(compensation, make_compensation(action, compensation))
    return participant


@dataclass
class Cluster:
    """Participants and coordinators running as tasks of the test's event loop."""

    settings: Settings
    database: Database
    bootstrap: str
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    stoppers: dict[str, Any] = field(default_factory=dict)
    participants: dict[str, Participant] = field(default_factory=dict)
    coordinators: list[Coordinator] = field(default_factory=list)

    def start_participant(self, journey: str) -> Participant:
        participant = participant_for(journey, self.settings, self.database, self.bootstrap)
        self._launch(f"participant-{journey}", participant.run(), participant.stop)
        self.participants[journey] = participant
        return participant

    def start_coordinator(self, name: str = "coordinator") -> Coordinator:
        coordinator = Coordinator(
            settings=self.settings,
            database=self.database,
            bootstrap_servers=self.bootstrap,
            name=name,
            relay=FAST_RELAY,
        )
        self._launch(name, coordinator.run(), coordinator.stop)
        self.coordinators.append(coordinator)
        return coordinator

    async def stop(self, name: str) -> None:
        await self.stoppers.pop(name)()
        task = self.tasks.pop(name)
        await asyncio.wait_for(task, 15)

    async def stop_all(self) -> None:
        for name in list(self.tasks):
            with contextlib.suppress(Exception):
                await self.stop(name)

    def _launch(self, name: str, work: Any, stop: Any) -> None:
        self.tasks[name] = asyncio.get_running_loop().create_task(work, name=name)
        self.stoppers[name] = stop


@contextlib.asynccontextmanager
async def cluster(
    settings: Settings,
    database: Database,
    bootstrap: str,
    *,
    journeys: tuple[str, ...] = ("care", "plan", "gamification"),
    coordinators: int = 1,
) -> AsyncIterator[Cluster]:
    running = Cluster(settings, database, bootstrap)
    try:
        for journey in journeys:
            running.start_participant(journey)
        for n in range(coordinators):
            running.start_coordinator(f"coordinator-{n}")
        yield running
    finally:
        await running.stop_all()


@contextlib.asynccontextmanager
async def starter(env: SagaEnvironment) -> AsyncIterator[Coordinator]:
    """A coordinator of the test's own that starts sagas and waits for their end."""
    async with Coordinator(
        settings=env.settings,
        database=env.database,
        bootstrap_servers=env.bootstrap,
        relay=FAST_RELAY,
    ) as coordinator:
        yield coordinator


async def wait_until(database: Database, saga_id: uuid.UUID, condition: str) -> None:
    """Poll until ``condition`` (SQL over shared.saga_instance ``i``) holds for the saga."""
    for _ in range(400):
        found = await database.run_driver(
            lambda conn: conn.fetchval(
                f"SELECT {condition} FROM shared.saga_instance i WHERE id = $1", saga_id
            )
        )
        if found:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"saga {saga_id} never reached {condition}")


async def effects(database: Database, saga_id: uuid.UUID) -> list[str]:
    rows = await database.run_driver(
        lambda conn: conn.fetch(
            "SELECT action FROM public.test_effect WHERE saga_id = $1 ORDER BY action", saga_id
        )
    )
    return [row["action"] for row in rows]


async def executions(database: Database, saga_id: uuid.UUID) -> list[tuple[str, str]]:
    rows = await database.run_driver(
        lambda conn: conn.fetch(
            "SELECT action, kind FROM public.test_effect_log WHERE saga_id = $1 ORDER BY at",
            saga_id,
        )
    )
    return [(row["action"], row["kind"]) for row in rows]


async def step_log(database: Database, saga_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await database.run_driver(
        lambda conn: conn.fetch(
            """
            SELECT step_index, step_name, action, status, attempt, error
            FROM shared.saga_step_log WHERE saga_instance_id = $1
            ORDER BY created_at, started_at
            """,
            saga_id,
        )
    )
    return [dict(row) for row in rows]
