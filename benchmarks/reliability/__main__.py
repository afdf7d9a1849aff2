"""``python -m benchmarks.reliability``: the long form of the reliability suite.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python -m benchmarks.reliability --sagas 10000 --json results.json

Creates a database of its own on DATABASE_URL's server (an embedded one when unset),
migrates and seeds it, runs the harness (:mod:`benchmarks.reliability.harness`) with every
fault kind striking throughout, prints the report and drops the database. Exit 0 when the
run passed (nothing lost, nothing duplicated, every saga finished or parked with a reason,
no process crashed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import uuid
from pathlib import Path

from benchmarks.reliability.harness import Faults, RunSettings, run_reliability
from benchmarks.saga_bench.database import admin_server
from saga.logging import configure_logging
from saga.settings import load_settings
from saga.store import Database, admin, migrate
from saga.store.seeding import seed_reference


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__)
    parser.add_argument("--sagas", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=40.0, help="sagas started per second")
    parser.add_argument("--max-in-flight", type=int, default=300)
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--kill-every", type=float, default=8.0)
    parser.add_argument("--broker-restart-every", type=float, default=45.0)
    parser.add_argument("--pool-exhaustion-every", type=float, default=25.0)
    parser.add_argument("--backend-termination-every", type=float, default=3.0)
    parser.add_argument("--contention-every", type=float, default=0.5)
    parser.add_argument("--poison-every", type=float, default=2.0)
    parser.add_argument(
        "--no-fault",
        action="append",
        default=[],
        choices=[
            "kill",
            "broker_restart",
            "pool_exhaustion",
            "backend_termination",
            "contention",
            "poison",
            "duplicate_delivery",
        ],
        help="turn one fault kind off (repeatable)",
    )
    parser.add_argument("--json", type=Path, help="also write the report here as JSON")
    parser.add_argument("--logs", type=Path, help="keep the processes' output here")
    parser.add_argument("--keep-database", action="store_true")
    return parser.parse_args(argv)


def faults_from(args: argparse.Namespace) -> Faults:
    off = set(args.no_fault)

    def every(kind: str, value: float) -> float | None:
        return None if kind in off else value

    return Faults(
        kill=every("kill", args.kill_every),
        broker_restart=every("broker_restart", args.broker_restart_every),
        pool_exhaustion=every("pool_exhaustion", args.pool_exhaustion_every),
        backend_termination=every("backend_termination", args.backend_termination_every),
        contention=every("contention", args.contention_every),
        poison=every("poison", args.poison_every),
        duplicate_delivery="duplicate_delivery" not in off,
    )


async def prepared_database(admin_url: str, name: str) -> str:
    url = await admin.create_database(admin_url, name)
    await asyncio.to_thread(migrate.upgrade, url)
    database = Database.from_settings(load_settings(), url=url, application_name="reliability")
    try:
        await seed_reference(database)
    finally:
        await database.dispose()
    return url


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # The harness's own lines (the starter's saga_started, ...) would drown the report,
    # and its own Kafka clients complain at every broker restart it causes on purpose.
    configure_logging(load_settings(log_level="WARNING"))
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    run = RunSettings(
        sagas=args.sagas,
        rate=args.rate,
        max_in_flight=args.max_in_flight,
        seed=args.seed,
        faults=faults_from(args),
        drain_timeout=args.drain_timeout,
    )
    name = f"austa_reliability_{uuid.uuid4().hex[:10]}"
    with admin_server() as admin_url, tempfile.TemporaryDirectory() as scratch:
        logs = args.logs or Path(scratch)
        logs.mkdir(parents=True, exist_ok=True)
        url = asyncio.run(prepared_database(admin_url, name))
        try:
            report = asyncio.run(
                run_reliability(run, database_url=url, admin_url=admin_url, logs=logs)
            )
        finally:
            if args.keep_database:
                print(f"kept database {name}", file=sys.stderr)
            else:
                asyncio.run(admin.drop_database(admin_url, name))
    print(report.render())
    if args.json is not None:
        args.json.write_text(report.to_json())
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
