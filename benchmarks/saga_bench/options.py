"""The command line: what to run, and the figures derived from it per level."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import saga_bench
from benchmarks.saga_bench.constants import CONNECTION_BUDGET, RESULTS, WORKLOADS


@dataclass
class Options:
    levels: list[int]
    sagas: int
    alone: int
    warmup: int
    pool: int | None
    poll_ms: float | None
    fetch_max_wait_ms: int | None
    partitions: int | None
    stall_seconds: float
    logs: Path
    keep_database: bool = False
    profile: Path | None = None
    pg_settings: list[str] = field(default_factory=list)
    quiet_percent: float = 25.0
    quiet_wait: float = 300.0
    workload: str = "synthetic"
    with_worker: bool = False
    idle_seconds: float = 10.0
    """After level 1's run, the CPU of the quiet stack is measured over this long."""


def poll_interval(level: int, options: Options) -> float:
    """Seconds between completion polls: 5 ms, longer at high levels (level/16 ms), where
    the query's cost grows with the sagas in flight and sagas take seconds anyway. The
    latencies come from the database's timestamps, so polling only paces the loop."""
    return (options.poll_ms or max(5.0, level / 16)) / 1000


def pool_for(level: int, options: Options, processes: int) -> int:
    """Connections per process: ``processes`` pools (the services' and the driver's) share
    CONNECTION_BUDGET of max_connections (100 by default), so 12 each for the synthetic
    workload's five, 10 for the journeys workload's six."""
    return options.pool or max(2, min(level, CONNECTION_BUDGET // processes))


def parse_setting(text: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_.]*=[A-Za-z0-9_.-]+", text):
        raise argparse.ArgumentTypeError("expected name=value, e.g. plan_cache_mode=auto")
    return text


def parse_levels(text: str) -> list[int]:
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError("levels are positive integers, e.g. 1,16,64")
    return levels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(saga_bench.__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--workload",
        choices=WORKLOADS,
        default="synthetic",
        help="synthetic: BENCH_SAGA and benchmarks.saga_services (the default); journeys: "
        "the three cross-journey sagas and the real journey services, invariants checked",
    )
    parser.add_argument(
        "--with-worker",
        action="store_true",
        help="also run `saga run worker` (every job on its default schedule) beside the services",
    )
    parser.add_argument("--levels", type=parse_levels, default=[1, 16, 64, 128, 256])
    parser.add_argument("--sagas", type=int, default=2000, help="per level above 1")
    parser.add_argument("--alone", type=int, default=200, help="sagas at level 1")
    parser.add_argument("--warmup", type=int, default=20, help="per level, not measured")
    parser.add_argument("--pool", type=int, default=None, help="connections per process")
    parser.add_argument(
        "--poll-ms",
        type=float,
        default=None,
        help="completion poll interval (default 5 ms, level/16 ms above level 80)",
    )
    parser.add_argument("--fetch-max-wait-ms", type=int, default=None)
    parser.add_argument("--partitions", type=int, default=None)
    parser.add_argument("--stall-seconds", type=float, default=60.0)
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="default benchmarks/results/sagas.json (journeys: sagas-journeys.json)",
    )
    parser.add_argument(
        "--keep-database", action="store_true", help="leave each level's database behind"
    )
    parser.add_argument(
        "--pg-set",
        type=parse_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="ALTER DATABASE ... SET NAME = VALUE on each level's database (repeatable)",
    )
    parser.add_argument(
        "--quiet-percent",
        type=float,
        default=25.0,
        help="before each level, wait until the machine is less busy than this (CPU %%)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=300.0, help="seconds to wait for that at most"
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="after level 1, measure the quiet stack's CPU over this long (0: not at all)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="profile the services (cProfile, CPU time) into DIR/level-N-<name>.prof; slower",
    )
    return parser


def parse_options(argv: Sequence[str] | None = None) -> tuple[Options, Path]:
    """The options, and where the JSON report goes."""
    args = build_parser().parse_args(argv)
    journeys = args.workload == "journeys"
    json_path: Path = args.json or RESULTS / ("sagas-journeys.json" if journeys else "sagas.json")
    options = Options(
        levels=args.levels,
        sagas=args.sagas,
        alone=args.alone,
        warmup=max(2, args.warmup),
        pool=args.pool,
        poll_ms=args.poll_ms,
        fetch_max_wait_ms=args.fetch_max_wait_ms,
        partitions=args.partitions,
        stall_seconds=args.stall_seconds,
        logs=json_path.parent / ("sagas-journeys-logs" if journeys else "sagas-logs"),
        keep_database=args.keep_database,
        profile=args.profile,
        pg_settings=args.pg_set,
        quiet_percent=args.quiet_percent,
        quiet_wait=args.quiet_wait,
        workload=args.workload,
        with_worker=args.with_worker,
        idle_seconds=args.idle,
    )
    return options, json_path
