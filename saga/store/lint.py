"""Check a migrated database against the database guide's conventions.

The guide's rules are easy to forget in a hand-written revision and expensive to fix once
the revision has shipped, so the lint reads what the migrations actually built (the
PostgreSQL catalog, not the revision source) and names every breach:

- ``primary-key``: rows are addressed by an ``id uuid`` that services can mint without a
  round trip and that never collides across journeys. A partitioned table (or a
  TimescaleDB hypertable) may add its time column after ``id``, because every unique key
  must include it.
- ``created-at`` / ``updated-at`` / ``deleted-at``: auditing, incremental sync and soft
  deletes rely on these columns existing with the same meaning everywhere.
- ``updated-at-trigger``: ``updated_at`` is only trustworthy if the database, not each
  caller, maintains it.
- ``snake-case``: a quoted mixed-case name must be quoted in every query forever after.
- ``table-prefix``: the prefix says which journey owns a table wherever its name appears
  (logs, dumps, cross-schema queries). Materialized views carry the prefix too.
- ``fk-name``: ``<table>_<referenced_table>[_<qualifier>]_fk`` makes a violation message
  say which relationship failed without a catalog lookup.
- ``fk-on-delete``: the default NO ACTION is usually an omission, not a decision, so the
  guide asks for the behaviour to be spelled out.
- ``fk-index``: without an index on the referencing columns every delete or key update on
  the referenced table scans the referencing table, under lock. The referencing columns
  must be the leading key columns of a valid, non-partial B-tree or hash index, in any
  order among themselves (an equality lookup on all of them can use either order).

Partitions and extension-owned tables (TimescaleDB chunks, for instance) are skipped:
they inherit their definition from a parent the lint already checks.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["JOURNEY_SCHEMAS", "LintFinding", "lint_schema"]

JOURNEY_SCHEMAS: dict[str, tuple[str, ...]] = {
    "health_journey": ("health_",),
    "care_journey": ("care_",),
    "plan_journey": ("plan_",),
    "gamification": ("gamification_",),
    "shared": ("shared_", "saga_"),
}

SNAKE_CASE = re.compile(r"^[a-z][a-z0-9_]*$")
_QUALIFIER = r"[a-z](?:[a-z0-9_]*[a-z0-9])?"
# PostgreSQL silently truncates identifiers to NAMEDATALEN - 1 bytes.
_MAX_IDENTIFIER_BYTES = 63
_TIMESTAMPTZ = "timestamp with time zone"
_SET_UPDATED_AT = ("shared", "set_updated_at")
# pg_trigger.tgtype bits (src/include/catalog/pg_trigger.h).
_TRIGGER_ROW, _TRIGGER_BEFORE, _TRIGGER_UPDATE, _TRIGGER_INSTEAD = 1, 2, 16, 64
_ON_DELETE_NO_ACTION = "a"
_FK_INDEX_METHODS = ("btree", "hash")


@dataclass(frozen=True, slots=True)
class LintFinding:
    """One breach of the guide: which rule, on which object, and what is expected."""

    rule: str
    object_name: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule} {self.object_name}: {self.message}"


@dataclass(frozen=True, slots=True)
class _Column:
    attnum: int
    name: str
    type_name: str
    not_null: bool
    has_default: bool


@dataclass(frozen=True, slots=True)
class _Constraint:
    name: str
    kind: str
    columns: tuple[int, ...]
    referenced_table: str | None
    on_delete: str | None


@dataclass(frozen=True, slots=True)
class _Index:
    name: str
    key_columns: tuple[int, ...]
    method: str
    usable: bool
    backs_constraint: bool


@dataclass(frozen=True, slots=True)
class _Trigger:
    name: str
    tgtype: int
    enabled: bool
    whole_row: bool
    function: tuple[str, str]


@dataclass(frozen=True, slots=True)
class _Relation:
    schema: str
    name: str
    kind: str
    columns: tuple[_Column, ...]
    constraints: tuple[_Constraint, ...]
    indexes: tuple[_Index, ...]
    triggers: tuple[_Trigger, ...]
    hypertable: bool = False

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def is_materialized_view(self) -> bool:
        return self.kind == "m"

    @property
    def is_time_partitioned(self) -> bool:
        """Native partitioning and TimescaleDB both need the time column in every key."""
        return self.kind == "p" or self.hypertable

    def column(self, name: str) -> _Column | None:
        return next((c for c in self.columns if c.name == name), None)

    def column_names(self, attnums: Iterable[int]) -> str:
        by_attnum = {c.attnum: c.name for c in self.columns}
        return ", ".join(by_attnum.get(n, f"#{n}") for n in attnums)


_SCOPE = """
WITH scope AS (
    SELECT c.oid, n.nspname, c.relname, c.relkind
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = ANY(CAST(:schemas AS text[]))
      AND n.nspname NOT LIKE '\\_timescaledb%'
      AND c.relkind IN ('r', 'p', 'm')
      AND NOT c.relispartition
      AND NOT EXISTS (
          SELECT FROM pg_catalog.pg_depend d
          WHERE d.deptype = 'e'
            AND ((d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid)
              OR (d.classid = 'pg_catalog.pg_namespace'::regclass AND d.objid = n.oid))
      )
)
"""

# TimescaleDB's catalog exists only where the extension is installed.
_HAS_TIMESCALEDB_SQL = "SELECT to_regclass('_timescaledb_catalog.hypertable') IS NOT NULL"
_HYPERTABLES_SQL = """
SELECT schema_name AS nspname, table_name AS relname FROM _timescaledb_catalog.hypertable
"""

_SCHEMAS_SQL = """
SELECT n.nspname FROM pg_catalog.pg_namespace n
WHERE n.nspname = ANY(CAST(:schemas AS text[]))
ORDER BY n.nspname
"""

_RELATIONS_SQL = _SCOPE + "SELECT oid, nspname, relname, relkind::text AS relkind FROM scope"

_COLUMNS_SQL = (
    _SCOPE
    + """
SELECT a.attrelid, a.attnum, a.attname, a.atttypid::regtype::text AS type_name,
       a.attnotnull, a.atthasdef AND a.attgenerated = '' AS has_default
FROM scope s
JOIN pg_catalog.pg_attribute a ON a.attrelid = s.oid
WHERE a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""
)

# conparentid <> 0 rows are clones PostgreSQL adds per partition of a referenced
# partitioned table; they repeat the parent constraint's name.
_CONSTRAINTS_SQL = (
    _SCOPE
    + """
SELECT con.conrelid, con.conname, con.contype::text AS contype,
       COALESCE(con.conkey, '{}') AS conkey, ref.relname AS referenced_table,
       CASE WHEN con.contype = 'f' THEN con.confdeltype::text END AS on_delete
FROM scope s
JOIN pg_catalog.pg_constraint con ON con.conrelid = s.oid
LEFT JOIN pg_catalog.pg_class ref ON ref.oid = con.confrelid
WHERE con.conparentid = 0
ORDER BY con.conrelid, con.conname
"""
)

_INDEXES_SQL = (
    _SCOPE
    + """
SELECT i.indrelid, ic.relname AS index_name, i.indkey::int2[] AS indkey, i.indnkeyatts,
       am.amname, i.indisvalid AND i.indpred IS NULL AS usable,
       EXISTS (
           SELECT FROM pg_catalog.pg_constraint con
           WHERE con.conindid = i.indexrelid AND con.conrelid = i.indrelid
             AND con.contype IN ('p', 'u', 'x')
       ) AS backs_constraint
FROM scope s
JOIN pg_catalog.pg_index i ON i.indrelid = s.oid
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
JOIN pg_catalog.pg_am am ON am.oid = ic.relam
ORDER BY i.indrelid, ic.relname
"""
)

_TRIGGERS_SQL = (
    _SCOPE
    + """
SELECT t.tgrelid, t.tgname, t.tgtype::int AS tgtype, t.tgenabled <> 'D' AS enabled,
       cardinality(t.tgattr::int2[]) = 0 AS whole_row, pn.nspname AS function_schema,
       p.proname AS function_name
FROM scope s
JOIN pg_catalog.pg_trigger t ON t.tgrelid = s.oid
JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
WHERE NOT t.tgisinternal
ORDER BY t.tgrelid, t.tgname
"""
)


async def lint_schema(
    conn: AsyncConnection, *, schemas: Mapping[str, tuple[str, ...]] = JOURNEY_SCHEMAS
) -> list[LintFinding]:
    """Every breach of the guide in ``schemas`` (schema → accepted table prefixes),
    sorted by object name, then rule. An empty list means the schemas conform."""
    params = {"schemas": sorted(schemas)}

    async def rows(sql: str) -> Sequence[Any]:
        return (await conn.execute(text(sql), params)).all()

    schema_names = [r.nspname for r in await rows(_SCHEMAS_SQL)]
    hypertables: set[tuple[str, str]] = set()
    if await conn.scalar(text(_HAS_TIMESCALEDB_SQL)):
        hypertables = {(r.nspname, r.relname) for r in await rows(_HYPERTABLES_SQL)}
    relations = _assemble(
        hypertables,
        await rows(_RELATIONS_SQL),
        await rows(_COLUMNS_SQL),
        await rows(_CONSTRAINTS_SQL),
        await rows(_INDEXES_SQL),
        await rows(_TRIGGERS_SQL),
    )
    findings = [f for name in schema_names for f in _check_schema_name(name)]
    for relation in relations:
        findings.extend(_check_relation(relation, schemas.get(relation.schema, ())))
    return sorted(findings, key=lambda f: (f.object_name, f.rule))


def _assemble(
    hypertables: set[tuple[str, str]],
    relations: Sequence[Any],
    columns: Sequence[Any],
    constraints: Sequence[Any],
    indexes: Sequence[Any],
    triggers: Sequence[Any],
) -> list[_Relation]:
    cols: defaultdict[int, list[_Column]] = defaultdict(list)
    for r in columns:
        cols[r.attrelid].append(
            _Column(r.attnum, r.attname, r.type_name, r.attnotnull, r.has_default)
        )
    cons: defaultdict[int, list[_Constraint]] = defaultdict(list)
    for r in constraints:
        cons[r.conrelid].append(
            _Constraint(r.conname, r.contype, tuple(r.conkey), r.referenced_table, r.on_delete)
        )
    idxs: defaultdict[int, list[_Index]] = defaultdict(list)
    for r in indexes:
        key = tuple(r.indkey[: r.indnkeyatts])
        idxs[r.indrelid].append(_Index(r.index_name, key, r.amname, r.usable, r.backs_constraint))
    trgs: defaultdict[int, list[_Trigger]] = defaultdict(list)
    for r in triggers:
        function = (r.function_schema, r.function_name)
        trgs[r.tgrelid].append(_Trigger(r.tgname, r.tgtype, r.enabled, r.whole_row, function))
    return [
        _Relation(
            r.nspname,
            r.relname,
            r.relkind,
            tuple(cols[r.oid]),
            tuple(cons[r.oid]),
            tuple(idxs[r.oid]),
            tuple(trgs[r.oid]),
            hypertable=(r.nspname, r.relname) in hypertables,
        )
        for r in relations
    ]


def _check_relation(rel: _Relation, prefixes: tuple[str, ...]) -> Iterator[LintFinding]:
    yield from _check_prefix(rel, prefixes)
    yield from _check_names(rel)
    if rel.is_materialized_view:
        return
    yield from _check_primary_key(rel)
    yield from _check_created_at(rel)
    yield from _check_updated_at(rel)
    yield from _check_deleted_at(rel)
    yield from _check_updated_at_trigger(rel)
    for con in rel.constraints:
        if con.kind == "f":
            yield from _check_fk_name(rel, con)
            yield from _check_fk_on_delete(rel, con)
            yield from _check_fk_index(rel, con)


def _check_schema_name(schema: str) -> Iterator[LintFinding]:
    if not SNAKE_CASE.match(schema):
        yield LintFinding(
            "snake-case", schema, f"schema name {schema!r} is not snake_case ([a-z][a-z0-9_]*)"
        )


def _check_names(rel: _Relation) -> Iterator[LintFinding]:
    kind = "materialized view" if rel.is_materialized_view else "table"
    named: list[tuple[str, str, str]] = [(kind, rel.name, rel.qualified)]
    named += [("column", c.name, f"{rel.qualified}.{c.name}") for c in rel.columns]
    named += [("constraint", c.name, f"{rel.qualified}.{c.name}") for c in rel.constraints]
    # An index that backs a constraint shares its name: report the constraint only.
    named += [
        ("index", i.name, f"{rel.qualified}.{i.name}")
        for i in rel.indexes
        if not i.backs_constraint
    ]
    named += [("trigger", t.name, f"{rel.qualified}.{t.name}") for t in rel.triggers]
    for what, name, qualified in named:
        if not SNAKE_CASE.match(name):
            yield LintFinding(
                "snake-case",
                qualified,
                f"{what} name {name!r} is not snake_case ([a-z][a-z0-9_]*); "
                "it would have to be double-quoted in every query",
            )


def _check_prefix(rel: _Relation, prefixes: tuple[str, ...]) -> Iterator[LintFinding]:
    if prefixes and not rel.name.startswith(prefixes):
        kind = "materialized view" if rel.is_materialized_view else "table"
        expected = " or ".join(repr(p) for p in prefixes)
        yield LintFinding(
            "table-prefix",
            rel.qualified,
            f"{kind} name {rel.name!r} does not start with {expected}, "
            f"the prefix of schema {rel.schema}",
        )


def _check_primary_key(rel: _Relation) -> Iterator[LintFinding]:
    pk = next((c for c in rel.constraints if c.kind == "p"), None)
    expected = "expected PRIMARY KEY (id) on an id uuid column"
    if rel.is_time_partitioned:
        expected += " (a partitioned table or hypertable may add its time column after id)"
    if pk is None:
        yield LintFinding("primary-key", rel.qualified, f"table has no primary key; {expected}")
        return
    first = next((c for c in rel.columns if c.attnum == pk.columns[0]), None)
    id_first = first is not None and first.name == "id" and first.type_name == "uuid"
    if id_first and (len(pk.columns) == 1 or rel.is_time_partitioned):
        return
    yield LintFinding(
        "primary-key",
        rel.qualified,
        f"primary key {pk.name} is on ({rel.column_names(pk.columns)}); {expected}",
    )


def _audit_column_problem(
    rel: _Relation, name: str, *, not_null: bool, needs_default: bool
) -> str | None:
    col = rel.column(name)
    nullability = "NOT NULL" if not_null else "nullable"
    wanted = f"{name} timestamptz {nullability}" + (" with a default" if needs_default else "")
    if col is None:
        return f"table has no {name} column; expected {wanted}"
    if col.type_name != _TIMESTAMPTZ:
        return f"{name} is {col.type_name}; expected {wanted}"
    if col.not_null != not_null:
        return f"{name} is {'NOT NULL' if col.not_null else 'nullable'}; expected {wanted}"
    if needs_default and not col.has_default:
        return f"{name} has no default; expected {wanted} (now())"
    return None


def _check_created_at(rel: _Relation) -> Iterator[LintFinding]:
    problem = _audit_column_problem(rel, "created_at", not_null=True, needs_default=True)
    if problem:
        yield LintFinding("created-at", rel.qualified, problem)


def _check_updated_at(rel: _Relation) -> Iterator[LintFinding]:
    problem = _audit_column_problem(rel, "updated_at", not_null=True, needs_default=False)
    if problem:
        yield LintFinding("updated-at", rel.qualified, problem)


def _check_deleted_at(rel: _Relation) -> Iterator[LintFinding]:
    problem = _audit_column_problem(rel, "deleted_at", not_null=False, needs_default=False)
    if problem:
        yield LintFinding("deleted-at", rel.qualified, problem)


def _maintains_updated_at(trigger: _Trigger) -> bool:
    wanted = _TRIGGER_ROW | _TRIGGER_BEFORE | _TRIGGER_UPDATE
    return (
        trigger.tgtype & wanted == wanted
        and not trigger.tgtype & _TRIGGER_INSTEAD
        # UPDATE OF <columns> would miss updates to the other columns.
        and trigger.whole_row
        and trigger.enabled
        and trigger.function == _SET_UPDATED_AT
    )


def _check_updated_at_trigger(rel: _Relation) -> Iterator[LintFinding]:
    if not any(_maintains_updated_at(t) for t in rel.triggers):
        yield LintFinding(
            "updated-at-trigger",
            rel.qualified,
            "table has no enabled BEFORE UPDATE ... FOR EACH ROW trigger executing "
            f"shared.set_updated_at(); expected {rel.name}_set_updated_at",
        )


def _fk_name_conforms(name: str, table: str, referenced: str) -> bool:
    stem = f"{table}_{referenced}_"
    if re.fullmatch(re.escape(stem) + f"(?:{_QUALIFIER}_)?fk", name):
        return True
    # A conforming name longer than 63 bytes is stored truncated; accept what remains.
    if len(name.encode()) == _MAX_IDENTIFIER_BYTES:
        return stem.startswith(name) or (
            name.startswith(stem) and re.fullmatch("[a-z0-9_]*", name[len(stem) :]) is not None
        )
    return False


def _check_fk_name(rel: _Relation, fk: _Constraint) -> Iterator[LintFinding]:
    referenced = fk.referenced_table or "?"
    if not _fk_name_conforms(fk.name, rel.name, referenced):
        yield LintFinding(
            "fk-name",
            f"{rel.qualified}.{fk.name}",
            f"foreign key to {referenced} is named {fk.name!r}; expected "
            f"{rel.name}_{referenced}_fk or {rel.name}_{referenced}_<qualifier>_fk",
        )


def _check_fk_on_delete(rel: _Relation, fk: _Constraint) -> Iterator[LintFinding]:
    if fk.on_delete == _ON_DELETE_NO_ACTION:
        yield LintFinding(
            "fk-on-delete",
            f"{rel.qualified}.{fk.name}",
            f"foreign key to {fk.referenced_table} has the default ON DELETE NO ACTION; "
            "declare ON DELETE RESTRICT, CASCADE, SET NULL or SET DEFAULT explicitly",
        )


def _index_covers(index: _Index, columns: tuple[int, ...]) -> bool:
    leading = index.key_columns[: len(columns)]
    return (
        index.usable
        and index.method in _FK_INDEX_METHODS
        and len(leading) == len(columns)
        and set(leading) == set(columns)
    )


def _check_fk_index(rel: _Relation, fk: _Constraint) -> Iterator[LintFinding]:
    if not any(_index_covers(i, fk.columns) for i in rel.indexes):
        cols = rel.column_names(fk.columns)
        yield LintFinding(
            "fk-index",
            f"{rel.qualified}.{fk.name}",
            f"no index starts with the foreign key's columns ({cols}); deleting from "
            f"{fk.referenced_table} would scan {rel.name}. Expected e.g. "
            f"CREATE INDEX {rel.name}_{cols.replace(', ', '_')}_idx ON {rel.qualified} ({cols})",
        )
