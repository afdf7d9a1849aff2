"""Table maintenance: dead tuples, vacuums and index bloat of the tables that churn.

The watched tables are the saga log's (:data:`ENGINE_CHURNING_TABLES`), every journey's
inbox and outbox, and the tables each journey declares as churning
(``JourneyService.churning_tables``: a ledger, appointments); a partitioned one is
watched partition by partition. Each run

- exports each table's dead and live tuples, rows changed since the last analyze, when it
  was last vacuumed and analyzed, and whether autovacuum may run on it;
- runs ``VACUUM (ANALYZE)`` on a table past VACUUM_DEAD_TUPLES_THRESHOLD and
  VACUUM_DEAD_TUPLES_PERCENT when autovacuum is off for it, or when it is on but no vacuum
  ran for VACUUM_BEHIND_SECONDS (:func:`~saga.worker.table_health.vacuum_reason`);
- estimates the bloat of their B-tree indexes from the statistics
  (:func:`~saga.worker.table_health.estimate_btree_bloat`), exports it, logs
  ``index_bloat_high`` for one past INDEX_BLOAT_THRESHOLD_PERCENT and, with
  REINDEX_CONCURRENTLY_ENABLED, rebuilds the most bloated (the job's batch of them per
  run) with ``REINDEX INDEX CONCURRENTLY``, which lets writes go on meanwhile.

VACUUM and REINDEX CONCURRENTLY cannot run inside a transaction, so the job runs its
statements on one connection with none, under a session advisory lock: one worker at a
time. Both need the role to own the table (or be a member of its owner) on PostgreSQL 15,
which has no MAINTAIN right: a table the job's role may not maintain is still watched and
exported, and one that needs a vacuum or a rebuild is logged (``table_vacuum_not_permitted``,
``index_reindex_not_permitted``) and counted as ``not_permitted``, since PostgreSQL would
skip the VACUUM with a mere warning.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from saga import metrics
from saga.errors import DatabaseError, DatabaseUnavailable
from saga.store.driver import DriverConnection
from saga.worker.job import BatchResult, Job, JobContext, lock_key
from saga.worker.table_health import (
    IndexBloat,
    IndexShape,
    TableStats,
    VacuumThresholds,
    estimate_btree_bloat,
    vacuum_reason,
)

if TYPE_CHECKING:
    from saga.participant.journey import JourneyService

log = structlog.get_logger("saga.worker")

JOB_NAME = "table_maintenance"
ENGINE_CHURNING_TABLES = (
    "shared.saga_instance",
    "shared.saga_step_log",
    "shared.saga_outbox",
    "shared.saga_signal",
)
"""The engine's own tables whose rows are updated (every transition), or deleted and
archived (retention) all the time."""
LOCK_TIMEOUT = "5s"
"""How long a VACUUM (or a leftover's DROP) waits for its lock: a table another vacuum
or a migration holds waits for the next run instead."""
SMALLEST_REPORTED_BYTES = 1024 * 1024
"""Indexes under 1 MiB are never reported as bloated: the estimate is coarse there, and
rebuilding them gains nothing."""

_exported_tables: set[str] = set()
_exported_indexes: set[tuple[str, str]] = set()


def watched_tables(journeys: Sequence[JourneyService]) -> list[str]:
    """The engine's churning tables, then each journey's inbox, outbox and declared
    churning tables, each once."""
    names = list(ENGINE_CHURNING_TABLES)
    for journey in journeys:
        names += [journey.tables.inbox, journey.tables.outbox, *journey.churning_tables]
    return list(dict.fromkeys(names))


# The tables whose owner the job's role has the rights of (a superuser has every role's).
_MAINTAINABLE = """
SELECT oid FROM pg_class
WHERE oid = ANY($1::oid[]) AND pg_has_role(current_user, relowner, 'USAGE')
"""

_MISSING = """
SELECT name FROM unnest($1::text[]) AS w(name) WHERE to_regclass(name) IS NULL
"""

_TABLES = """
WITH watched AS (
    SELECT to_regclass(name) AS relid FROM unnest($1::text[]) AS w(name)
), leaves AS (
    SELECT relid FROM watched
    UNION
    SELECT tree.relid
    FROM watched CROSS JOIN LATERAL pg_partition_tree(watched.relid) AS tree
    WHERE tree.isleaf
)
SELECT s.relid, format('%I.%I', s.schemaname, s.relname) AS qualified,
       s.n_live_tup, s.n_dead_tup, s.n_mod_since_analyze,
       s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze,
       current_setting('autovacuum')::boolean AND coalesce(
           (SELECT option_value::boolean FROM pg_options_to_table(c.reloptions)
            WHERE option_name = 'autovacuum_enabled'), true) AS autovacuum_enabled,
       now() AS now
FROM leaves
JOIN pg_stat_user_tables s ON s.relid = leaves.relid
JOIN pg_class c ON c.oid = leaves.relid AND c.relkind <> 'p'
ORDER BY qualified
"""

# One row per valid B-tree index of the tables: its size, entries, fillfactor, and the
# average width of its columns (key and INCLUDE) from pg_stats, an expression column's
# under the index's own name. Columns without statistics leave key_width NULL.
_INDEXES = """
SELECT format('%I.%I', tn.nspname, t.relname) AS table_name,
       format('%I.%I', n.nspname, i.relname) AS index_name,
       i.relpages, i.reltuples,
       current_setting('block_size')::int AS block_size,
       coalesce((SELECT option_value::int FROM pg_options_to_table(i.reloptions)
                 WHERE option_name = 'fillfactor'), 90) AS fillfactor,
       CASE WHEN w.known = w.columns THEN w.key_width END AS key_width,
       coalesce(w.nullable, false) AS nullable
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_namespace n ON n.oid = i.relnamespace
JOIN pg_am am ON am.oid = i.relam AND am.amname = 'btree'
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace tn ON tn.oid = t.relnamespace
CROSS JOIN LATERAL (
    SELECT count(*) AS columns, count(s.avg_width) AS known,
           sum((1 - coalesce(s.null_frac, 0)) * s.avg_width)::float8 AS key_width,
           bool_or(coalesce(s.null_frac, 0) > 0) AS nullable
    FROM generate_series(0, x.indnatts - 1) AS k
    LEFT JOIN pg_attribute ta ON ta.attrelid = x.indrelid AND ta.attnum = x.indkey[k]
    LEFT JOIN pg_attribute ia ON ia.attrelid = x.indexrelid AND ia.attnum = k + 1
    LEFT JOIN pg_stats s ON s.schemaname = tn.nspname AND NOT s.inherited
         AND ((x.indkey[k] <> 0 AND s.tablename = t.relname AND s.attname = ta.attname)
           OR (x.indkey[k] = 0 AND s.tablename = i.relname AND s.attname = ia.attname))
) AS w
WHERE x.indrelid = ANY($1::oid[]) AND x.indisvalid AND x.indisready
ORDER BY table_name, index_name
"""

# What a REINDEX CONCURRENTLY that failed or was killed leaves behind: an invalid copy
# named <index>_ccnew (or _ccnew1, ...), which writes would keep maintaining.
_LEFTOVERS = """
SELECT format('%I.%I', n.nspname, i.relname) AS index_name
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_namespace n ON n.oid = i.relnamespace
WHERE x.indrelid = ANY($1::oid[]) AND NOT x.indisvalid AND i.relname ~ '_ccnew[0-9]*$'
"""


def _timestamp(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else 0.0


def _export_table(stats: TableStats) -> None:
    table = stats.table
    metrics.TABLE_DEAD_TUPLES.labels(table).set(stats.dead_tuples)
    metrics.TABLE_LIVE_TUPLES.labels(table).set(stats.live_tuples)
    metrics.TABLE_MODIFIED_SINCE_ANALYZE.labels(table).set(stats.modified_since_analyze)
    metrics.TABLE_LAST_VACUUM.labels(table).set(_timestamp(stats.vacuumed_at))
    metrics.TABLE_LAST_ANALYZE.labels(table).set(_timestamp(stats.analyzed_at))
    metrics.TABLE_AUTOVACUUM_ENABLED.labels(table).set(1 if stats.autovacuum_enabled else 0)


def _forget_tables(seen: set[str]) -> None:
    """Remove the series of tables no longer watched (detached, dropped)."""
    for table in _exported_tables - seen:
        for gauge in (
            metrics.TABLE_DEAD_TUPLES,
            metrics.TABLE_LIVE_TUPLES,
            metrics.TABLE_MODIFIED_SINCE_ANALYZE,
            metrics.TABLE_LAST_VACUUM,
            metrics.TABLE_LAST_ANALYZE,
            metrics.TABLE_AUTOVACUUM_ENABLED,
        ):
            gauge.remove(table)
    _exported_tables.clear()
    _exported_tables.update(seen)


def _forget_indexes(seen: set[tuple[str, str]]) -> None:
    for labels in _exported_indexes - seen:
        metrics.INDEX_SIZE.remove(*labels)
        metrics.INDEX_BLOAT_RATIO.remove(*labels)
    _exported_indexes.clear()
    _exported_indexes.update(seen)


async def _table_stats(conn: DriverConnection, names: list[str]) -> list[tuple[int, TableStats]]:
    rows = await conn.fetch(_TABLES, names)
    return [
        (
            row["relid"],
            TableStats(
                table=row["qualified"],
                live_tuples=row["n_live_tup"],
                dead_tuples=row["n_dead_tup"],
                modified_since_analyze=row["n_mod_since_analyze"],
                last_vacuum=row["last_vacuum"],
                last_autovacuum=row["last_autovacuum"],
                last_analyze=row["last_analyze"],
                last_autoanalyze=row["last_autoanalyze"],
                autovacuum_enabled=row["autovacuum_enabled"],
            ),
        )
        for row in rows
    ]


async def _index_bloat(conn: DriverConnection, table_oids: list[int]) -> list[IndexBloat]:
    found = []
    for row in await conn.fetch(_INDEXES, table_oids):
        bloat = estimate_btree_bloat(
            IndexShape(
                table=row["table_name"],
                index=row["index_name"],
                pages=row["relpages"],
                entries=row["reltuples"],
                block_size=row["block_size"],
                fillfactor=row["fillfactor"],
                # Every server PostgreSQL supports today is 64-bit: MAXALIGN is 8.
                max_align=8,
                key_width=row["key_width"],
                nullable=row["nullable"],
            )
        )
        if bloat is not None:
            found.append(bloat)
    return found


async def _vacuum(conn: DriverConnection, stats: TableStats, reason: str) -> bool:
    """VACUUM (ANALYZE) one table; False, logged, when it failed (its lock not granted
    in time, its time limit reached)."""
    try:
        await conn.execute(f"VACUUM (ANALYZE) {stats.table}")
    except DatabaseError as exc:
        if isinstance(exc, DatabaseUnavailable):
            raise
        log.warning("table_vacuum_failed", table=stats.table, error=str(exc), sqlstate=exc.sqlstate)
        return False
    log.info(
        "table_vacuumed",
        table=stats.table,
        reason=reason,
        dead_tuples=stats.dead_tuples,
        live_tuples=stats.live_tuples,
    )
    return True


async def _drop_leftovers(conn: DriverConnection, table_oids: list[int]) -> None:
    for row in await conn.fetch(_LEFTOVERS, table_oids):
        try:
            await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {row['index_name']}")
        except DatabaseError as exc:
            if isinstance(exc, DatabaseUnavailable):
                raise
            log.warning(
                "index_leftover_not_dropped",
                index=row["index_name"],
                error=str(exc),
                sqlstate=exc.sqlstate,
            )
            continue
        log.warning("index_leftover_dropped", index=row["index_name"])


async def _reindex(conn: DriverConnection, bloat: IndexBloat) -> bool:
    """REINDEX INDEX CONCURRENTLY; False, logged, when it failed."""
    # It waits for the transactions older than each of its phases: no lock_timeout, only
    # the statement's own time limit.
    await conn.execute("SET lock_timeout = 0")
    try:
        await conn.execute(f"REINDEX INDEX CONCURRENTLY {bloat.index}")
    except DatabaseError as exc:
        if isinstance(exc, DatabaseUnavailable):
            raise
        log.warning(
            "index_reindex_failed", index=bloat.index, error=str(exc), sqlstate=exc.sqlstate
        )
        return False
    finally:
        # Restored for what follows (the leftovers' DROP); a lost connection has no
        # session left to restore.
        if not isinstance(sys.exc_info()[1], DatabaseUnavailable):
            await conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
    size = await conn.fetchval("SELECT pg_relation_size($1::regclass)", bloat.index)
    log.info(
        "index_reindexed",
        table=bloat.table,
        index=bloat.index,
        size_bytes_before=bloat.size_bytes,
        size_bytes_after=size,
    )
    return True


async def _maintain(
    conn: DriverConnection, ctx: JobContext, names: list[str], counts: Counter[str]
) -> None:
    settings = ctx.settings
    missing = [row["name"] for row in await conn.fetch(_MISSING, names)]
    for name in missing:
        log.warning("table_maintenance_skipped", table=name, reason="no such table")
    present = [name for name in names if name not in missing]

    thresholds = VacuumThresholds(
        dead_tuples=settings.vacuum_dead_tuples_threshold,
        dead_percent=settings.vacuum_dead_tuples_percent,
        behind_seconds=settings.vacuum_behind_seconds,
    )
    tables = await _table_stats(conn, present)
    permitted = {row["oid"] for row in await conn.fetch(_MAINTAINABLE, [oid for oid, _ in tables])}
    now = datetime.now(UTC)
    for oid, stats in tables:
        reason = vacuum_reason(stats, thresholds, now)
        if reason is None:
            continue
        if oid not in permitted:
            log.warning(
                "table_vacuum_not_permitted",
                table=stats.table,
                reason=reason,
                dead_tuples=stats.dead_tuples,
                hint="VACUUM needs the table's owner: run this job as the owner",
            )
            counts["not_permitted"] += 1
            continue
        counts["vacuumed" if await _vacuum(conn, stats, reason) else "vacuum_failed"] += 1
    # Read again: a vacuum changed the dead tuples, the vacuum and analyze times, and the
    # statistics the bloat estimate reads.
    if counts["vacuumed"]:
        tables = await _table_stats(conn, present)
    for _, stats in tables:
        _export_table(stats)
    _forget_tables({stats.table for _, stats in tables})
    counts["tables_watched"] = len(tables)

    oids = [oid for oid, _ in tables]
    estimates = await _index_bloat(conn, oids)
    for bloat in estimates:
        metrics.INDEX_SIZE.labels(bloat.table, bloat.index).set(bloat.size_bytes)
        metrics.INDEX_BLOAT_RATIO.labels(bloat.table, bloat.index).set(bloat.ratio)
    _forget_indexes({(bloat.table, bloat.index) for bloat in estimates})
    bloated = sorted(
        (
            bloat
            for bloat in estimates
            if bloat.ratio * 100 >= settings.index_bloat_threshold_percent
            and bloat.size_bytes >= SMALLEST_REPORTED_BYTES
        ),
        key=lambda bloat: bloat.bloat_bytes,
        reverse=True,
    )
    for bloat in bloated:
        log.warning(
            "index_bloat_high",
            alert="index_bloat",
            table=bloat.table,
            index=bloat.index,
            bloat_percent=round(bloat.ratio * 100, 1),
            size_bytes=bloat.size_bytes,
            bloat_bytes=bloat.bloat_bytes,
            threshold_percent=settings.index_bloat_threshold_percent,
        )
    counts["bloated_indexes"] = len(bloated)
    if settings.reindex_concurrently_enabled and bloated:
        owned = {stats.table for oid, stats in tables if oid in permitted}
        for bloat in [bloat for bloat in bloated if bloat.table not in owned]:
            log.warning(
                "index_reindex_not_permitted",
                table=bloat.table,
                index=bloat.index,
                hint="REINDEX needs the table's owner: run this job as the owner",
            )
            counts["not_permitted"] += 1
        bloated = [bloat for bloat in bloated if bloat.table in owned]
        ours = [oid for oid in oids if oid in permitted]
        await _drop_leftovers(conn, ours)
        for bloat in bloated[: ctx.batch]:
            if await _reindex(conn, bloat):
                counts["reindexed"] += 1
            else:
                counts["reindex_failed"] += 1
                await _drop_leftovers(conn, ours)


async def table_maintenance(ctx: JobContext) -> BatchResult:
    names = watched_tables(ctx.journeys)
    timeout_ms = round(ctx.settings.table_maintenance_timeout_seconds * 1000)

    async def maintain(conn: DriverConnection) -> BatchResult | None:
        # A session lock, not a transaction's: VACUUM and REINDEX CONCURRENTLY refuse to
        # run inside one. It ends with the session if the worker dies.
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key(JOB_NAME)):
            return None
        counts: Counter[str] = Counter()
        try:
            await conn.execute(f"SET statement_timeout = {timeout_ms}")
            await conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
            await _maintain(conn, ctx, names, counts)
        finally:
            # Back to the pool as it came: the connection's own limits, no lock.
            await conn.execute("RESET statement_timeout")
            await conn.execute("RESET lock_timeout")
            await conn.fetchval("SELECT pg_advisory_unlock($1)", lock_key(JOB_NAME))
        return BatchResult(claimed=1, counts=dict(counts))

    result = await ctx.database.run_driver(maintain, transaction=False, name=f"worker.{JOB_NAME}")
    return result or BatchResult.nothing()


TABLE_MAINTENANCE = Job(
    name=JOB_NAME,
    run=table_maintenance,
    interval=300.0,
    batch=1,
    repeat_when_full=False,
    description=(
        "exports dead tuples, last vacuum and analyze, and index bloat of the churning "
        "tables; VACUUM (ANALYZE) where autovacuum is off or behind; REINDEX CONCURRENTLY "
        "of bloated indexes when REINDEX_CONCURRENTLY_ENABLED (batch: indexes per run)"
    ),
)
