"""The ``saga`` command: ``saga db ...`` for migrations, lint and seeds; ``saga demo``;
``saga run coordinator|participant|worker|all`` and ``saga health``, its probe; the
operators' ``saga ls|show|stats|definitions``, ``saga retry|compensate|skip|abort`` and
``saga signal``; ``saga web``, their web console, and ``saga web token ...``, its sign-in
tokens; ``saga topics ...`` for the engine's Kafka topics.

Every failure is one line on stderr and a non-zero exit: 1 when the work found a problem
(lint findings, a refused migration), 2 when the command or configuration was wrong.

A command's module (and what it imports: the driver, the broker client, Alembic, the
coordinator) is imported only when that command runs or its help is asked for: ``saga
--help`` lists the commands from :data:`COMMANDS` alone, so it answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Collection, Sequence
from typing import NamedTuple

from saga.errors import ConfigurationError, SagaError

EXIT_PROBLEM = 1
EXIT_USAGE = 2


class Command(NamedTuple):
    name: str
    module: str
    """The module under saga.cli whose ``add_parser`` registers it (with its siblings)."""
    summary: str
    """The line ``saga --help`` shows; the module's own parser says the same (a unit test
    compares them)."""


COMMANDS = (
    Command("db", "db", "migrations, schema lint and seed data"),
    Command("demo", "demo", "run the demo on the embedded default"),
    Command("run", "run", "run an engine process until SIGTERM"),
    Command(
        "health", "health", "probe a running process's /ready (or /live) endpoint; exit 0 if OK"
    ),
    Command("ls", "inspect", "list sagas, newest first"),
    Command("show", "inspect", "one saga: its state and the timeline of every attempt"),
    Command("stats", "inspect", "sagas by status and step durations over a time window"),
    Command(
        "definitions", "inspect", "registered saga definitions and their sagas in flight or parked"
    ),
    Command("retry", "act", "send the current step (or compensation) again, one more attempt"),
    Command("compensate", "act", "undo what the saga did, from its current step back"),
    Command("skip", "act", "count the current step (or compensation) as done by hand"),
    Command("abort", "act", "stop the saga where it is, undoing nothing (a person takes over)"),
    Command(
        "signal", "signal", "deliver a signal to a saga that waits (or will wait) for an event"
    ),
    Command("web", "web", "serve the operators' web console; manage its sign-in tokens"),
    Command("topics", "topics", "list, describe, create or grow the engine's Kafka topics"),
)


def build_parser(loaded: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``saga`` parser. ``loaded``: the commands whose modules are imported and whose
    options are known (every command when None); the others are listed by name and
    summary only, enough for ``saga --help``."""
    parser = argparse.ArgumentParser(
        prog="saga",
        description="AUSTA saga engine: migrations, seeds, the demo, the engine's "
        "processes, and operators' commands to inspect and act on sagas.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {command.module for command in COMMANDS if loaded is None or command.name in loaded}
    registered: set[str] = set()
    for command in COMMANDS:
        if command.name in registered:
            continue
        if command.module in modules:
            importlib.import_module(f"saga.cli.{command.module}").add_parser(commands)
            registered.update(commands.choices)
        else:
            commands.add_parser(command.name, help=command.summary)
            registered.add(command.name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # The command is the first argument: ``saga`` itself takes no option but --help.
    parser = build_parser(loaded=arguments[:1])
    args = parser.parse_args(arguments)
    try:
        code: int = args.handler(args)
    except ConfigurationError as exc:
        print(f"saga: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SagaError as exc:
        print(f"saga: error: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
