"""``main``: every level in turn, then the tables and the JSON."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from types import FrameType

import psutil

from benchmarks.saga_bench.constants import REPO_ROOT
from benchmarks.saga_bench.database import admin_server
from benchmarks.saga_bench.level import run_level
from benchmarks.saga_bench.options import parse_options
from benchmarks.saga_bench.report import machine, print_tables, write_json
from benchmarks.saga_bench.results import LevelResult
from benchmarks.saga_bench.workloads import workload_for
from saga.logging import configure_logging
from saga.settings import load_settings


def wait_until_quiet(limit: float, max_wait: float) -> float:
    """Wait until the machine's CPU is less than ``limit`` % busy (other work running
    would skew every figure) or ``max_wait`` s pass; return the last reading."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = psutil.cpu_percent(interval=2.0)
        if busy < limit or time.monotonic() >= deadline:
            return busy
        print(f"  the machine is {busy:.0f}% busy with other work; waiting", flush=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    # As Ctrl-C: inside asyncio.run it cancels the running level, whose clean-up then runs;
    # elsewhere it raises KeyboardInterrupt. Either way every process is stopped.
    signal.raise_signal(signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    options, json_path = parse_options(argv)
    workload = workload_for(options)
    # Started in the background by a shell, SIGINT would be ignored: take it back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    defaults = load_settings(env_dir=REPO_ROOT)
    # The services log to files; here only errors, so the tables stay readable.
    configure_logging(load_settings(env_dir=REPO_ROOT, log_level="ERROR"))
    results: list[LevelResult] = []
    started = datetime.now(UTC)
    try:
        with admin_server() as admin_url:
            about = machine(admin_url)
            for level in options.levels:
                count = options.alone if level == 1 else options.sagas
                print(f"level {level}: {count} {workload.name} sagas ...", flush=True)
                quiet = wait_until_quiet(options.quiet_percent, options.quiet_wait)
                result = run_level(level, count, workload, options, admin_url)
                result.machine_busy_before_percent = quiet
                results.append(result)
                checked = result.invariants
                print(
                    f"level {level}: {result.sagas_per_second} sagas/s, "
                    f"p50 {result.p50_ms} ms, p99 {result.p99_ms} ms"
                    + (f", {checked.violations} invariant violation(s)" if checked else ""),
                    flush=True,
                )
    except KeyboardInterrupt:
        print("interrupted: the services, the broker and the database are gone", file=sys.stderr)
        return 130
    print()
    print_tables(results)
    write_json(
        json_path,
        results,
        started=started,
        about=about,
        options=options,
        defaults=defaults,
        workload=workload,
    )
    print(f"\nwrote {json_path}")
    return 0
