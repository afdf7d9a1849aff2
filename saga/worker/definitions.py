"""Stored saga definitions, loaded once per worker process: an instance is always driven
by the version it started with, whichever process registered it."""

from __future__ import annotations

from saga.definition import SagaDefinition
from saga.errors import UnknownDefinition
from saga.store import definitions as stored_definitions
from saga.store.database import Database


class DefinitionCache:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._loaded: dict[tuple[str, int], SagaDefinition] = {}

    async def get(self, name: str, version: int) -> SagaDefinition | None:
        """The stored definition, or None when it is not stored (an instance then cannot
        be driven and is parked)."""
        key = (name, version)
        if key not in self._loaded:
            try:
                stored = await self._database.run_driver(
                    lambda conn: stored_definitions.load(conn, name, version),
                    transaction=False,
                    name="worker.load_definition",
                )
            except UnknownDefinition:
                return None
            self._loaded[key] = stored.definition
        return self._loaded[key]
