"""The ``saga`` command lists its commands without importing them (issue 21: ``saga
--help`` answers at once), and the list says what each command's own parser says."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from saga.cli import COMMANDS, build_parser, main

# What a command's run may need and ``saga --help`` must not pay for.
HEAVY = ("saga.coordinator", "sqlalchemy", "asyncpg", "aiokafka", "alembic", "starlette")


def summaries(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {choice.dest: choice.help for choice in commands._choices_actions}


def test_the_listed_summaries_are_the_commands_own() -> None:
    listed = {command.name: command.summary for command in COMMANDS}
    assert summaries(build_parser()) == listed
    assert summaries(build_parser(loaded=())) == listed


def imported_after(argv: list[str]) -> set[str]:
    script = (
        "import sys\n"
        "from saga.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('\\n'.join(sys.modules))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    return set(found.stdout.splitlines())


def test_help_imports_no_command() -> None:
    modules = imported_after(["--help"])
    assert "saga.cli.inspect" not in modules
    assert not {name for name in modules if name.split(".")[0] in HEAVY or name in HEAVY}


@pytest.mark.parametrize(("command", "module"), [("ls", "saga.cli.inspect"), ("db", "saga.cli.db")])
def test_a_command_imports_its_own_module_only(command: str, module: str) -> None:
    modules = imported_after([command, "--help"])
    assert module in modules
    others = {f"saga.cli.{c.module}" for c in COMMANDS} - {module}
    assert not modules & others, modules & others


def test_an_unknown_command_is_named_with_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bogus"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in error
    assert "'ls'" in error
