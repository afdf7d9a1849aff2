"""A coordinator and journey participants running as tasks of one event loop.

The demo, the examples and the tests run the whole system in one process this way; in
production each is its own process (``saga run coordinator``, ``saga run participant``),
and the two are interchangeable: they meet only through PostgreSQL and the broker. Each
participant logs in as its journey's own database role.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from saga.coordinator import Coordinator
from saga.participant import Participant
from saga.participant.journey import JourneyService
from saga.patience import UntilTheBrokerIsBack
from saga.settings import Settings
from saga.store import Database


@dataclass
class RunningServices:
    coordinator: Coordinator
    database: Database
    # The broker every service here talks to: what a service added alongside them uses.
    bootstrap_servers: str
    # The database the coordinator's saga log is on (the owner's URL; each participant
    # logs in as its journey's role on the same database).
    database_url: str
    participants: dict[str, Participant] = field(default_factory=dict)
    # Each journey's own database (its role's pool), with its retry counters.
    journey_databases: dict[str, Database] = field(default_factory=dict)
    _tasks: list[tuple[str, asyncio.Task[None], Callable[[], Awaitable[None]]]] = field(
        default_factory=list
    )
    _databases: list[Database] = field(default_factory=list)
    _stopped: bool = False

    def _launch(
        self,
        name: str,
        work: Callable[[], Awaitable[None]],
        stop: Callable[[], Awaitable[None]],
        *,
        patient: bool,
    ) -> None:
        if patient:
            waiting = UntilTheBrokerIsBack(name, work, stop)
            work, stop = waiting.run, waiting.stop
        task = asyncio.get_running_loop().create_task(_run(work()), name=name)
        self._tasks.append((name, task, stop))

    async def wait_ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Wait until every service's consumer has been given its partitions, so that the
        first saga does not wait for the consumer groups to form."""
        runtimes = [self.coordinator.runtime] + [p.runtime for p in self.participants.values()]
        async with asyncio.timeout(timeout):
            for runtime in runtimes:
                while runtime.consumer is None:
                    if self.failed():
                        name, error = self.failed()[0]
                        raise RuntimeError(f"{name} failed while starting") from error
                    await asyncio.sleep(0.01)
                await runtime.consumer.ready.wait()

    def process_environment(self) -> dict[str, str]:
        """The environment that points a process started beside these services (``saga
        signal``, ``saga show``, ``saga run participant``) at their database, broker and
        topics: this process's environment with the coordinator's settings over it."""
        settings = self.coordinator.settings
        environment = {
            name: value
            for name, value in os.environ.items()
            # A setting left unset here must not come back from this process's variables.
            if name.lower() not in type(settings).model_fields
        }
        environment.update(settings.environment())
        environment["DATABASE_URL"] = self.database_url
        environment["KAFKA_BOOTSTRAP_SERVERS"] = self.bootstrap_servers
        return environment

    def failed(self) -> list[tuple[str, BaseException]]:
        """Services whose task ended with an error (they should run until stopped)."""
        found = []
        for name, task, _ in self._tasks:
            if task.done() and not task.cancelled():
                error = task.exception()
                if error is not None:
                    found.append((name, error))
        return found

    def ready(self) -> bool:
        """Every service's consumer has been given its partitions."""
        runtimes = [self.coordinator.runtime] + [p.runtime for p in self.participants.values()]
        return all(r.consumer is not None and r.consumer.ready.is_set() for r in runtimes)

    async def stop(self) -> None:
        """Stop every service (once), then raise the first one's failure, if any failed.

        Participants stop first, so that replies already on their way still find the
        coordinator; anything unfinished is redelivered to the next run.
        """
        if self._stopped:
            return
        self._stopped = True
        failures: list[BaseException] = []
        for _name, task, stop in reversed(self._tasks):
            try:
                await stop()
                await asyncio.wait_for(task, 15)
            except Exception as exc:
                failures.append(exc)
        for database in self._databases:
            await database.dispose()
        if failures:
            raise failures[0]


@contextlib.asynccontextmanager
async def running_services(
    settings: Settings,
    *,
    database_url: str,
    bootstrap_servers: str,
    journeys: Sequence[JourneyService],
    coordinator_options: dict[str, Any] | None = None,
    participant_options: dict[str, Any] | None = None,
    patient: bool = False,
) -> AsyncIterator[RunningServices]:
    """Start a coordinator on ``database_url`` and one participant per journey, register
    the sagas the journeys start, and stop everything on exit. ``patient`` services wait
    out a broker they cannot reach (:mod:`saga.patience`) instead of failing."""
    database = Database.from_settings(settings, url=database_url, application_name="saga-stack")
    coordinator = Coordinator(
        settings=settings,
        database=database,
        bootstrap_servers=bootstrap_servers,
        **(coordinator_options or {}),
    )
    services = RunningServices(
        coordinator=coordinator,
        database=database,
        bootstrap_servers=bootstrap_servers,
        database_url=database_url,
    )
    services._databases.append(database)
    try:
        for journey in journeys:
            for definition in journey.definitions:
                await coordinator.register(definition)
        services._launch("coordinator", coordinator.run, coordinator.stop, patient=patient)
        for journey in journeys:
            role_database = Database.from_settings(
                settings,
                url=journey.database_url(database_url),
                application_name=f"saga-participant-{journey.name}",
            )
            services._databases.append(role_database)
            services.journey_databases[journey.name] = role_database
            participant = journey.participant(
                settings=settings,
                database=role_database,
                bootstrap_servers=bootstrap_servers,
                **(participant_options or {}),
            )
            services.participants[journey.name] = participant
            services._launch(
                f"participant-{journey.name}", participant.run, participant.stop, patient=patient
            )
        await services.wait_ready()
        yield services
    finally:
        await services.stop()


async def _run(work: Awaitable[None]) -> None:
    await work
