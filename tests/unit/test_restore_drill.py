"""The restore drill's comparison, its target names and its report: no database, no tools."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from saga.cli.restore_drill import report
from saga.errors import ConfigurationError
from saga.operator.restore_drill import (
    DrillResult,
    Figures,
    PgTools,
    TableFigures,
    check_target,
    compare,
    default_target,
    mismatched,
)

SOURCE = Figures(
    "20261125181000",
    (
        TableFigures("shared.saga_definition", 3, "aa"),
        TableFigures("shared.saga_instance", 10, "bb"),
        TableFigures("shared.saga_step_log", 40, "cc"),
    ),
)


def restored(**changes: tuple[int, str]) -> Figures:
    """SOURCE with some tables' (rows, checksum) replaced; ``None`` drops a table."""
    tables = []
    for figures in SOURCE.tables:
        short = figures.table.removeprefix("shared.")
        if short in changes:
            rows, checksum = changes[short]
            tables.append(TableFigures(figures.table, rows, checksum))
        else:
            tables.append(figures)
    return Figures(SOURCE.revision, tuple(tables))


def test_identical_figures_match() -> None:
    comparisons = compare(SOURCE, restored())
    assert [line.table for line in comparisons] == [t.table for t in SOURCE.tables]
    assert all(line.matches for line in comparisons)
    assert mismatched(comparisons) == []


def test_a_missing_row_is_named() -> None:
    [line] = [c for c in compare(SOURCE, restored(saga_step_log=(39, "cd"))) if not c.matches]
    assert (line.table, line.source_rows, line.restored_rows) == ("shared.saga_step_log", 40, 39)
    assert not line.checksum_match


def test_an_altered_row_is_named_though_the_counts_agree() -> None:
    comparisons = compare(SOURCE, restored(saga_instance=(10, "bx")))
    assert mismatched(comparisons) == ["shared.saga_instance"]


def test_the_same_checksum_with_another_count_does_not_match() -> None:
    assert mismatched(compare(SOURCE, restored(saga_definition=(4, "aa")))) == [
        "shared.saga_definition"
    ]


def test_a_table_the_restored_side_lacks_does_not_match() -> None:
    lacking = Figures(SOURCE.revision, SOURCE.tables[:2])
    [line] = [c for c in compare(SOURCE, lacking) if not c.matches]
    assert (line.table, line.restored_rows) == ("shared.saga_step_log", None)


@pytest.mark.parametrize(
    "name", ["Drill", "drill-1", "1drill", 'x"; DROP DATABASE y; --', "", "d" * 64]
)
def test_a_target_that_is_no_plain_database_name_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match="--target"):
        check_target(name, "austa")


def test_the_source_database_is_never_the_target() -> None:
    with pytest.raises(ConfigurationError, match="source database itself"):
        check_target("austa", "austa")


def test_the_default_target_is_a_valid_new_name() -> None:
    name = default_target(datetime(2026, 11, 25, 3, 4, 5, tzinfo=UTC))
    assert name.startswith("saga_restore_drill_20261125030405_")
    assert check_target(name, "austa") == name
    assert default_target() != default_target()


def test_the_report_names_what_differs(capsys: pytest.CaptureFixture[str]) -> None:
    result = DrillResult(
        source_database="austa",
        target="saga_restore_drill_x",
        revision=SOURCE.revision or "",
        snapshot="00000003-0000001B-1",
        tools=PgTools(Path("/usr/bin/pg_dump"), Path("/usr/bin/pg_restore"), 15),
        dump_path=None,
        dump_bytes=2048,
        comparisons=compare(SOURCE, restored(saga_step_log=(39, "cd"))),
        dump_seconds=0.2,
        restore_seconds=1.5,
        verify_seconds=0.05,
        kept=True,
    )
    report(result)
    out = capsys.readouterr().out
    assert re.search(r"^shared\.saga_step_log\s+40\s+39\s+DIFFERS$", out, re.MULTILINE)
    assert re.search(r"^shared\.saga_instance\s+10\s+10\s+match$", out, re.MULTILINE)
    assert "restore drill FAILED: 3 tables, 53 rows (kept: saga_restore_drill_x)" in out
    assert "dumped 2.0 KiB in 200 ms" in out
