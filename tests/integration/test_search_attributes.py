"""Search attributes in the store: declared with a definition (and re-declared on a
stored version), filled per saga by the insert trigger with scalars only, and refused for
a field masked as personal or health data."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from saga.definition import SagaDefinition, Step
from saga.errors import DefinitionError
from saga.store import Database
from saga.store import definitions as stored
from saga.store.driver import DriverConnection

pytestmark = pytest.mark.integration

STEP = Step(name="note", journey="care", action="note", compensation="forget")


# The migrated database is shared by the run: each test names its definition apart.
NAME = f"test_searchable_{uuid.uuid4().hex[:8]}"


def definition(*attributes: str, name: str = NAME) -> SagaDefinition:
    return SagaDefinition(name, 1, [STEP], search_attributes=attributes)


async def start(database: Database, definition_id: uuid.UUID, payload: dict[str, Any]) -> Any:
    async def insert(conn: DriverConnection) -> Any:
        return await conn.fetchval(
            "INSERT INTO shared.saga_instance (id, saga_definition_id, definition_name, "
            "definition_version, status, current_step, step_attempt, payload, context) "
            "VALUES (gen_random_uuid(), $1, $3, 1, 'running', 0, 1, "
            "$2::jsonb, '{}') RETURNING search_attributes",
            definition_id,
            json.dumps(payload),
            NAME,
        )

    return await database.run_driver(insert)


async def test_the_trigger_keeps_declared_scalars_and_a_redeclaration_applies_from_then_on(
    database: Database,
) -> None:
    plain = await database.run_driver(lambda conn: stored.register(conn, definition()))
    assert await start(database, plain.id, {"user_id": "u-1"}) is None

    # The same version declared searchable: the same content hash, a new declaration.
    again = await database.run_driver(
        lambda conn: stored.register(conn, definition("user_id", "slot_id", "plan"))
    )
    assert again.id == plain.id
    found = await start(
        database, plain.id, {"user_id": "u-1", "slot_id": 42, "plan": {"tier": "gold"}}
    )
    # Numbers are kept as text; an object is not something one searches for.
    assert found == {"user_id": "u-1", "slot_id": "42"}
    loaded = await database.run_driver(lambda conn: stored.load(conn, NAME, 1))
    assert loaded.definition.search_attributes == ("user_id", "slot_id", "plan")


async def test_a_masked_field_is_refused_as_a_search_attribute(database: Database) -> None:
    refused = definition("user_id", "cpf", name=f"{NAME}_cpf")
    with pytest.raises(DefinitionError, match="'cpf' is masked as personal or health data"):
        await database.run_driver(lambda conn: stored.register(conn, refused))
    assert not await database.run_driver(
        lambda conn: conn.fetchval(
            "SELECT count(*) FROM shared.saga_definition WHERE name = $1", refused.name
        )
    )
