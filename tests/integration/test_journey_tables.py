"""``saga.journey_tables_sql`` against the migrations: the tables it makes are, catalog
row by catalog row, the migrated ``care_journey.care_inbox`` and ``care_outbox``.

A migration that changes the journeys' inboxes or outboxes fails these tests until
``saga/store/journey_tables.py`` gives the same shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from saga import Connection, Database, InsufficientPrivilege, journey_tables_sql
from saga.settings import Settings
from saga.store.journey_tables import RESERVED_WORDS

pytestmark = pytest.mark.integration


@pytest.fixture
async def migrated(settings: Settings, kit_database: str) -> AsyncIterator[Database]:
    """A migrated database of this test's own (the tests create schemas in it)."""
    database = Database.from_settings(settings, url=kit_database, application_name="tests")
    try:
        yield database
    finally:
        await database.dispose()


@dataclass(frozen=True)
class TableShape:
    """What the catalog says of one table, with its schema and name prefix replaced by
    placeholders so that two journeys' tables compare equal when they are alike."""

    columns: list[tuple[str, str, bool, str | None]]
    constraints: list[tuple[str, str, str]]
    indexes: list[tuple[str, str]]
    triggers: list[tuple[str, str]]


_COLUMNS = """
    SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
           pg_get_expr(d.adbin, d.adrelid)
    FROM pg_attribute a LEFT JOIN pg_attrdef d ON (d.adrelid, d.adnum) = (a.attrelid, a.attnum)
    WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY a.attnum
"""
_CONSTRAINTS = """
    SELECT conname, contype::text, pg_get_constraintdef(oid) FROM pg_constraint
    WHERE conrelid = $1::regclass ORDER BY conname
"""
_INDEXES = """
    SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i
    JOIN pg_class c ON c.oid = i.indexrelid
    WHERE i.indrelid = $1::regclass ORDER BY c.relname
"""
_TRIGGERS = """
    SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger
    WHERE tgrelid = $1::regclass AND NOT tgisinternal ORDER BY tgname
"""


async def table_shape(conn: Connection, schema: str, prefix: str, table: str) -> TableShape:
    """``table`` is ``inbox`` or ``outbox``."""
    qualified = f"{schema}.{prefix}_{table}"

    def normalised(text: str) -> str:
        return text.replace(f"{schema}.", "<schema>.").replace(f"{prefix}_{table}", f"<{table}>")

    columns = await conn.fetch(_COLUMNS, qualified)
    constraints = await conn.fetch(_CONSTRAINTS, qualified)
    indexes = await conn.fetch(_INDEXES, qualified)
    triggers = await conn.fetch(_TRIGGERS, qualified)
    return TableShape(
        columns=[(row[0], row[1], row[2], row[3]) for row in columns],
        constraints=[(normalised(row[0]), row[1], normalised(row[2])) for row in constraints],
        indexes=[(normalised(row[0]), normalised(row[1])) for row in indexes],
        triggers=[(normalised(row[0]), normalised(row[1])) for row in triggers],
    )


async def create_journey_tables(database: Database, schema: str, journey: str) -> None:
    async def create(conn: Connection) -> None:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        for statement in journey_tables_sql(schema, journey):
            await conn.execute(statement)

    await database.run_driver(create)


@pytest.mark.parametrize("journey", ["care", "shop"])
@pytest.mark.parametrize("table", ["inbox", "outbox"])
async def test_the_tables_have_the_migrated_journeys_shape(
    migrated: Database, journey: str, table: str
) -> None:
    await create_journey_tables(migrated, "new_journey", journey)

    async def shapes(conn: Connection) -> tuple[TableShape, TableShape]:
        made = await table_shape(conn, "new_journey", journey, table)
        return made, await table_shape(conn, "care_journey", "care", table)

    made, migrated_shape = await migrated.run_driver(shapes)
    assert made.columns == migrated_shape.columns
    assert made.constraints == migrated_shape.constraints
    assert made.indexes == migrated_shape.indexes
    assert made.triggers == migrated_shape.triggers
    # Not vacuous: the catalog was read (a wrong name would have raised, an empty
    # table description would compare equal).
    assert len(made.columns) >= 11
    assert len(made.indexes) == 4
    assert made.triggers


async def test_running_the_statements_again_changes_nothing(migrated: Database) -> None:
    await create_journey_tables(migrated, "twice", "shop")

    async def shapes(conn: Connection) -> list[TableShape]:
        return [await table_shape(conn, "twice", "shop", table) for table in ("inbox", "outbox")]

    before = await migrated.run_driver(shapes)
    await create_journey_tables(migrated, "twice", "shop")
    assert await migrated.run_driver(shapes) == before


async def test_the_trigger_keeps_updated_at_current(migrated: Database) -> None:
    await create_journey_tables(migrated, "touched", "shop")

    async def touch(conn: Connection) -> bool:
        await conn.execute(
            "INSERT INTO touched.shop_outbox (message_id, topic, message_key, payload, "
            "updated_at) VALUES (gen_random_uuid(), 't', 'k', '{}', now() - interval '1 day')"
        )
        await conn.execute("UPDATE touched.shop_outbox SET publish_attempts = 1")
        return bool(
            await conn.fetchval(
                "SELECT updated_at > now() - interval '1 hour' FROM touched.shop_outbox"
            )
        )

    assert await migrated.run_driver(touch)


async def test_grant_to_lets_the_journeys_role_use_both_tables(migrated: Database) -> None:
    role = "austa_care_journey"  # a login role the migrations create

    async def create(conn: Connection) -> None:
        await conn.execute("CREATE SCHEMA granted")
        for statement in journey_tables_sql("granted", "shop", grant_to=role):
            await conn.execute(statement)
        await conn.execute(f"GRANT USAGE ON SCHEMA granted TO {role}")

    await migrated.run_driver(create)

    async def as_role(conn: Connection) -> list[bool]:
        await conn.execute(f"SET LOCAL ROLE {role}")
        await conn.execute(
            "INSERT INTO granted.shop_inbox (message_id, saga_id, step_name, action, attempt, "
            "reply) VALUES (gen_random_uuid(), gen_random_uuid(), 's', 'a', 1, '{}')"
        )
        return [
            await conn.fetchval(f"SELECT has_table_privilege('granted.shop_{table}', $1)", kind)
            for table in ("inbox", "outbox")
            for kind in ("SELECT", "INSERT", "UPDATE", "DELETE")
        ]

    assert await migrated.run_driver(as_role) == [True] * 8


async def test_without_grant_to_the_journeys_role_is_refused(migrated: Database) -> None:
    role = "austa_care_journey"
    await create_journey_tables(migrated, "ungranted", "shop")

    async def as_role(conn: Connection) -> None:
        await conn.execute(f"GRANT USAGE ON SCHEMA ungranted TO {role}")
        await conn.execute(f"SET LOCAL ROLE {role}")
        await conn.fetchval("SELECT count(*) FROM ungranted.shop_inbox")

    with pytest.raises(InsufficientPrivilege):
        await migrated.run_driver(as_role)


async def test_every_word_the_server_reserves_is_refused(migrated: Database) -> None:
    async def keywords(conn: Connection) -> set[str]:
        rows = await conn.fetch("SELECT word FROM pg_get_keywords() WHERE catcode IN ('R', 'T')")
        return {row[0] for row in rows}

    assert await migrated.run_driver(keywords) <= RESERVED_WORDS
