"""``saga db restore-drill`` against sagas really run into every state.

The module's database holds two sagas that finished and were moved to the archive tables
by the real retention job, then the operator scene (``tests/integration/operator_scene.py``:
completed, compensated, parked, compensating and running sagas). The drill runs on it as
an operator runs it, a process of its own, keeping the restored copy; the tests then
compare that copy with the source row by row themselves, not through the drill's figures.
Further tests run the drill while sagas are moving and as a role that is no superuser,
and check its refusals (no client tools, an unmigrated source).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from saga.coordinator import Coordinator
from saga.errors import ConfigurationError
from saga.operator.restore_drill import (
    candidate_bin_dirs,
    compare,
    embedded_bin_dir,
    figures_of,
    find_pg_tools,
    mismatched,
)
from saga.settings import Settings, load_settings, to_plain_url
from saga.store import Database, admin, migrate
from saga.worker.jobs.retention import SAGA_RETENTION
from saga.worker.scheduler import Worker
from tests.conftest import REPO_ROOT, drop_owner_role
from tests.integration.conftest import SagaEnvironment, open_saga_environment
from tests.integration.operator_scene import build
from tests.integration.sagas import BOOKING, FAST_RELAY, cluster, create_effect_tables

pytestmark = pytest.mark.integration

# Written out, not imported: a table dropped from the drill's list must fail the tests.
SAGA_TABLES = (
    "shared.saga_definition",
    "shared.saga_instance",
    "shared.saga_step_log",
    "shared.saga_outbox",
    "shared.saga_instance_archive",
    "shared.saga_step_log_archive",
)
STATES = {"completed", "compensated", "parked", "compensating", "running"}
"""What the scene leaves in ``shared.saga_instance``; the archive holds finished ones."""


@dataclass(frozen=True)
class Drilled:
    env: SagaEnvironment
    restored_url: str
    archived: list[uuid.UUID]
    run: subprocess.CompletedProcess[str]


def drill(env: SagaEnvironment, *argv: str) -> subprocess.CompletedProcess[str]:
    """``saga db restore-drill *argv`` as a process, on ``env``'s database."""
    return subprocess.run(
        [sys.executable, "-m", "saga", "db", "restore-drill", *argv],
        cwd=REPO_ROOT,
        env=env.process_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def database_exists(admin_url: str, name: str) -> bool:
    async def check() -> bool:
        conn = await asyncpg.connect(to_plain_url(admin_url))
        try:
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name
                )
            )
        finally:
            await conn.close()

    return asyncio.run(check())


async def fetch(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(to_plain_url(url))
    try:
        return [dict(row) for row in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def execute(url: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(to_plain_url(url))
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


def reported_rows(stdout: str) -> dict[str, tuple[int, int, str]]:
    """The drill's table: table -> (rows source, rows restored, checksum)."""
    found = {}
    for line in stdout.splitlines():
        match = re.fullmatch(r"(shared\.\w+)\s+(\d+)\s+(\d+|-)\s+(match|DIFFERS)", line)
        if match:
            restored = -1 if match[3] == "-" else int(match[3])
            found[match[1]] = (int(match[2]), restored, match[4])
    return found


async def archive_two_finished_sagas(env: SagaEnvironment) -> list[uuid.UUID]:
    """One completed and one compensated saga, moved to the archive tables by the real
    retention job (told to keep finished sagas for a tenth of a second)."""
    await create_effect_tables(env.database)
    async with cluster(env.settings, env.database, env.bootstrap) as running:
        coordinator = running.coordinators[0]
        sagas = [
            await coordinator.start(BOOKING, {"n": 100}),
            await coordinator.start(BOOKING, {"refuse": "award"}),
        ]
        for saga_id in sagas:
            await coordinator.wait(saga_id, timeout=20)
    await asyncio.sleep(0.2)
    worker = Worker(
        settings=env.settings.model_copy(update={"retention_saga_days": 0.1 / 86400}),
        database=env.database,
        journeys=[],
        jobs=[SAGA_RETENTION],
        bootstrap_servers=env.bootstrap,
    )
    try:
        await worker.run_job(SAGA_RETENTION.name)
    finally:
        await worker.close()
    return sagas


async def _open(
    settings: Settings, admin_url: str, template: str, bootstrap: str, name: str
) -> tuple[SagaEnvironment, list[uuid.UUID]]:
    env = await open_saga_environment(settings, admin_url, template, bootstrap, name)
    try:
        archived = await archive_two_finished_sagas(env)
        await build(env)
        return env, archived
    finally:
        # The tests run in loops of their own: nothing may stay bound to this one.
        await env.database.dispose()


@pytest.fixture(scope="module")
def drilled(
    settings: Settings,
    admin_database_url: str,
    template_database_name: str,
    kafka_bootstrap_servers: str,
) -> Iterator[Drilled]:
    name = f"austa_test_drill_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    target = f"{name}_restored"
    try:
        env, archived = asyncio.run(
            _open(
                settings, admin_database_url, template_database_name, kafka_bootstrap_servers, name
            )
        )
        run = drill(env, "--keep", "--target", target)
        yield Drilled(env, admin.with_database(admin_database_url, target), archived, run)
    finally:
        asyncio.run(admin.drop_database(admin_database_url, target))
        asyncio.run(admin.drop_database(admin_database_url, name))


@pytest.mark.embedded
def test_the_drill_passes_and_reports_every_saga_table(drilled: Drilled) -> None:
    assert drilled.run.returncode == 0, drilled.run.stderr
    assert drilled.run.stderr == ""
    reported = reported_rows(drilled.run.stdout)
    assert list(reported) == list(SAGA_TABLES)
    for table in SAGA_TABLES:
        [count] = asyncio.run(fetch(drilled.env.database_url, f"SELECT count(*) FROM {table}"))
        assert reported[table] == (count["count"], count["count"], "match"), table
    assert f"kept: {make_url(drilled.restored_url).database}" in drilled.run.stdout


def test_every_saga_and_step_log_row_comes_back(drilled: Drilled) -> None:
    """Read both databases whole and compare them row by row, every column, by id."""
    assert drilled.run.returncode == 0, drilled.run.stderr
    source, restored = drilled.env.database_url, drilled.restored_url
    states = asyncio.run(fetch(source, "SELECT DISTINCT status FROM shared.saga_instance"))
    assert {row["status"] for row in states} == STATES
    archived = asyncio.run(fetch(source, "SELECT id FROM shared.saga_instance_archive"))
    assert sorted(row["id"] for row in archived) == sorted(drilled.archived)

    for table in SAGA_TABLES:
        mine = asyncio.run(fetch(source, f"SELECT * FROM {table} ORDER BY id"))
        theirs = asyncio.run(fetch(restored, f"SELECT * FROM {table} ORDER BY id"))
        assert mine, f"{table} is empty in the source: the comparison would prove nothing"
        assert [row["id"] for row in theirs] == [row["id"] for row in mine], table
        for before, after in zip(mine, theirs, strict=True):
            assert after == before, f"{table} row {before['id']}"


def test_a_missing_or_altered_row_is_reported(drilled: Drilled, admin_database_url: str) -> None:
    """The figures catch what the row-by-row comparison above would: a copy of the
    restored database with one step-log row deleted and one saga's context changed."""
    assert drilled.run.returncode == 0, drilled.run.stderr
    copy = f"{make_url(drilled.restored_url).database}_damaged"

    async def damage_and_compare() -> None:
        template = make_url(drilled.restored_url).database
        url = await admin.create_database(admin_database_url, copy, template=template)
        [parked] = await fetch(url, "SELECT id FROM shared.saga_instance WHERE status = 'parked'")
        await execute(
            url,
            "DELETE FROM shared.saga_step_log WHERE id = "
            "(SELECT id FROM shared.saga_step_log WHERE saga_instance_id = $1 LIMIT 1)",
            parked["id"],
        )
        await execute(
            url,
            "UPDATE shared.saga_instance SET context = context || '{\"x\": 1}' WHERE id = $1",
            parked["id"],
        )
        source = await figures_of(drilled.env.database_url)
        damaged = await figures_of(url)
        comparisons = {line.table: line for line in compare(source, damaged)}
        assert mismatched(list(comparisons.values())) == [
            "shared.saga_instance",
            "shared.saga_step_log",
        ]
        step_log = comparisons["shared.saga_step_log"]
        assert step_log.restored_rows == step_log.source_rows - 1
        instance = comparisons["shared.saga_instance"]
        assert instance.restored_rows == instance.source_rows
        assert not instance.checksum_match
        # And the untouched copy still matches: the difference is the damage alone.
        assert not mismatched(compare(source, await figures_of(drilled.restored_url)))

    try:
        asyncio.run(damage_and_compare())
    finally:
        asyncio.run(admin.drop_database(admin_database_url, copy))


def test_without_keep_the_restored_database_is_dropped_and_the_dump_kept(
    drilled: Drilled, admin_database_url: str, tmp_path: Path
) -> None:
    target = f"austa_test_drill_{uuid.uuid4().hex[:8]}"
    dump = tmp_path / "saga.dump"
    ran = drill(drilled.env, "--target", target, "--dump-file", str(dump))
    assert ran.returncode == 0, ran.stderr
    assert "restored database dropped" in ran.stdout
    assert not database_exists(admin_database_url, target)
    [version] = asyncio.run(fetch(drilled.env.database_url, "SHOW server_version_num"))
    tools = find_pg_tools(int(version["server_version_num"]) // 10000, candidate_bin_dirs())
    listing = subprocess.run(
        [str(tools.pg_restore), "--list", str(dump)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    entries = [line.split()[3:6] for line in listing.splitlines() if not line.startswith(";")]
    # Data only, the saga tables and nothing else; parents before children.
    assert entries == [["TABLE", "DATA", "shared"]] * len(SAGA_TABLES)
    tables = [
        f"shared.{line.split()[6]}" for line in listing.splitlines() if not line.startswith(";")
    ]
    assert sorted(tables) == sorted(SAGA_TABLES)
    assert tables.index("shared.saga_definition") < tables.index("shared.saga_instance")
    assert tables.index("shared.saga_instance") < tables.index("shared.saga_step_log")


def test_missing_client_tools_are_a_one_line_usage_error(
    drilled: Drilled, admin_database_url: str, tmp_path: Path
) -> None:
    target = f"austa_test_drill_{uuid.uuid4().hex[:8]}"
    ran = drill(drilled.env, "--target", target, "--pg-bin", str(tmp_path))
    assert ran.returncode == 2
    assert ran.stdout == ""
    assert ran.stderr.count("\n") == 1
    assert "pg_dump and pg_restore not found" in ran.stderr
    assert not database_exists(admin_database_url, target)


@pytest.mark.embedded
def test_an_unmigrated_source_is_a_one_line_usage_error(fresh_database_url: str) -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "saga", "db", "restore-drill"],
        cwd=REPO_ROOT,
        env={**os.environ, "APP_ENV": "test", "DATABASE_URL": fresh_database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 2
    assert (ran.stdout, ran.stderr) == (
        "",
        "saga: error: the source database is not migrated: run `saga db upgrade` first\n",
    )


def test_the_client_tools_must_be_as_new_as_the_server(tmp_path: Path) -> None:
    """pg_dump refuses a server newer than itself: the drill picks tools that will not."""
    wheel = embedded_bin_dir()
    assert wheel is not None, "the embedded wheel (the dev extra) is not installed"
    tools = find_pg_tools(15, [tmp_path, wheel])
    assert (tools.pg_dump, tools.pg_restore) == (wheel / "pg_dump", wheel / "pg_restore")
    assert tools.major >= 15
    with pytest.raises(
        ConfigurationError, match=rf"pg_dump {tools.major} \(.+\) cannot dump a PostgreSQL 99"
    ):
        find_pg_tools(99, [wheel])
    with pytest.raises(ConfigurationError, match="pg_dump and pg_restore not found"):
        find_pg_tools(15, [tmp_path])


async def test_the_drill_holds_while_sagas_keep_moving(saga_env: SagaEnvironment) -> None:
    """Sagas start and move throughout the drill: its figures and its dump still agree,
    because both read the snapshot the drill exported. (Without ``--snapshot`` pg_dump
    sees rows committed after the figures were read, and this fails.)"""
    await create_effect_tables(saga_env.database)
    async with cluster(saga_env.settings, saga_env.database, saga_env.bootstrap) as running:
        coordinator = running.coordinators[0]
        for n in range(20):
            await coordinator.start(BOOKING, {"n": n})
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            *("saga", "db", "restore-drill"),
            cwd=REPO_ROOT,
            env=saga_env.process_environment(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        drilling = asyncio.ensure_future(process.communicate())

        async def keep_starting() -> int:
            started = 0
            while not drilling.done():
                await coordinator.start(BOOKING, {"n": started})
                started += 1
            return started

        # Several at once, so that commits land between any two steps of the drill.
        started = sum(await asyncio.gather(*(keep_starting() for _ in range(4))))
        out, err = await drilling
    assert process.returncode == 0, out.decode() + err.decode()
    reported = reported_rows(out.decode())
    [now] = await fetch(saga_env.database_url, "SELECT count(*) FROM shared.saga_instance")
    # Sagas kept starting after the snapshot: the drill really ran on a moving database.
    assert started > 0
    assert now["count"] > reported["shared.saga_instance"][0]


@contextlib.asynccontextmanager
async def owner_database(admin_url: str) -> AsyncIterator[str]:
    """A database owned and migrated by a role that may create databases and nothing
    more, the way a managed PostgreSQL hands one out; dropped with its role after."""
    suffix = uuid.uuid4().hex[:8]
    role, name = f"austa_test_drill_owner_{suffix}", f"austa_test_drill_owned_{suffix}"
    await admin.execute_on(admin_url, f"CREATE ROLE {role} LOGIN CREATEDB")
    try:
        await admin.execute_on(admin_url, f"CREATE DATABASE {name} OWNER {role}")
        try:
            url = str(
                make_url(admin.with_database(admin_url, name))
                .set(username=role)
                .render_as_string(hide_password=False)
            )
            await asyncio.to_thread(migrate.upgrade, url)
            yield url
        finally:
            await admin.drop_database(admin_url, name)
    finally:
        # The drill's scratch database is dropped by the drill; if it was not, DROP ROLE
        # fails here on what the role still owns, and says so.
        await drop_owner_role(admin_url, role)


@pytest.mark.embedded
async def test_the_drill_needs_no_superuser(
    settings: Settings, admin_database_url: str, kafka_bootstrap_servers: str
) -> None:
    async with owner_database(admin_database_url) as url:
        assert (await fetch(url, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))[0][
            "rolsuper"
        ] is False
        own = load_settings(env_dir=REPO_ROOT, kafka_topic_prefix=f"test.{uuid.uuid4().hex[:10]}")
        database = Database.from_settings(own, url=url, application_name="tests")
        try:
            # Nobody serves the journeys: the sagas stay in flight, their rows written.
            async with Coordinator(
                settings=own,
                database=database,
                bootstrap_servers=kafka_bootstrap_servers,
                relay=FAST_RELAY,
            ) as coordinator:
                for n in range(3):
                    await coordinator.start(BOOKING, {"n": n})
        finally:
            await database.dispose()
        env = SagaEnvironment(own, database, url, kafka_bootstrap_servers)
        ran = await asyncio.to_thread(drill, env)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert reported_rows(ran.stdout)["shared.saga_instance"] == (3, 3, "match")
