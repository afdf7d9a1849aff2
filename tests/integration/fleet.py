"""Engine processes run the way an orchestrator runs them, for tests that stop, kill and
restart them under load: each ``saga run ...`` a process of its own with its output in a
file, its /ready probed before work is sent, and a mixed load of the three cross-journey
sagas (the benchmark's journey mix) to keep them busy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import asyncpg

from benchmarks.saga_bench.journey_mix import plan_mix, starters
from benchmarks.saga_bench.journey_scene import build_scene
from benchmarks.saga_bench.workload import Starter
from saga.coordinator import Coordinator
from saga.store import Database
from saga.store.driver import DriverConnection
from tests.conftest import REPO_ROOT
from tests.integration.conftest import SagaEnvironment

FINISHED = ("completed", "compensated", "aborted")


def probe(port: int, endpoint: str = "ready") -> tuple[int, dict[str, Any]]:
    """One GET of a process's /ready or /live: the status and the JSON report."""
    url = f"http://127.0.0.1:{port}/{endpoint}"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@dataclass
class EngineProcess:
    name: str
    argv: list[str]
    log: Path
    environ: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    """Where this run serves /metrics, /live and /ready: it picks a free port itself
    (METRICS_PORT=0, so no other process can take it in between) and logs it."""
    process: subprocess.Popen[bytes] | None = None
    output: IO[bytes] | None = None
    runs: int = 0

    def output_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def served_port(self) -> int | None:
        """The port this run logged it serves on, once it has."""
        this_run = self.output_text().rsplit(f"=== run {self.runs} ===", 1)[-1]
        for event in log_events(this_run):
            if event.get("event") == "endpoints_serving":
                return int(event["port"])
        return None


@dataclass
class Fleet:
    """Named engine processes on one test's database, broker and topics."""

    env: SagaEnvironment
    logs: Path
    environ: dict[str, str] = field(default_factory=dict)
    processes: dict[str, EngineProcess] = field(default_factory=dict)

    def add(self, name: str, *argv: str, environ: dict[str, str] | None = None) -> EngineProcess:
        """A process ``saga *argv``; ``environ`` adds to (or overrides) its environment."""
        engine = EngineProcess(name, list(argv), self.logs / f"{name}.log", environ=environ or {})
        self.processes[name] = engine
        return engine

    def start(self, name: str) -> None:
        engine = self.processes[name]
        if engine.process is not None and engine.process.poll() is None:
            raise AssertionError(f"{name} is already running")
        engine.runs += 1
        engine.port = None
        if engine.output is not None:
            engine.output.close()
        engine.output = engine.log.open("ab")
        engine.output.write(f"=== run {engine.runs} ===\n".encode())
        engine.output.flush()
        engine.process = subprocess.Popen(
            [sys.executable, "-m", "saga", *engine.argv],
            cwd=REPO_ROOT,
            env={
                **self.env.process_environment(),
                "LOG_LEVEL": "INFO",
                "LOG_FORMAT": "json",
                **self.environ,
                **engine.environ,
                "METRICS_PORT": "0",
            },
            stdout=engine.output,
            stderr=engine.output,
        )

    async def wait_ready(self, *names: str, within: float = 60) -> None:
        """Until each process's /ready answers 200 (its consumers joined their groups)."""
        deadline = time.monotonic() + within
        for name in names or tuple(self.processes):
            engine = self.processes[name]
            while True:
                assert engine.process is not None
                if engine.process.poll() is not None:
                    raise AssertionError(f"{name} exited with {engine.process.returncode}")
                if engine.port is None:
                    engine.port = engine.served_port()
                if engine.port is not None:
                    with contextlib.suppress(OSError, ValueError):
                        status, _ = await asyncio.to_thread(probe, engine.port)
                        if status == 200:
                            break
                if time.monotonic() > deadline:
                    raise AssertionError(f"{name} not ready within {within} s")
                await asyncio.sleep(0.1)

    async def terminate(self, name: str, within: float) -> tuple[int, float]:
        """SIGTERM the process; its exit code and the seconds it took to exit."""
        engine = self.processes[name]
        assert engine.process is not None
        started = time.monotonic()
        engine.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(engine.process.wait, within)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} still running {within} s after SIGTERM") from None
        return code, time.monotonic() - started

    def stop_all(self) -> None:
        for engine in self.processes.values():
            if engine.process is not None and engine.process.poll() is None:
                engine.process.kill()
            if engine.process is not None:
                engine.process.wait(10)
            if engine.output is not None:
                engine.output.close()

    def describe(self) -> str:
        """The end of every process's output, for a failure message."""
        return "\n".join(
            f"--- {name} ---\n{engine.output_text()[-4000:]}"
            for name, engine in self.processes.items()
        )


@contextlib.contextmanager
def fleet(env: SagaEnvironment, logs: Path, **environ: str) -> Iterator[Fleet]:
    """A fleet whose processes are killed on the way out; on failure each one's output
    is printed."""
    running = Fleet(env, logs, dict(environ))
    try:
        yield running
    except BaseException:
        print(running.describe())
        raise
    finally:
        running.stop_all()


def log_events(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a process's output (other lines are ignored)."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


async def prepare_mix(env: SagaEnvironment, sagas: int) -> list[Starter]:
    """The rows ``sagas`` mixed sagas act on, and a starter for each (bookings, claims and
    goal completions; some are refused and compensate)."""
    mix = plan_mix(sagas)
    conn = await asyncpg.connect(env.database_url)
    try:
        scene = await build_scene(conn, mix.size)
    finally:
        await conn.close()
    return starters(mix, scene)


async def start_all(
    coordinator: Coordinator, starting: Sequence[Starter], per_second: float
) -> list[uuid.UUID]:
    """Start each saga in turn at about ``per_second``, so the load spans the test."""
    ids = []
    for start in starting:
        ids.append(await start(coordinator))
        await asyncio.sleep(1 / per_second)
    return ids


async def count_finished(database: Database, ids: Sequence[uuid.UUID]) -> int:
    async def count(conn: DriverConnection) -> int:
        found = await conn.fetchval(
            "SELECT count(*) FROM shared.saga_instance WHERE id = ANY($1::uuid[]) "
            "AND status::text = ANY($2::text[])",
            list(ids),
            list(FINISHED),
        )
        return int(found)

    return await database.run_driver(count, transaction=False)


async def wait_finished(database: Database, ids: Sequence[uuid.UUID], within: float) -> None:
    deadline = time.monotonic() + within
    while (done := await count_finished(database, ids)) < len(ids):
        if time.monotonic() > deadline:
            raise AssertionError(f"only {done} of {len(ids)} sagas finished within {within} s")
        await asyncio.sleep(0.2)


async def wait_some_finished(database: Database, ids: Sequence[uuid.UUID], count: int) -> None:
    """Until ``count`` of the sagas started so far have finished: the load is under way."""
    deadline = time.monotonic() + 60
    while await count_finished(database, ids) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} sagas finished within 60 s")
        await asyncio.sleep(0.05)
