"""The schema lint against the real PostgreSQL.

Each breach case builds a conforming ``care_journey`` schema (with a stand-in ``shared``
schema holding ``shared.set_updated_at()``) in an empty database, adds one bad object, and
expects exactly one finding: that rule, on that object. The conforming part therefore has
to really conform, which :func:`test_conforming_setup_has_no_findings` checks on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from saga.settings import to_async_url
from saga.store.lint import JOURNEY_SCHEMAS, LintFinding, lint_schema

pytestmark = pytest.mark.integration

ID = "id uuid NOT NULL DEFAULT gen_random_uuid()"
CREATED_AT = "created_at timestamptz NOT NULL DEFAULT now()"
UPDATED_AT = "updated_at timestamptz NOT NULL DEFAULT now()"
DELETED_AT = "deleted_at timestamptz"
AUDIT = (CREATED_AT, UPDATED_AT, DELETED_AT)


def table(
    name: str,
    *columns: str,
    id_column: str = ID,
    audit: Sequence[str] = AUDIT,
    primary_key: str = "id",
    constraints: Sequence[str] = (),
    trigger: bool = True,
    partition_by: str | None = None,
) -> list[str]:
    """A ``care_journey`` table that follows the guide unless told otherwise."""
    body = ",\n    ".join(
        [
            id_column,
            *columns,
            *audit,
            f"CONSTRAINT {name}_pkey PRIMARY KEY ({primary_key})",
            *constraints,
        ]
    )
    partitioning = f" PARTITION BY {partition_by}" if partition_by else ""
    statements = [f"CREATE TABLE care_journey.{name} (\n    {body}\n){partitioning}"]
    if trigger:
        statements.append(
            f"CREATE TRIGGER {name}_set_updated_at BEFORE UPDATE ON care_journey.{name} "
            "FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at()"
        )
    return statements


def fk_to_provider(name: str, column: str = "provider_id", on_delete: str = "RESTRICT") -> str:
    on_delete_clause = f" ON DELETE {on_delete}" if on_delete else ""
    return (
        f"CONSTRAINT {name} FOREIGN KEY ({column}) "
        f"REFERENCES care_journey.care_provider (id){on_delete_clause}"
    )


CONFORMING = [
    "CREATE SCHEMA shared",
    """CREATE FUNCTION shared.set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.updated_at := now();
        RETURN NEW;
    END $$""",
    "CREATE SCHEMA care_journey",
    *table("care_provider", "name text NOT NULL"),
    *table(
        "care_slot",
        "provider_id uuid NOT NULL",
        "backup_provider_id uuid",
        "starts_at timestamptz NOT NULL",
        constraints=[
            fk_to_provider("care_slot_care_provider_fk", on_delete="CASCADE"),
            # A qualified name, for a second relationship to the same table.
            fk_to_provider(
                "care_slot_care_provider_backup_fk", "backup_provider_id", on_delete="SET NULL"
            ),
        ],
    ),
    "CREATE INDEX care_slot_provider_id_starts_at_idx "
    "ON care_journey.care_slot (provider_id, starts_at)",
    "CREATE INDEX care_slot_backup_provider_id_idx ON care_journey.care_slot "
    "USING hash (backup_provider_id)",
]

VISIT_PROVIDER_INDEX = (
    "CREATE INDEX care_visit_provider_id_idx ON care_journey.care_visit (provider_id)"
)


def visit_with_fk(name: str, *, on_delete: str = "RESTRICT", index: bool = True) -> list[str]:
    statements = table(
        "care_visit",
        "provider_id uuid NOT NULL",
        constraints=[fk_to_provider(name, on_delete=on_delete)],
    )
    return [*statements, VISIT_PROVIDER_INDEX] if index else statements


async def lint(
    url: str,
    statements: Sequence[str],
    schemas: Mapping[str, tuple[str, ...]] = JOURNEY_SCHEMAS,
) -> list[LintFinding]:
    """Run ``statements`` in the database at ``url``, then lint it."""
    engine = create_async_engine(to_async_url(url))
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.exec_driver_sql(statement)
        async with engine.connect() as conn:
            return await lint_schema(conn, schemas=schemas)
    finally:
        await engine.dispose()


def render(findings: Sequence[LintFinding]) -> str:
    return "\n".join(str(f) for f in findings) or "(no findings)"


async def test_migrated_database_has_no_findings(migrated_database_url: str) -> None:
    findings = await lint(migrated_database_url, [])
    assert findings == [], render(findings)


async def test_conforming_setup_has_no_findings(fresh_database_url: str) -> None:
    findings = await lint(fresh_database_url, CONFORMING)
    assert findings == [], render(findings)


BREACHES = [
    pytest.param(
        table("care_visit", id_column="id bigint NOT NULL"),
        "primary-key",
        "care_journey.care_visit",
        id="primary-key-not-uuid",
    ),
    pytest.param(
        table("care_visit", "provider_id uuid NOT NULL", primary_key="id, provider_id"),
        "primary-key",
        "care_journey.care_visit",
        id="primary-key-composite",
    ),
    pytest.param(
        table(
            "care_visit",
            "recorded_at timestamptz NOT NULL",
            primary_key="recorded_at, id",
            partition_by="RANGE (recorded_at)",
        ),
        "primary-key",
        "care_journey.care_visit",
        id="primary-key-partitioned-id-not-first",
    ),
    pytest.param(
        table("care_visit", audit=(UPDATED_AT, DELETED_AT)),
        "created-at",
        "care_journey.care_visit",
        id="created-at-missing",
    ),
    pytest.param(
        table("care_visit", audit=("created_at timestamptz NOT NULL", UPDATED_AT, DELETED_AT)),
        "created-at",
        "care_journey.care_visit",
        id="created-at-without-default",
    ),
    pytest.param(
        table("care_visit", audit=(CREATED_AT, DELETED_AT)),
        "updated-at",
        "care_journey.care_visit",
        id="updated-at-missing",
    ),
    pytest.param(
        table("care_visit", audit=(CREATED_AT, UPDATED_AT)),
        "deleted-at",
        "care_journey.care_visit",
        id="deleted-at-missing",
    ),
    pytest.param(
        table("care_visit", trigger=False),
        "updated-at-trigger",
        "care_journey.care_visit",
        id="updated-at-trigger-missing",
    ),
    pytest.param(
        table("care_visit", '"PatientName" text'),
        "snake-case",
        "care_journey.care_visit.PatientName",
        id="snake-case-column",
    ),
    pytest.param(
        table("visit"),
        "table-prefix",
        "care_journey.visit",
        id="table-prefix",
    ),
    pytest.param(
        [
            "CREATE MATERIALIZED VIEW care_journey.slot_count AS "
            "SELECT provider_id, count(*) AS slots FROM care_journey.care_slot "
            "GROUP BY provider_id"
        ],
        "table-prefix",
        "care_journey.slot_count",
        id="table-prefix-materialized-view",
    ),
    pytest.param(
        visit_with_fk("care_visit_provider_fk"),
        "fk-name",
        "care_journey.care_visit.care_visit_provider_fk",
        id="fk-name",
    ),
    pytest.param(
        visit_with_fk("care_visit_care_provider_fk", on_delete=""),
        "fk-on-delete",
        "care_journey.care_visit.care_visit_care_provider_fk",
        id="fk-on-delete-default",
    ),
    pytest.param(
        visit_with_fk("care_visit_care_provider_fk", index=False),
        "fk-index",
        "care_journey.care_visit.care_visit_care_provider_fk",
        id="fk-index-missing",
    ),
]


@pytest.mark.parametrize(("bad_object", "rule", "object_name"), BREACHES)
async def test_lint_reports_exactly_the_breach(
    fresh_database_url: str, bad_object: list[str], rule: str, object_name: str
) -> None:
    findings = await lint(fresh_database_url, [*CONFORMING, *bad_object])

    assert [(f.rule, f.object_name) for f in findings] == [(rule, object_name)], render(findings)
    assert str(findings[0]).startswith(f"{rule} {object_name}: ")
    assert findings[0].message


PARTITIONED = [
    *table(
        "care_reading",
        "provider_id uuid NOT NULL",
        "recorded_at timestamptz NOT NULL",
        primary_key="id, recorded_at",
        constraints=[fk_to_provider("care_reading_care_provider_fk", on_delete="CASCADE")],
        partition_by="RANGE (recorded_at)",
    ),
    # On the parent only: PostgreSQL cascades it to the partitions as relkind 'I'.
    "CREATE INDEX care_reading_provider_id_idx ON care_journey.care_reading (provider_id)",
    "CREATE TABLE care_journey.care_reading_p202601 PARTITION OF care_journey.care_reading "
    "FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')",
    "CREATE TABLE care_journey.care_reading_p202602 PARTITION OF care_journey.care_reading "
    "FOR VALUES FROM ('2026-02-01') TO ('2026-03-01')",
    # A reference to the partitioned table: PostgreSQL clones the FK once per partition.
    *table(
        "care_reading_note",
        "reading_id uuid NOT NULL",
        "reading_recorded_at timestamptz NOT NULL",
        constraints=[
            "CONSTRAINT care_reading_note_care_reading_fk "
            "FOREIGN KEY (reading_id, reading_recorded_at) "
            "REFERENCES care_journey.care_reading (id, recorded_at) ON DELETE CASCADE"
        ],
    ),
    # The FK's columns in the other order: an equality lookup on both uses it either way.
    "CREATE INDEX care_reading_note_reading_idx "
    "ON care_journey.care_reading_note (reading_recorded_at, reading_id)",
]


async def test_partitioned_table_with_id_first_composite_key_passes(
    fresh_database_url: str,
) -> None:
    findings = await lint(fresh_database_url, [*CONFORMING, *PARTITIONED])
    assert findings == [], render(findings)

    # The parent was linted and the partitions were not: a prefix nothing has shows which.
    findings = await lint(fresh_database_url, [], schemas={"care_journey": ("xx_",)})
    assert {f.object_name for f in findings} == {
        "care_journey.care_provider",
        "care_journey.care_slot",
        "care_journey.care_reading",
        "care_journey.care_reading_note",
    }, render(findings)


async def test_schema_out_of_scope_is_ignored(fresh_database_url: str) -> None:
    scratch = [
        "CREATE SCHEMA scratch",
        'CREATE TABLE scratch."Scratch" ("ID" integer PRIMARY KEY, owner_id uuid '
        "REFERENCES care_journey.care_provider (id))",
    ]
    findings = await lint(fresh_database_url, [*CONFORMING, *scratch])
    assert findings == [], render(findings)

    findings = await lint(fresh_database_url, [], schemas={"scratch": ("scratch_",)})
    assert findings, "the same table is reported once its schema is in scope"
    assert all(f.object_name.startswith("scratch.") for f in findings), render(findings)


async def test_hypertable_may_key_on_id_and_time(fresh_database_url: str) -> None:
    """TimescaleDB (absent here) lists hypertables in its own catalog; a stand-in with the
    same schema, table and column names shows the lint reads it and exempts only those."""
    readings = [
        "CREATE SCHEMA _timescaledb_catalog",
        "CREATE TABLE _timescaledb_catalog.hypertable (schema_name name, table_name name)",
        *table(
            "care_vital",
            "recorded_at timestamptz NOT NULL",
            primary_key="id, recorded_at",
        ),
        *table(
            "care_vital_copy",
            "recorded_at timestamptz NOT NULL",
            primary_key="id, recorded_at",
        ),
        "INSERT INTO _timescaledb_catalog.hypertable VALUES ('care_journey', 'care_vital')",
    ]
    findings = await lint(fresh_database_url, [*CONFORMING, *readings])
    assert [(f.rule, f.object_name) for f in findings] == [
        ("primary-key", "care_journey.care_vital_copy")
    ], render(findings)
