"""Saga definitions in ``shared.saga_definition``: stored once per name and version.

A definition is immutable once stored: registering the same name and version with other
content is refused, so every instance is driven by exactly the steps it started with.
"""

from __future__ import annotations

import json

from saga.definition import SagaDefinition
from saga.errors import DefinitionConflict, DefinitionError, UnknownDefinition
from saga.masking import is_sensitive
from saga.store.driver import DriverConnection, document
from saga.store.records import StoredDefinition

__all__ = ["StoredDefinition", "load", "register"]


async def register(conn: DriverConnection, definition: SagaDefinition) -> StoredDefinition:
    """Store ``definition`` unless this exact version is stored already."""
    _refuse_sensitive_search_attributes(definition)
    content_hash = definition.content_hash
    row = await conn.fetchrow(
        """
        WITH inserted AS (
            INSERT INTO shared.saga_definition
                (name, version, content_hash, steps, timeout_seconds, search_attributes)
            VALUES ($1, $2, $3, $4::jsonb, $5, $6::text[])
            ON CONFLICT (name, version) DO NOTHING
            RETURNING id, content_hash
        ),
        -- Search attributes are not part of the content: declaring them on a stored
        -- version applies to its sagas started from now on.
        declared AS (
            UPDATE shared.saga_definition SET search_attributes = $6::text[]
            WHERE name = $1 AND version = $2 AND content_hash = $3
              AND search_attributes IS DISTINCT FROM $6::text[]
              AND NOT EXISTS (SELECT FROM inserted)
        )
        SELECT id, content_hash FROM inserted
        UNION ALL
        SELECT id, content_hash FROM shared.saga_definition
        WHERE name = $1 AND version = $2 AND NOT EXISTS (SELECT FROM inserted)
        """,
        definition.name,
        definition.version,
        content_hash,
        json.dumps(definition.to_document()),
        definition.timeout,
        list(definition.search_attributes),
    )
    if row is None:
        # Another process inserted it between our INSERT's check and our SELECT's snapshot.
        return await register(conn, definition)
    if row["content_hash"] != content_hash:
        raise DefinitionConflict(
            f"saga definition {definition.name!r} version {definition.version} is already "
            "registered with different steps; register the change as a new version "
            "(running instances keep the version they started with)"
        )
    return StoredDefinition(row["id"], definition)


def _refuse_sensitive_search_attributes(definition: SagaDefinition) -> None:
    """A search attribute is stored in the clear, indexed and shown to operators, so it
    may not be a field this process masks (checked here, where the fields declared with
    the logging set-up are known, rather than in the pure definition checks)."""
    for field_name in definition.search_attributes:
        if is_sensitive(field_name):
            raise DefinitionError(
                definition.name,
                f"search attribute {field_name!r} is masked as personal or health data; "
                "search by an id (user_id, claim_id, ...) instead",
            )


async def load(conn: DriverConnection, name: str, version: int | None = None) -> StoredDefinition:
    """The stored definition of that version, or the newest one when ``version`` is None."""
    row = await conn.fetchrow(
        """
        SELECT id, name, version, steps, timeout_seconds, search_attributes
        FROM shared.saga_definition
        WHERE name = $1 AND ($2::integer IS NULL OR version = $2)
        ORDER BY version DESC LIMIT 1
        """,
        name,
        version,
    )
    if row is None:
        which = f"version {version}" if version is not None else "any version"
        raise UnknownDefinition(f"no saga definition {name!r} ({which}) is registered")
    definition = SagaDefinition.from_document(
        row["name"],
        row["version"],
        document(row["steps"]),
        timeout=row["timeout_seconds"],
        search_attributes=row["search_attributes"],
    )
    return StoredDefinition(row["id"], definition)
