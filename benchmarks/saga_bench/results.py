"""The figures of one level, as printed and written to JSON."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ProcessFigures:
    name: str
    pid: int | None
    cpu_seconds: float
    """User + system CPU during the measured run (warm-up excluded)."""
    cpu_seconds_total: float | None
    """Since the process started (set-up and warm-up included)."""
    peak_rss_mb: float | None
    """VmHWM, read just before the process was told to stop."""
    exit_code: int | None = None
    killed: bool = False
    log_lines: int | None = None
    """Lines the process logged at WARNING or above (slow queries, retries, errors)."""


@dataclass
class KindFigures:
    """The outcomes and latencies of one saga definition's measured sagas."""

    definition: str
    sagas: int
    completed: int
    compensated: int
    parked: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    refusals: dict[str, int] = field(default_factory=dict)
    """Why the compensated ones were refused: ``step: reason`` and how many."""


@dataclass
class InvariantFigures:
    """``journeys.invariants.check_invariants`` over the level's measured sagas."""

    checked: int
    violations: int
    first_violations: list[str]
    sagas_by_status: dict[str, int]
    parked: int
    parked_errors: list[str]
    seconds: float


@dataclass
class LevelResult:
    level: int
    sagas: int
    warmup: int
    seconds: float
    """First start to last finish, by the database's clock."""
    sagas_per_second: float
    """Finished (completed or compensated) sagas per second."""
    completed_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    completed_p50_ms: float | None
    compensated_p50_ms: float | None
    completed: int
    compensated: int
    parked: int
    unfinished: int
    commits_per_saga: float
    """pg_stat_database.xact_commit of the benchmark database over the services' whole
    life (warm-up included), less the benchmark's own polling, per saga run."""
    rollbacks_per_saga: float
    messages_per_saga: float
    """Records keyed by a measured saga, on every topic of the run, per saga (counted by
    reading the topics after the run)."""
    messages_by_topic: dict[str, int]
    end_offset_messages_per_saga: float
    """The sum of every topic's end offsets grown during the measured run, per saga: the
    same figure as Kafka reports it. Tansu's end offsets fall behind under concurrent
    producers (seen here: 10,184 for 10,240 records), so this reads a little low."""
    end_offsets_grown: dict[str, int]
    machine_cpu_busy_percent: float
    other_cpu_seconds: float
    """Busy CPU seconds of the machine during the run spent neither by the benchmark's
    processes nor by the PostgreSQL server: other work, which skews every figure."""
    pool_size: int
    driver_seconds: float
    """The driver's own clock around the closed loop (includes its last poll)."""
    polls: int
    processes: list[ProcessFigures]
    postgres_cpu_by_client: dict[str, float]
    """PostgreSQL CPU seconds during the run, by the client its backend served."""
    parked_errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    machine_busy_before_percent: float | None = None
    """The machine's CPU use, from all work, in the 2 s before the level started."""
    poll_ms: float | None = None
    kinds: list[KindFigures] = field(default_factory=list)
    invariants: InvariantFigures | None = None
    """Only for workloads that check the journeys' invariants."""
    idle_cpu_percent: dict[str, float] | None = None
    """Level 1 only: percent of one core each service, the broker and the PostgreSQL
    server used while no saga ran (the driver left out), and their total."""
