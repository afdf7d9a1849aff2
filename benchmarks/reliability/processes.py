"""Engine processes run the way an orchestrator runs them, for the tests and the
reliability harness that stop, kill and restart them under load: each ``saga run ...`` a
process of its own with its output (JSON lines) in a file, serving its probes on a port
it picks itself and logs, and probed on /ready before work is sent to it."""

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[2]


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
    """Named engine processes sharing one database, broker and topic prefix: ``base`` is
    the environment they all run with (DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS, ...)."""

    base: Mapping[str, str]
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
                **self.base,
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

    def kill(self, name: str) -> None:
        """SIGKILL the process, as a crash would: nothing it held is finished or handed back."""
        engine = self.processes[name]
        assert engine.process is not None
        engine.process.kill()
        engine.process.wait(10)

    def running(self, name: str) -> bool:
        process = self.processes[name].process
        return process is not None and process.poll() is None

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


def log_events(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a process's output (other lines are ignored)."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events
