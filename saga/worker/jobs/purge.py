"""Purging soft-deleted rows once RETENTION_SOFT_DELETED_DAYS have passed.

The tables are found in the catalog, not listed here, so a journey's new table is purged
without a change to the engine: every table (or partitioned parent) with a ``deleted_at``
column in a journey's schema or in ``shared``'s reference data. Left alone are the saga
log (``shared.saga_*``) and the journeys' inboxes and outboxes, which have retention jobs
of their own; append-only tables, whose trigger refuses DELETE; and monthly partitions
that partition maintenance detached (``<parent>_pYYYYMM`` beside a partitioned
``<parent>``), which are archives waiting for an operator, kept as they were detached.

A row some other row still references through a foreign key is kept, whatever the key's
ON DELETE says: a purge must never cascade into, or null out, live data. Referencing
tables are purged before the tables they reference, so a parent whose soft-deleted
children are purged goes in the same batch; one referenced by live rows stays until they
are gone.
"""

from __future__ import annotations

import graphlib
from collections.abc import Sequence
from dataclasses import dataclass

from saga.store.driver import DriverConnection, rows_affected
from saga.worker.job import BatchResult, Job, JobContext

# pg_trigger.tgtype bit of a DELETE trigger (src/include/catalog/pg_trigger.h).
_TRIGGER_DELETE = 8

_TABLES = """
SELECT c.oid,
       format('%I.%I', n.nspname, c.relname) AS qualified,
       ARRAY(
           SELECT quote_ident(a.attname)
           FROM unnest(i.indkey) WITH ORDINALITY AS k (attnum, position)
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
           ORDER BY k.position
       ) AS key_columns,
       ARRAY(
           SELECT format_type(a.atttypid, a.atttypmod)
           FROM unnest(i.indkey) WITH ORDINALITY AS k (attnum, position)
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
           ORDER BY k.position
       ) AS key_types
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
WHERE n.nspname = ANY($1::text[])
  AND c.relkind IN ('r', 'p')
  AND NOT c.relispartition
  AND NOT (n.nspname = 'shared' AND c.relname LIKE 'saga\\_%')
  AND NOT (format('%I.%I', n.nspname, c.relname) = ANY($2::text[]))
  AND NOT (
      c.relname ~ '_p[0-9]{6}$'
      AND EXISTS (
          SELECT FROM pg_class p
          WHERE p.relnamespace = c.relnamespace AND p.relkind = 'p'
            AND p.relname = regexp_replace(c.relname, '_p[0-9]{6}$', '')
      )
  )
  AND EXISTS (
      SELECT FROM pg_attribute a
      WHERE a.attrelid = c.oid AND a.attname = 'deleted_at' AND NOT a.attisdropped
        AND a.atttypid = 'timestamptz'::regtype
  )
  AND NOT EXISTS (
      SELECT FROM pg_trigger t
      WHERE t.tgrelid = c.oid
        AND t.tgfoid = to_regproc('shared.forbid_mutation')
        AND t.tgtype & $3 <> 0
        AND t.tgenabled <> 'D'
  )
ORDER BY n.nspname, c.relname
"""

# Top-level constraints only: PostgreSQL repeats a partitioned table's foreign key on each
# partition (conparentid <> 0), and the parent's check covers them all.
_REFERENCES = """
SELECT con.confrelid,
       con.conrelid,
       format('%I.%I', n.nspname, c.relname) AS referencing,
       ARRAY(
           SELECT quote_ident(a.attname)
           FROM unnest(con.conkey) WITH ORDINALITY AS k (attnum, position)
           JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
           ORDER BY k.position
       ) AS columns,
       ARRAY(
           SELECT quote_ident(a.attname)
           FROM unnest(con.confkey) WITH ORDINALITY AS k (attnum, position)
           JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
           ORDER BY k.position
       ) AS referenced_columns
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE con.contype = 'f' AND con.conparentid = 0 AND con.confrelid = ANY($1::oid[])
ORDER BY con.conname
"""


@dataclass(frozen=True, slots=True)
class _Table:
    oid: int
    qualified: str
    key_columns: Sequence[str]
    key_types: Sequence[str]
    unreferenced: str
    """A condition on alias ``t``: no row of any referencing table points at it."""


def _purge_order(tables: list[_Table], edges: list[tuple[int, int]]) -> list[_Table]:
    """Referencing tables first; with a cycle between tables, the catalog's order."""
    by_oid = {table.oid: table for table in tables}
    sorter: graphlib.TopologicalSorter[int] = graphlib.TopologicalSorter()
    for table in tables:
        sorter.add(table.oid)
    for referenced, referencing in edges:
        if referencing in by_oid and referencing != referenced:
            sorter.add(referenced, referencing)
    try:
        return [by_oid[oid] for oid in sorter.static_order()]
    except graphlib.CycleError:
        return tables


async def _tables(conn: DriverConnection, ctx: JobContext) -> list[_Table]:
    schemas = [*dict.fromkeys(journey.schema for journey in ctx.journeys), "shared"]
    own_retention = [
        table for journey in ctx.journeys for table in (journey.tables.inbox, journey.tables.outbox)
    ]
    rows = await conn.fetch(_TABLES, schemas, own_retention, _TRIGGER_DELETE)
    if not rows:
        return []
    references = await conn.fetch(_REFERENCES, [row["oid"] for row in rows])
    conditions: dict[int, list[str]] = {}
    for ref in references:
        match = " AND ".join(
            f"r.{column} = t.{referenced}"
            for column, referenced in zip(ref["columns"], ref["referenced_columns"], strict=True)
        )
        conditions.setdefault(ref["confrelid"], []).append(
            f"NOT EXISTS (SELECT FROM {ref['referencing']} AS r WHERE {match})"
        )
    tables = [
        _Table(
            oid=row["oid"],
            qualified=row["qualified"],
            key_columns=row["key_columns"],
            key_types=row["key_types"],
            unreferenced=" AND ".join(conditions.get(row["oid"], [])) or "true",
        )
        for row in rows
    ]
    return _purge_order(tables, [(r["confrelid"], r["conrelid"]) for r in references])


async def _purge(
    conn: DriverConnection, table: _Table, keep_seconds: float, limit: int
) -> tuple[int, int]:
    """Delete up to ``limit`` purgeable rows of ``table``: (rows taken, rows deleted)."""
    keys = ", ".join(f"t.{column}" for column in table.key_columns)
    locked = await conn.fetch(
        f"""
        SELECT {keys} FROM {table.qualified} AS t
        WHERE t.deleted_at < now() - make_interval(secs => $1) AND {table.unreferenced}
        ORDER BY t.deleted_at
        LIMIT $2
        FOR UPDATE OF t SKIP LOCKED
        """,
        keep_seconds,
        limit,
    )
    if not locked:
        return 0, 0
    # Checked again in a statement of its own: a referencing row committed after the
    # first statement's snapshot is visible now, and none can be added from here on
    # (its foreign key check would wait for the row lock this transaction holds).
    arrays = ", ".join(
        f"${n}::{type_name}[]" for n, type_name in enumerate(table.key_types, start=1)
    )
    status = await conn.execute(
        f"""
        DELETE FROM {table.qualified} AS t
        WHERE ({keys}) IN (SELECT * FROM unnest({arrays})) AND {table.unreferenced}
        """,
        *([row[n] for row in locked] for n in range(len(table.key_columns))),
    )
    return len(locked), rows_affected(status)


async def soft_deleted_purge(ctx: JobContext) -> BatchResult:
    keep_seconds = ctx.settings.retention_soft_deleted_days * 86400

    async def purge(conn: DriverConnection) -> tuple[int, int]:
        claimed = purged = 0
        for table in await _tables(conn, ctx):
            if claimed >= ctx.batch:
                break
            taken, deleted = await _purge(conn, table, keep_seconds, ctx.batch - claimed)
            claimed += taken
            purged += deleted
        return claimed, purged

    claimed, purged = await ctx.database.run_driver(purge, name="worker.soft_deleted_purge")
    return BatchResult(claimed=claimed, counts={"purged": purged})


SOFT_DELETED_PURGE = Job(
    name="soft_deleted_purge",
    run=soft_deleted_purge,
    interval=3600.0,
    batch=500,
    description=(
        "hard-deletes rows soft-deleted more than RETENTION_SOFT_DELETED_DAYS ago in the "
        "journeys' schemas and shared's reference tables, keeping rows still referenced"
    ),
)
