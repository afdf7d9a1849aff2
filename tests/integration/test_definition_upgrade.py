"""A definition stored before documents could evolve registers again after the upgrade:
same hash, same row, no :class:`~saga.errors.DefinitionConflict`."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from journeys.care.sagas import BOOK_APPOINTMENT
from saga import (
    Connection,
    Coordinator,
    Database,
    DefinitionConflict,
    NoCompensation,
    SagaDefinition,
    Settings,
    Step,
)
from saga.store import migrate
from tests.conftest import create_database, drop_database

pytestmark = pytest.mark.integration

# shared.saga_definition.steps of book_appointment v1 exactly as the engine wrote it at
# commit 7ba1e2f (json.dumps of the document; every field present, defaults included).
STORED_STEPS = (
    '[{"name": "reserve_slot", "journey": "care", "action": "reserve_slot", "compensation": '
    '"release_slot", "no_compensation": null, "isolation": "READ COMMITTED", "timeout": 5.0, '
    '"retry": {"max_attempts": 3, "initial_delay": 0.05, "multiplier": 2.0, "max_delay": 2.0,'
    ' "jitter": 1.0}, "compensation_retry": {"max_attempts": 10, "initial_delay": 0.05, '
    '"multiplier": 2.0, "max_delay": 5.0, "jitter": 1.0}}, {"name": "authorize_coverage", '
    '"journey": "plan", "action": "authorize_coverage", "compensation": "void_authorization",'
    ' "no_compensation": null, "isolation": "SERIALIZABLE", "timeout": 5.0, "retry": '
    '{"max_attempts": 3, "initial_delay": 0.05, "multiplier": 2.0, "max_delay": 2.0, '
    '"jitter": 1.0}, "compensation_retry": {"max_attempts": 10, "initial_delay": 0.05, '
    '"multiplier": 2.0, "max_delay": 5.0, "jitter": 1.0}}, {"name": "award_points", '
    '"journey": "gamification", "action": "award_points", "compensation": "revoke_points", '
    '"no_compensation": null, "isolation": "READ COMMITTED", "timeout": 5.0, "retry": '
    '{"max_attempts": 3, "initial_delay": 0.05, "multiplier": 2.0, "max_delay": 2.0, '
    '"jitter": 1.0}, "compensation_retry": {"max_attempts": 10, "initial_delay": 0.05, '
    '"multiplier": 2.0, "max_delay": 5.0, "jitter": 1.0}}, {"name": "confirm_appointment", '
    '"journey": "care", "action": "confirm_appointment", "compensation": null, '
    '"no_compensation": "last", "isolation": "READ COMMITTED", "timeout": 5.0, "retry": '
    '{"max_attempts": 3, "initial_delay": 0.05, "multiplier": 2.0, "max_delay": 2.0, '
    '"jitter": 1.0}, "compensation_retry": {"max_attempts": 10, "initial_delay": 0.05, '
    '"multiplier": 2.0, "max_delay": 5.0, "jitter": 1.0}}]'
)
STORED_HASH = "a323ec6e0a5abda4a80891cb995372af4e75fc91198bd5ee557f22775545488b"
NO_BROKER = "127.0.0.1:1"  # register needs only the database


@pytest.fixture
def upgraded_database_url(admin_database_url: str) -> Iterator[str]:
    url = create_database(admin_database_url, prefix="austa_test_upgrade")
    try:
        migrate.upgrade(url)
        yield url
    finally:
        drop_database(admin_database_url, url)


@pytest.fixture
async def stored_before(settings: Settings, upgraded_database_url: str) -> AsyncIterator[Database]:
    """A database holding book_appointment v1 as the engine stored it before the change."""
    database = Database.from_settings(settings, url=upgraded_database_url, application_name="tests")

    async def store(conn: Connection) -> None:
        await conn.execute(
            "INSERT INTO shared.saga_definition (name, version, content_hash, steps)"
            " VALUES ($1, 1, $2, $3::jsonb)",
            "book_appointment",
            STORED_HASH,
            STORED_STEPS,
        )

    await database.run_driver(store)
    try:
        yield database
    finally:
        await database.dispose()


async def stored_rows(database: Database) -> list[tuple[uuid.UUID, str]]:
    async def read(conn: Connection) -> list[tuple[uuid.UUID, str]]:
        rows = await conn.fetch(
            "SELECT id, content_hash FROM shared.saga_definition WHERE name = 'book_appointment'"
        )
        return [(row["id"], row["content_hash"]) for row in rows]

    return await database.run_driver(read)


async def test_the_stored_definition_registers_again_unchanged(
    settings: Settings, stored_before: Database
) -> None:
    [(stored_id, _)] = await stored_rows(stored_before)
    coordinator = Coordinator(
        settings=settings, database=stored_before, bootstrap_servers=NO_BROKER
    )
    await coordinator.register(BOOK_APPOINTMENT)
    assert await stored_rows(stored_before) == [(stored_id, STORED_HASH)]
    loaded = await coordinator.definition("book_appointment", 1)
    assert loaded == BOOK_APPOINTMENT
    assert json.loads(STORED_STEPS) == BOOK_APPOINTMENT.to_document()


async def test_a_changed_definition_under_the_stored_version_is_still_refused(
    settings: Settings, stored_before: Database
) -> None:
    changed = SagaDefinition(
        "book_appointment",
        1,
        [Step(name="only", journey="care", action="only", no_compensation=NoCompensation.LAST)],
    )
    coordinator = Coordinator(
        settings=settings, database=stored_before, bootstrap_servers=NO_BROKER
    )
    with pytest.raises(DefinitionConflict, match="'book_appointment' version 1"):
        await coordinator.register(changed)
