"""What the table maintenance job decides, apart from how it asks the database.

Two decisions, both from statistics PostgreSQL already keeps:

- :func:`vacuum_reason`: whether a table needs a ``VACUUM (ANALYZE)`` from the worker,
  from its row in ``pg_stat_user_tables``.
- :func:`estimate_btree_bloat`: how much of a B-tree index is wasted space, from its size
  in ``pg_class`` and the widths of its columns in ``pg_stats``. This is the well-known
  statistics-based estimate (the model of ioguix's *pgsql-bloat-estimation*): the pages
  the index's live entries would need, packed at its fillfactor, against the pages it
  has. It reads only catalogs, so it costs nothing to run, needs no extension and no
  privilege beyond reading the statistics; it is only as fresh as the last ANALYZE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class VacuumReason(StrEnum):
    AUTOVACUUM_OFF = "autovacuum_off"
    """Autovacuum is off for the table (``autovacuum_enabled = false``) or the server."""
    AUTOVACUUM_BEHIND = "autovacuum_behind"
    """Autovacuum is on but has not vacuumed the table for VACUUM_BEHIND_SECONDS."""


@dataclass(frozen=True, slots=True)
class VacuumThresholds:
    dead_tuples: int
    """Dead tuples a table must have (VACUUM_DEAD_TUPLES_THRESHOLD)."""
    dead_percent: float
    """Percent of the table's tuples that must be dead (VACUUM_DEAD_TUPLES_PERCENT)."""
    behind_seconds: float
    """Time since the last vacuum after which autovacuum counts as behind."""


@dataclass(frozen=True, slots=True)
class TableStats:
    """One table's row of ``pg_stat_user_tables``, with whether autovacuum may run on it."""

    table: str
    live_tuples: int
    dead_tuples: int
    modified_since_analyze: int
    last_vacuum: datetime | None
    """The last manual VACUUM (the worker's are manual)."""
    last_autovacuum: datetime | None
    last_analyze: datetime | None
    last_autoanalyze: datetime | None
    autovacuum_enabled: bool
    """Both the server's ``autovacuum`` and the table's ``autovacuum_enabled``."""

    @property
    def vacuumed_at(self) -> datetime | None:
        """The latest vacuum of either kind, or None if the statistics know of none."""
        return _latest(self.last_vacuum, self.last_autovacuum)

    @property
    def analyzed_at(self) -> datetime | None:
        return _latest(self.last_analyze, self.last_autoanalyze)

    @property
    def dead_percent(self) -> float:
        total = self.live_tuples + self.dead_tuples
        return 100.0 * self.dead_tuples / total if total else 0.0


def _latest(*moments: datetime | None) -> datetime | None:
    known = [moment for moment in moments if moment is not None]
    return max(known) if known else None


def vacuum_reason(
    stats: TableStats, thresholds: VacuumThresholds, now: datetime
) -> VacuumReason | None:
    """Why the worker should vacuum this table now, or None.

    Only a table past both dead-tuple thresholds is considered. With autovacuum off, the
    worker is the only one who vacuums it, so it does. With autovacuum on, the worker
    steps in only when no vacuum of either kind ran for ``behind_seconds`` (a table the
    statistics never saw vacuumed counts as behind): autovacuum's workers are all busy,
    or something keeps cancelling them.
    """
    if stats.dead_tuples < thresholds.dead_tuples:
        return None
    if stats.dead_percent < thresholds.dead_percent:
        return None
    if not stats.autovacuum_enabled:
        return VacuumReason.AUTOVACUUM_OFF
    vacuumed = stats.vacuumed_at
    if vacuumed is None or (now - vacuumed).total_seconds() >= thresholds.behind_seconds:
        return VacuumReason.AUTOVACUUM_BEHIND
    return None


# -- B-tree bloat ---------------------------------------------------------------------------

_PAGE_HEADER = 24  # PageHeaderData
_BTREE_SPECIAL = 16  # BTPageOpaqueData at the end of every B-tree page
_LINE_POINTER = 4  # ItemIdData, one per entry
_INDEX_TUPLE_HEADER = 8  # IndexTupleData
_NULL_BITMAP = 4  # IndexAttributeBitMapData, on entries of an index with a nullable column
_METAPAGE = 1


@dataclass(frozen=True, slots=True)
class IndexShape:
    """What the estimate needs of one B-tree index, from ``pg_class`` and ``pg_stats``."""

    table: str
    index: str
    pages: int
    """Pages the index has (``relpages``, as of the last VACUUM or ANALYZE)."""
    entries: float
    """Entries it holds (``reltuples``; negative: never counted yet)."""
    block_size: int
    fillfactor: int
    max_align: int
    key_width: float | None
    """Average bytes of an entry's key: the columns' ``avg_width`` weighted by how often
    they are not null. None when a column has no statistics (never analyzed, or an
    expression), so no estimate is possible."""
    nullable: bool
    """Some key column holds nulls, so entries carry a null bitmap."""


@dataclass(frozen=True, slots=True)
class IndexBloat:
    table: str
    index: str
    size_bytes: int
    bloat_bytes: int
    """The estimated wasted space: pages beyond those the entries need at the fillfactor."""
    ratio: float
    """``bloat_bytes`` as a fraction of the index's size, 0..1."""


def _aligned(size: float, align: int) -> float:
    return math.ceil(size / align) * align


def estimate_btree_bloat(shape: IndexShape) -> IndexBloat | None:
    """The estimated bloat of a B-tree index, or None when the statistics cannot tell.

    The estimate counts leaf pages only and ignores deduplication (PostgreSQL 13+ stores
    equal keys once), so a tiny index reads a little bloated and an index of many equal
    keys reads less bloated than it is.
    """
    if shape.pages <= 0 or shape.entries < 0 or shape.key_width is None:
        return None
    header = _INDEX_TUPLE_HEADER + (_NULL_BITMAP if shape.nullable else 0)
    entry = (
        _aligned(header, shape.max_align)
        + _aligned(shape.key_width, shape.max_align)
        + _LINE_POINTER
    )
    usable = (shape.block_size - _PAGE_HEADER - _BTREE_SPECIAL) * shape.fillfactor / 100
    per_page = max(1, math.floor(usable / entry))
    needed = _METAPAGE + math.ceil(shape.entries / per_page)
    wasted = max(0, shape.pages - needed)
    return IndexBloat(
        table=shape.table,
        index=shape.index,
        size_bytes=shape.pages * shape.block_size,
        bloat_bytes=wasted * shape.block_size,
        ratio=wasted / shape.pages,
    )
