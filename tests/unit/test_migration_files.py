"""Every revision follows the guide's naming rule and forms one linear history."""

from __future__ import annotations

import importlib
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from saga.errors import MigrationNameError
from saga.store import migrate

VERSIONS = migrate.migrations_dir() / "versions"
FILE_NAME = re.compile(r"^(\d{14})_(add|update|remove)_[a-z0-9_]+\.py$")


def revision_files() -> list[Path]:
    return sorted(p for p in VERSIONS.glob("*.py") if p.name != "__init__.py")


def test_there_are_revisions() -> None:
    assert revision_files()


@pytest.mark.parametrize("path", revision_files(), ids=lambda p: p.name)
def test_revision_file_is_named_and_identified_by_its_timestamp(path: Path) -> None:
    match = FILE_NAME.match(path.name)
    assert match, f"{path.name} must be YYYYMMDDHHMMSS_add_|update_|remove_<what>.py"
    module = importlib.import_module(f"migrations.versions.{path.stem}")
    assert module.revision == match.group(1)
    datetime.strptime(match.group(1), "%Y%m%d%H%M%S")  # a real timestamp
    assert callable(module.upgrade)
    assert callable(module.downgrade)


def test_history_is_linear_in_timestamp_order() -> None:
    previous: str | None = None
    for path in revision_files():
        module = importlib.import_module(f"migrations.versions.{path.stem}")
        assert module.down_revision == previous, f"{path.name} should revise {previous}"
        previous = module.revision
    assert previous == migrate.head_revision()


@pytest.mark.parametrize("name", ["create_table", "add-table", "Add_x", "add_", "update"])
def test_new_revision_refuses_names_outside_the_rule(name: str) -> None:
    with pytest.raises(MigrationNameError, match="must be snake_case and start with add_"):
        migrate.new_revision(name)


def test_new_revision_creates_a_timestamped_file(tmp_path: Path) -> None:
    path = migrate.new_revision(
        "add_claim_status_index",
        now=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        versions_dir=tmp_path,
    )
    assert path == tmp_path / "20300102030405_add_claim_status_index.py"
    text = path.read_text()
    assert 'revision = "20300102030405"' in text
    assert f'down_revision: str | None = "{migrate.head_revision()}"' in text
    assert text.startswith('"""add claim status index')
