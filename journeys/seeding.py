"""What every journey's seeds are built from: deterministic ids and random streams, the
fixed day the sample world is anchored to, and the idempotent bulk insert."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Sequence
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import TableClause

# Every seeded id derives from this; changing it would make the next run insert everything
# a second time under new ids.
NAMESPACE = uuid.UUID("64faf7f9-db9f-4aba-83ff-893ebeb8f781")

# The "today" of the sample world (a Monday). Sample data is dated from it, never from
# now(), so that a later run generates the very same rows and therefore inserts none.
SAMPLE_ANCHOR = date(2026, 11, 30)

# Brazil has kept UTC-3 all year since 2019. A fixed offset keeps the samples independent
# of the installed tz database, where a new DST rule would move every generated timestamp.
BRT = timezone(timedelta(hours=-3), "BRT")

Row = dict[str, Any]
Counts = dict[str, int]


def seed_id(kind: str, key: str) -> uuid.UUID:
    """The id a seeded row always gets, e.g. ``seed_id("care_specialty", "cardiologia")``."""
    return uuid.uuid5(NAMESPACE, f"{kind}:{key}")


def rng(purpose: str) -> random.Random:
    """A generator per purpose: more data for one purpose shifts no other purpose's rows.

    A str seed is hashed with SHA-512, so it does not depend on PYTHONHASHSEED.
    """
    return random.Random(f"austa-seeds:{purpose}")


def brt(day: date, hour: int, minute: int = 0) -> datetime:
    """``day`` at ``hour:minute``, Brasília time."""
    return datetime.combine(day, time(hour, minute), tzinfo=BRT)


async def insert_rows(
    conn: AsyncConnection,
    target: TableClause,
    rows: Sequence[Row],
    *,
    conflict: Sequence[str] = ("id",),
) -> int:
    """Insert the rows not there yet and return how many were new.

    One multi-row INSERT (SQLAlchemy's insertmanyvalues splits it only past the driver's
    bind-parameter limit). A row whose ``conflict`` key exists is left exactly as it is:
    ``DO NOTHING`` fires no UPDATE trigger, so ``updated_at`` stays put too.
    """
    if not rows:
        return 0
    statement = (
        insert(target).on_conflict_do_nothing(index_elements=list(conflict)).returning(target.c.id)
    )
    result = await conn.execute(statement, list(rows))
    return len(result.all())


async def ids_by(
    conn: AsyncConnection, target: TableClause, key: str, values: Iterable[str]
) -> dict[str, uuid.UUID]:
    """Ids of existing rows by natural key: reference rows may predate the seeds (made by
    hand under other ids), and the rows that refer to them must use the ids they have."""
    wanted = sorted(set(values))
    result = await conn.execute(select(target.c[key], target.c.id).where(target.c[key].in_(wanted)))
    found: dict[str, uuid.UUID] = {row[0]: row[1] for row in result}
    missing = [value for value in wanted if value not in found]
    if missing:
        raise LookupError(f"{target.fullname} has no {key} {missing}; seed its reference data")
    return found
