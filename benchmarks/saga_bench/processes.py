"""The service processes and the broker's: starting, stopping, and what /proc and
psutil say about them (CPU seconds, peak memory)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchmarks.saga_bench.constants import IDLE_TIMEOUT_MS, REPO_ROOT, STOP_TIMEOUT
from benchmarks.saga_bench.loop import Stalled
from benchmarks.saga_bench.options import Options
from saga.embedded import EmbeddedBroker

# ``python -c PROFILED OUT MODULE ARGS...``: run MODULE as __main__ under cProfile, timed
# by the process's CPU clock (on a saturated machine wall time mostly measures waiting
# for a core), and write the stats to OUT when it exits.
PROFILED = """
import cProfile, runpy, sys, time
out, module, *args = sys.argv[1:]
sys.argv = [module, *args]
profiler = cProfile.Profile(time.process_time)
try:
    profiler.runcall(runpy.run_module, module, run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    profiler.dump_stats(out)
"""


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


class Services:
    """The coordinator and the participants, as child processes."""

    def __init__(self) -> None:
        self.running: list[Service] = []
        self.outcomes: dict[str, tuple[int | None, bool]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, *argv],
                cwd=REPO_ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.running.append(Service(name, process, log))
        self.logs[name] = log

    def pids(self) -> dict[str, int]:
        return {service.name: service.process.pid for service in self.running}

    def check_alive(self) -> None:
        for service in self.running:
            code = service.process.poll()
            if code is not None:
                raise Stalled(
                    f"the {service.name} process exited with code {code}; its log "
                    f"({service.log_path}) ends:\n{tail(service.log_path)}"
                )

    def stop(self, timeout: float = STOP_TIMEOUT) -> dict[str, tuple[int | None, bool]]:
        """SIGTERM every process, wait up to ``timeout`` s, kill what is left. Returns
        each one's exit code and whether it had to be killed."""
        for service in self.running:
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for service in self.running:
            killed = False
            try:
                service.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
                killed = True
            self.outcomes[service.name] = (service.process.returncode, killed)
        self.running = []
        return self.outcomes


def service_env(
    url: str, bootstrap: str, prefix: str, pool: int, options: Options
) -> dict[str, str]:
    env = {
        **os.environ,
        "APP_ENV": "test",
        "DATABASE_URL": url,
        "DATABASE_POOL_SIZE": str(pool),
        "DATABASE_MAX_OVERFLOW": "0",
        "DATABASE_CONNECTION_TIMEOUT": "10000",
        # No recycling mid-run: a backend that lives through the run has its CPU counted.
        "DATABASE_IDLE_TIMEOUT": str(IDLE_TIMEOUT_MS),
        "DATABASE_LOG_QUERIES": "false",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC_PREFIX": prefix,
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }
    if options.fetch_max_wait_ms is not None:
        env["KAFKA_FETCH_MAX_WAIT_MS"] = str(options.fetch_max_wait_ms)
    if options.partitions is not None:
        env["KAFKA_TOPIC_PARTITIONS"] = str(options.partitions)
    return env


def start_services(
    services: Services,
    level: int,
    commands: Mapping[str, Sequence[str]],
    env: Mapping[str, str],
    options: Options,
) -> None:
    """Each of ``commands`` (name: ``python -m`` argv) as a child process."""
    for name, (module, *args) in commands.items():
        argv = ["-m", module, *args]
        if options.profile is not None:
            options.profile.mkdir(parents=True, exist_ok=True)
            out = options.profile / f"level-{level}-{name}.prof"
            argv = ["-c", PROFILED, str(out), module, *args]
        services.start(name, argv, env, options.logs / f"level-{level}-{name}.log")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def count_lines(path: Path) -> int | None:
    try:
        return len(path.read_bytes().splitlines())
    except OSError:
        return None


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (the resident set's high-water mark) in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def postgres_cpu_seconds(postmaster: int | None) -> float | None:
    """The server's CPU: the postmaster, its live children and the ones it reaped."""
    if postmaster is None:
        return None
    try:
        root = psutil.Process(postmaster)
        times = root.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in root.children():
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
    except psutil.Error:
        return None
    return total


def broker_pid(broker: EmbeddedBroker) -> int | None:
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if f"tcp://{broker.bootstrap_servers}" in " ".join(child.cmdline()):
                return child.pid
    return None
