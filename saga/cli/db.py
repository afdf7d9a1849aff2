"""``saga db``: upgrade, downgrade, offline SQL, new revisions, the schema lint, seeds, and
``setup``, the deployment's one-shot migrate job (upgrade, seed, service role passwords)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from alembic.util.exc import CommandError

from saga.cli import restore_drill
from saga.errors import ConfigurationError, SettingsError
from saga.logging import configure_logging
from saga.settings import AppEnv, Settings, load_settings
from saga.store import migrate

log = structlog.get_logger("saga.cli")


def add_parser(commands: Any) -> None:
    db = commands.add_parser("db", help="migrations, schema lint and seed data")
    sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")

    up = sub.add_parser("upgrade", help="apply migrations (to head by default)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(handler=_upgrade)

    down = sub.add_parser("downgrade", help="revert migrations (one step by default)")
    down.add_argument("revision", nargs="?", default="-1", help="target, e.g. -1 or base")
    down.set_defaults(handler=_downgrade)

    sql = sub.add_parser("sql", help="print the SQL of an upgrade for review; touches no db")
    sql.add_argument("--from", dest="from_revision", default=None, help="start after this")
    sql.add_argument("--to", dest="to_revision", default="head")
    sql.add_argument(
        "--downgrade", action="store_true", help="print the downgrade SQL --from → --to instead"
    )
    sql.set_defaults(handler=_sql)

    new = sub.add_parser("new", help="create an empty revision file (create only)")
    new.add_argument("--name", required=True, help="add_..., update_... or remove_...")
    new.set_defaults(handler=_new)

    lint = sub.add_parser("lint", help="check the migrated schema against the database guide")
    lint.set_defaults(handler=_lint)

    seed = sub.add_parser("seed", help="load reference data (and sample data in development)")
    samples = seed.add_mutually_exclusive_group()
    samples.add_argument("--samples", dest="samples", action="store_true", default=None)
    samples.add_argument("--no-samples", dest="samples", action="store_false")
    seed.set_defaults(handler=_seed)

    current = sub.add_parser("current", help="show the database's revision and the head")
    current.set_defaults(handler=_current)

    setup = sub.add_parser(
        "setup",
        help="the deployment's migrate job: upgrade to head, seed, set the service roles' "
        "passwords from DB_PASSWORD_<ROLE>",
        description="Upgrade to head, load the seed data (samples only in development), then "
        "set the password of every service role (each journey's and the coordinator's) from "
        "DB_PASSWORD_<ROLE>, e.g. DB_PASSWORD_AUSTA_CARE_JOURNEY. An unset variable leaves "
        "its role as it is; with APP_ENV=production it is an error, before anything changes. "
        "Safe to run again.",
    )
    setup.set_defaults(handler=_setup)

    restore_drill.add_parser(sub)


def _settings() -> Settings:
    settings = load_settings()
    configure_logging(settings)
    return settings


def _database_url(settings: Settings) -> str:
    if settings.database_url is None:
        raise SettingsError(
            {
                "DATABASE_URL": "expected the database to work on; it is not set "
                "(`make demo` runs everything on an embedded server instead)"
            }
        )
    return settings.database_url


@contextmanager
def _alembic_errors() -> Iterator[None]:
    try:
        yield
    except CommandError as exc:
        raise ConfigurationError(f"alembic: {exc}") from exc


def _upgrade(args: argparse.Namespace) -> int:
    settings = _settings()
    url = _database_url(settings)
    with _alembic_errors():
        migrate.upgrade(url, args.revision)
    print(f"upgraded to {args.revision}")
    return 0


def _downgrade(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings.app_env is AppEnv.PRODUCTION and args.revision == "base":
        raise ConfigurationError("refusing `downgrade base` with APP_ENV=production")
    url = _database_url(settings)
    with _alembic_errors():
        migrate.downgrade(url, args.revision)
    print(f"downgraded to {args.revision}")
    return 0


def _sql(args: argparse.Namespace) -> int:
    with _alembic_errors():
        if args.downgrade:
            if args.from_revision is None:
                raise ConfigurationError("--downgrade needs --from (the revision to start at)")
            sys.stdout.write(migrate.offline_downgrade_sql(args.from_revision, args.to_revision))
        else:
            sys.stdout.write(migrate.offline_sql(args.from_revision, args.to_revision))
    return 0


def _new(args: argparse.Namespace) -> int:
    with _alembic_errors():
        path = migrate.new_revision(args.name)
    print(f"created {path}; write its upgrade and downgrade, then review with `saga db sql`")
    return 0


def _lint(args: argparse.Namespace) -> int:
    from saga.store.lint import lint_schema

    settings = _settings()
    findings = asyncio.run(_with_connection(settings, lint_schema))
    for finding in findings:
        print(finding)
    if findings:
        print(f"{len(findings)} finding(s)", file=sys.stderr)
        return 1
    print("schema lint: no findings")
    return 0


def _seed(args: argparse.Namespace) -> int:
    _run_seeders(_settings(), args.samples)
    return 0


def _run_seeders(settings: Settings, samples: bool | None) -> None:
    """Seed, with sample data when asked or, by default, in development; print the report."""
    from saga.store.seeding import discover_seeders, run_seeders

    samples = samples if samples is not None else settings.app_env is AppEnv.DEVELOPMENT
    seeders = discover_seeders()

    async def work(conn: Any) -> Any:
        return await run_seeders(conn, seeders, include_samples=samples)

    report = asyncio.run(_with_connection(settings, work, transaction=True))
    for name, tables in report.inserted.items():
        rows = ", ".join(f"{table}={count}" for table, count in tables.items() if count)
        print(f"{name}: {rows or 'nothing new'}")
    print(f"seeded {report.total} row(s){' including samples' if samples else ''}")


def _setup(args: argparse.Namespace) -> int:
    from saga.participant.journey import discover_journeys
    from saga.store import roles

    settings = _settings()
    url = _database_url(settings)
    journey_roles = [journey.database_role for journey in discover_journeys().values()]
    # Read (and in production require) every password first: a missing one stops the job
    # before the schema, the data or any role has changed.
    passwords = roles.read_passwords(
        roles.service_roles(journey_roles),
        os.environ,
        required=settings.app_env is AppEnv.PRODUCTION,
    )
    with _alembic_errors():
        migrate.upgrade(url, "head")
    print("upgraded to head")
    _run_seeders(settings, None)
    changed = asyncio.run(roles.apply_passwords(url, passwords))
    unchanged = [entry for entry in passwords if entry.password is None]
    for entry in passwords:
        event = "role_password_unchanged" if entry.password is None else "role_password_set"
        log.info(event, role=entry.role, variable=entry.variable)
    print(
        f"role passwords: {len(changed)} set"
        + (f"; left as they were: {', '.join(e.role for e in unchanged)}" if unchanged else "")
    )
    return 0


def _current(args: argparse.Namespace) -> int:
    settings = _settings()
    current = asyncio.run(_with_connection(settings, migrate.current_revision))
    print(f"database: {current or 'not migrated'}; head: {migrate.head_revision()}")
    return 0


async def _with_connection(settings: Settings, work: Any, *, transaction: bool = False) -> Any:
    from saga.store import Database
    from saga.store.errors import database_errors

    database = Database.from_settings(settings, url=_database_url(settings))
    try:
        with database_errors():
            async with database.engine.connect() as conn:
                if transaction:
                    async with conn.begin():
                        return await work(conn)
                return await work(conn)
    finally:
        await database.dispose()
