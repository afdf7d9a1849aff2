"""``saga db restore-drill``: back the saga tables up, restore them into a scratch database
and compare them table by table (:mod:`saga.operator.restore_drill`).

Exit 0 when every table came back identical, 1 when one did not (named on stderr) or a
step failed, 2 when the tools or the configuration are missing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from saga.errors import SettingsError
from saga.logging import configure_logging
from saga.operator.render import duration_text, print_table
from saga.operator.restore_drill import DrillResult, mismatched, run_drill
from saga.settings import load_settings


def add_parser(sub: Any) -> None:
    drill = sub.add_parser(
        "restore-drill",
        help="back up the saga tables, restore them into a scratch database and compare",
        description="Dump the saga tables of DATABASE_URL (pg_dump of one snapshot), "
        "restore them into a new database migrated to the same revision, and compare row "
        "counts and checksums per table. Exit 0 when all match, 1 otherwise.",
    )
    drill.add_argument(
        "--keep",
        action="store_true",
        help="keep the restored database for inspection (default: drop it)",
    )
    drill.add_argument(
        "--target",
        metavar="NAME",
        help="name of the database to restore into; it must not exist "
        "(default: saga_restore_drill_<UTC time>_<random>)",
    )
    drill.add_argument(
        "--dump-file",
        metavar="PATH",
        type=Path,
        help="write the dump here and keep it (default: a temporary file, deleted)",
    )
    drill.add_argument(
        "--pg-bin",
        metavar="DIR",
        type=Path,
        help="the directory of the pg_dump and pg_restore to use (default: the first as new "
        "as the server on PATH, /usr/lib/postgresql/*/bin, the embedded wheel)",
    )
    drill.set_defaults(handler=_restore_drill)


def _restore_drill(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings)
    if settings.database_url is None:
        raise SettingsError({"DATABASE_URL": "expected the database whose saga tables to drill"})
    result = asyncio.run(
        run_drill(
            settings.database_url,
            target=args.target,
            keep=args.keep,
            dump_file=args.dump_file,
            pg_bin=args.pg_bin,
        )
    )
    report(result)
    failed = mismatched(result.comparisons)
    if failed:
        print(
            f"saga: error: restore drill failed: {', '.join(failed)} did not come back identical",
            file=sys.stderr,
        )
        return 1
    return 0


def report(result: DrillResult) -> None:
    dump = str(result.dump_path) if result.dump_path else "temporary file, deleted"
    print(
        f"restore drill of {result.source_database} at revision {result.revision}, "
        f"snapshot {result.snapshot}, "
        f"pg_dump/pg_restore {result.tools.major} ({result.tools.pg_dump.parent})"
    )
    print(
        f"dumped {_size(result.dump_bytes)} in {duration_text(result.dump_seconds)} ({dump}); "
        f"migrated and restored {result.target} in {duration_text(result.restore_seconds)}; "
        f"compared in {duration_text(result.verify_seconds)}"
    )
    print()
    print_table(
        [
            {
                "table": line.table,
                "rows source": line.source_rows,
                "rows restored": line.restored_rows,
                "checksum": "match" if line.checksum_match else "DIFFERS",
            }
            for line in result.comparisons
        ],
        ["table", "rows source", "rows restored", "checksum"],
    )
    print()
    rows = sum(line.source_rows for line in result.comparisons)
    verdict = "passed" if result.passed else "FAILED"
    where = f"kept: {result.target}" if result.kept else "restored database dropped"
    print(f"restore drill {verdict}: {len(result.comparisons)} tables, {rows} rows ({where})")


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count / 1024 / 1024:.1f} MiB"
