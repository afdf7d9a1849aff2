"""Seed data: reference data always, sample data in development.

The engine does not know the journeys; they publish their seeders under the entry-point
group ``saga.seeders`` (a sequence of :class:`Seeder`). Every seeder must be idempotent:
a second run inserts nothing and changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from saga.errors import ConfigurationError, SchemaNotMigrated

if TYPE_CHECKING:
    from saga.store.database import Database

ENTRY_POINT_GROUP = "saga.seeders"


class Seeder(Protocol):
    """One named body of seed data. Returns rows inserted per table."""

    @property
    def name(self) -> str:
        """Shown in ``saga db seed``'s report, e.g. ``care.reference``."""

    @property
    def samples_only(self) -> bool:
        """True for sample data, which only development (or ``--samples``) loads."""

    def __call__(self, conn: AsyncConnection) -> Awaitable[dict[str, int]]: ...


@dataclass(frozen=True, slots=True)
class FunctionSeeder:
    """A :class:`Seeder` made from a coroutine function."""

    name: str
    run: Callable[[AsyncConnection], Awaitable[dict[str, int]]]
    samples_only: bool = False

    def __call__(self, conn: AsyncConnection) -> Awaitable[dict[str, int]]:
        return self.run(conn)


@dataclass
class SeedReport:
    inserted: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(sum(tables.values()) for tables in self.inserted.values())


def discover_seeders() -> list[Seeder]:
    """Every seeder published under ``saga.seeders``, in the order each package lists them."""
    seeders: list[Seeder] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        loaded = ep.load()
        if not isinstance(loaded, Sequence):
            raise ConfigurationError(
                f"entry point {ep.name!r} in {ENTRY_POINT_GROUP} must be a sequence of seeders"
            )
        seeders.extend(loaded)
    return seeders


async def ensure_migrated(conn: AsyncConnection) -> None:
    # Imported here: Alembic costs a quarter of a second, and `import saga` brings this
    # module (its Seeder types are public) to every process.
    from saga.store.migrate import current_revision, head_revision

    version = await current_revision(conn)
    if version is None:
        raise SchemaNotMigrated(
            "the database has no schema yet: run `saga db upgrade` before seeding"
        )
    head = head_revision()
    if version != head:
        raise SchemaNotMigrated(
            f"the database is at revision {version}, not {head}: run `saga db upgrade` first"
        )


async def run_seeders(
    conn: AsyncConnection, seeders: Sequence[Seeder], *, include_samples: bool
) -> SeedReport:
    """Run each seeder in order inside the caller's transaction."""
    await ensure_migrated(conn)
    report = SeedReport()
    for seeder in seeders:
        if seeder.samples_only and not include_samples:
            continue
        report.inserted[seeder.name] = await seeder(conn)
    return report


async def seed_reference(database: Database) -> None:
    """Every installed package's reference data (no samples): what the sagas look up."""
    seeders = discover_seeders()
    await database.run(
        lambda conn: run_seeders(conn, seeders, include_samples=False), name="seed_reference"
    )
