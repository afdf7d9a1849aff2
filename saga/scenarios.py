"""Scenarios: scripted runs of real sagas through the whole system, for the demo and the
examples. Packages publish them under the ``saga.scenarios`` entry point group (the
journeys publish one per cross-journey saga), so the engine runs them without importing
the packages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points

from saga.embedded.endpoints import Endpoints, endpoints
from saga.errors import ConfigurationError, SchemaNotMigrated
from saga.logging import configure_logging
from saga.participant.journey import discover_journeys
from saga.settings import Settings, load_settings
from saga.stack import RunningServices, running_services
from saga.store import Database
from saga.store.seeding import seed_reference

ENTRY_POINT_GROUP = "saga.scenarios"

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    title: str
    run: Callable[[RunningServices, Say], Awaitable[None]]


def discover_scenarios() -> list[Scenario]:
    found: list[Scenario] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        loaded = ep.load()
        if not isinstance(loaded, Sequence) or not all(isinstance(s, Scenario) for s in loaded):
            raise ConfigurationError(
                f"entry point {ep.name!r} in {ENTRY_POINT_GROUP} must be a sequence of Scenario"
            )
        found.extend(loaded)
    return found


async def run_scenarios(
    settings: Settings, where: Endpoints, scenarios: Sequence[Scenario], say: Say
) -> None:
    """Run each scenario in turn with a coordinator and every installed journey service
    running in this process."""
    async with running_services(
        settings,
        database_url=where.database_url,
        bootstrap_servers=where.bootstrap_servers,
        journeys=list(discover_journeys().values()),
    ) as services:
        for scenario in scenarios:
            say(f"--- {scenario.title} ---")
            await scenario.run(services, say)


async def _seed_reference(settings: Settings, database_url: str) -> None:
    database = Database.from_settings(settings, url=database_url, application_name="saga-seed")
    try:
        await seed_reference(database)
    finally:
        await database.dispose()


def run_standalone(scenarios: Sequence[Scenario], *, database: str = "austa_example") -> int:
    """An example's ``main``: run ``scenarios`` against the configured stack, or against
    an embedded one (migrated for the occasion) when nothing is configured."""
    # Alembic costs a quarter of a second to import: only what runs migrations pays it,
    # not every `import saga`.
    from saga.store import migrate

    settings = load_settings()
    configure_logging(settings)
    with endpoints(settings, say=_say, database=database) as where:
        if settings.database_url is None:
            migrate.upgrade(where.database_url)
        elif asyncio.run(_revision(settings, where.database_url)) is None:
            raise SchemaNotMigrated("the database has no schema yet: run `saga db upgrade` first")
        asyncio.run(_seed_reference(settings, where.database_url))
        asyncio.run(run_scenarios(settings, where, scenarios, _say))
    return 0


async def _revision(settings: Settings, url: str) -> str | None:
    from saga.store import migrate

    database = Database.from_settings(settings, url=url, application_name="saga-example")
    try:
        async with database.engine.connect() as conn:
            return await migrate.current_revision(conn)
    finally:
        await database.dispose()


def _say(line: str) -> None:
    print(line, flush=True)
