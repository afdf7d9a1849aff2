"""The ``saga`` command: ``saga db ...`` for migrations, lint and seeds; ``saga demo``;
``saga run coordinator|participant|worker|all`` and ``saga health``, its probe; the
operators' ``saga ls|show|stats|definitions``, ``saga retry|compensate|skip|abort`` and
``saga signal``; ``saga web``, their web console, and ``saga web token ...``, its sign-in
tokens; ``saga topics ...`` for the engine's Kafka topics.

Every failure is one line on stderr and a non-zero exit: 1 when the work found a problem
(lint findings, a refused migration), 2 when the command or configuration was wrong.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from saga.cli import act, db, demo, health, inspect, run, signal, topics, web
from saga.errors import ConfigurationError, SagaError

EXIT_PROBLEM = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saga",
        description="AUSTA saga engine: migrations, seeds, the demo, the engine's "
        "processes, and operators' commands to inspect and act on sagas.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    db.add_parser(commands)
    demo.add_parser(commands)
    run.add_parser(commands)
    health.add_parser(commands)
    inspect.add_parser(commands)
    act.add_parser(commands)
    signal.add_parser(commands)
    web.add_parser(commands)
    topics.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
