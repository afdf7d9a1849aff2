"""The journeys and the examples are the engine's first users: they may import the engine
only through its public modules, ``saga`` and ``saga.testing``, and never the drivers the
engine hides (asyncpg, aiokafka). A private name they need is a name to make public."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
USERS = ("journeys", "examples")
PUBLIC = frozenset({"saga", "saga.testing"})
# The engine translates these drivers' errors and wraps their objects; a user that needs
# one of them has found a hole in the public API. (SQLAlchemy Core stays allowed: seeders
# write their SQL with it on the connection the engine hands them.)
HIDDEN_DRIVERS = frozenset({"asyncpg", "aiokafka"})


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every module a file imports, with its line: ``from a.b import c`` imports ``a.b``
    and, when ``a.b.c`` is a module, that too, so ``from saga import store`` counts."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def violations(source: str, filename: str) -> list[str]:
    """What a file imports that a user of the engine may not, one line per import."""
    problems: list[str] = []
    for line, module in imported_modules(ast.parse(source, filename)):
        top = module.split(".", 1)[0]
        if top == "saga" and module not in PUBLIC and _is_saga_module(module):
            problems.append(
                f"{filename}:{line}: imports the private module {module!r}; "
                "import the name from 'saga' (or 'saga.testing') instead"
            )
        elif top in HIDDEN_DRIVERS:
            problems.append(
                f"{filename}:{line}: imports {top!r}; the engine hides its drivers "
                "(use saga.Connection, saga.Row and the saga errors)"
            )
    return sorted(set(problems))


def _is_saga_module(dotted: str) -> bool:
    """``saga.x.y`` names a module or package of the engine (``saga.Step`` does not)."""
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def user_files() -> list[Path]:
    return sorted(path for folder in USERS for path in (ROOT / folder).rglob("*.py"))


def test_there_are_user_files_to_check() -> None:
    files = {path.relative_to(ROOT).parts[0] for path in user_files()}
    assert files == set(USERS)


@pytest.mark.parametrize("path", user_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_users_import_only_the_public_api(path: Path) -> None:
    problems = violations(path.read_text(), str(path.relative_to(ROOT)))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "source",
    [
        "from saga.store.driver import DriverConnection",
        "import saga.store.driver",
        "from saga import store",
        "from saga.participant import StepContext",
        "import asyncpg",
        "from asyncpg import exceptions",
        "from aiokafka import AIOKafkaProducer",
        "def f():\n    from saga.machine import SagaStatus\n",
    ],
)
def test_a_private_import_is_reported(source: str) -> None:
    assert violations(source, "journeys/example.py")


@pytest.mark.parametrize(
    "source",
    [
        "from saga import Connection, Step, UniqueViolation",
        "import saga",
        "from saga.testing import run_saga",
        "import saga.testing",
        "from sqlalchemy import column, table",
        "from journeys.care.sagas import BOOK_APPOINTMENT",
    ],
)
def test_a_public_import_passes(source: str) -> None:
    assert violations(source, "journeys/example.py") == []
