"""From what a level read to its figures: latency percentiles, outcomes, commits and
messages per saga, and where the CPU went."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil

from benchmarks.saga_bench.constants import STOP_TIMEOUT
from benchmarks.saga_bench.processes import count_lines, cpu_seconds, postgres_cpu_seconds
from benchmarks.saga_bench.results import KindFigures, LevelResult, ProcessFigures


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class CpuSnapshot:
    processes: dict[str, float | None]
    machine_busy: float
    machine_total: float

    backends: dict[int, tuple[str, float]] = field(default_factory=dict)
    """Each PostgreSQL backend on the benchmark database: its client and CPU seconds."""

    @classmethod
    def take(
        cls,
        pids: Mapping[str, int | None],
        postmaster: int | None,
        backends: Mapping[int, str] | None = None,
    ) -> CpuSnapshot:
        figures = {name: cpu_seconds(pid) if pid else None for name, pid in pids.items()}
        figures["postgres"] = postgres_cpu_seconds(postmaster)
        machine = psutil.cpu_times()
        idle = machine.idle + getattr(machine, "iowait", 0.0)
        # guest time is already counted in user time
        total = sum(machine) - getattr(machine, "guest", 0.0) - getattr(machine, "guest_nice", 0.0)
        by_backend = {}
        for pid, client in (backends or {}).items():
            seconds = cpu_seconds(pid)
            if seconds is not None:
                by_backend[pid] = (client, seconds)
        return cls(figures, total - idle, total, by_backend)


def backend_cpu_by_client(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """PostgreSQL CPU seconds during the run, by the application_name of the client the
    backend serves (a backend that ended during the run is missed)."""
    totals: dict[str, float] = {}
    for pid, (client, seconds) in after.backends.items():
        earlier = before.backends.get(pid)
        spent = seconds - earlier[1] if earlier is not None else seconds
        totals[client] = round(totals.get(client, 0.0) + spent, 2)
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def busy_other(busy: float, processes: Sequence[ProcessFigures]) -> float:
    """``busy`` CPU seconds (all cores) less those the benchmark's processes spent."""
    return busy - sum(p.cpu_seconds for p in processes)


@dataclass
class Measured:
    ids: list[uuid.UUID]
    rows: list[asyncpg.Record]
    problems: list[str]
    driver_seconds: float
    polls: int
    polls_total: int
    messages_before: dict[str, int]
    messages_after: dict[str, int]
    messages_counted: dict[str, int]
    cpu_before: CpuSnapshot
    cpu_after: CpuSnapshot
    peak_rss: dict[str, float | None]
    pids: dict[str, int | None]
    own_statements: int
    """Statements of the benchmark's own look-ups, besides the polls."""
    idle_cpu_percent: dict[str, float] | None = None


# Seconds of quiet before the idle stack is measured: long enough for every consumer to
# have gone to its longest fetch wait (saga.transport.consumer).
IDLE_SETTLE_SECONDS = 5.0


async def idle_cpu_percent(
    pids: Mapping[str, int | None], postmaster: int | None, seconds: float
) -> dict[str, float]:
    """Percent of one core each process, and the whole PostgreSQL server, used over
    ``seconds`` while no saga runs (after IDLE_SETTLE_SECONDS of quiet), and their total."""
    await asyncio.sleep(IDLE_SETTLE_SECONDS)
    before = CpuSnapshot.take(pids, postmaster)
    await asyncio.sleep(seconds)
    after = CpuSnapshot.take(pids, postmaster)
    used: dict[str, float] = {}
    for name, start in before.processes.items():
        end = after.processes.get(name)
        if start is not None and end is not None:
            used[name] = round(100 * (end - start) / seconds, 2)
    used["total"] = round(sum(used.values()), 2)
    return used


def latency_ms(row: asyncpg.Record) -> float:
    return float((row["finished_at"] - row["started_at"]).total_seconds() * 1000)


def p50_of(finished: Sequence[asyncpg.Record], status: str) -> float | None:
    samples = [latency_ms(r) for r in finished if r["status"] == status]
    return round(percentile(samples, 0.5), 2) if samples else None


def refusal(error: str | None) -> str:
    """``step 'x' failed: slot taken: the slot is held`` as ``x: slot taken``."""
    text = error or "(no error)"
    step = ""
    if text.startswith("step '") and "' failed: " in text:
        step, text = text[len("step '") :].split("' failed: ", 1)
        step += ": "
    return step + text.split(":", 1)[0].strip()


def kind_figures(rows: Sequence[asyncpg.Record]) -> list[KindFigures]:
    """Outcomes, latency and refusals per saga definition, by name."""
    kinds: list[KindFigures] = []
    for name in sorted({str(r["definition_name"]) for r in rows}):
        mine = [r for r in rows if r["definition_name"] == name]
        finished = [r for r in mine if r["status"] in ("completed", "compensated")]
        latencies = [latency_ms(r) for r in finished]
        refusals: dict[str, int] = {}
        for r in mine:
            if r["status"] == "compensated":
                reason = refusal(r["error"])
                refusals[reason] = refusals.get(reason, 0) + 1

        def pct(q: float, latencies: list[float] = latencies) -> float | None:
            return round(percentile(latencies, q), 2) if latencies else None

        kinds.append(
            KindFigures(
                definition=name,
                sagas=len(mine),
                completed=sum(1 for r in mine if r["status"] == "completed"),
                compensated=sum(1 for r in mine if r["status"] == "compensated"),
                parked=sum(1 for r in mine if r["status"] == "parked"),
                p50_ms=pct(0.50),
                p95_ms=pct(0.95),
                p99_ms=pct(0.99),
                refusals=dict(sorted(refusals.items(), key=lambda item: -item[1])),
            )
        )
    return kinds


def run_seconds(rows: Sequence[asyncpg.Record]) -> float:
    """The first saga's start to the last one's end, by the database's clock."""
    ends = [r["finished_at"] or r["updated_at"] for r in rows if r["status"] != "running"]
    if not (rows and ends):
        return 0.0
    return float((max(ends) - min(r["started_at"] for r in rows)).total_seconds())


def process_figures(
    measured: Measured, stops: Mapping[str, tuple[int | None, bool]], logs: Mapping[str, Path]
) -> list[ProcessFigures]:
    before, after = measured.cpu_before, measured.cpu_after
    processes = []
    services = [name for name in measured.pids if name not in ("driver", "broker")]
    for name in (*services, "driver", "broker", "postgres"):
        cpu_a, cpu_b = after.processes.get(name), before.processes.get(name)
        exit_code, killed = stops.get(name, (None, False))
        processes.append(
            ProcessFigures(
                name=name,
                pid=measured.pids.get(name),
                cpu_seconds=round(cpu_a - cpu_b, 2)
                if cpu_a is not None and cpu_b is not None
                else 0.0,
                cpu_seconds_total=round(cpu_a, 2) if cpu_a is not None else None,
                peak_rss_mb=measured.peak_rss.get(name),
                exit_code=exit_code,
                killed=killed,
                log_lines=count_lines(logs[name]) if name in logs else None,
            )
        )
    return processes


def problems_of(
    measured: Measured,
    stops: Mapping[str, tuple[int | None, bool]],
    *,
    compensated: int,
    expected_compensated: int | None,
    parked: int,
    unfinished: int,
) -> list[str]:
    problems = list(measured.problems)
    for name, (code, killed) in stops.items():
        if killed:
            problems.append(f"{name} did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM: killed")
        elif code != 0:
            problems.append(f"{name} exited with code {code}")
    if parked:
        problems.append(f"{parked} saga(s) parked")
    if expected_compensated is not None and compensated != expected_compensated:
        problems.append(f"{compensated} compensated, {expected_compensated} were told to fail")
    if unfinished:
        problems.append(f"{unfinished} saga(s) did not finish")
    return problems


def summarize(
    level: int,
    measured: Measured,
    *,
    warmup: int,
    pool: int,
    commits: int,
    rollbacks: int,
    stops: Mapping[str, tuple[int | None, bool]],
    logs: Mapping[str, Path],
    expected_compensated: int | None,
) -> LevelResult:
    rows = measured.rows
    finished = [r for r in rows if r["status"] in ("completed", "compensated")]
    latencies = [latency_ms(r) for r in finished]
    seconds = run_seconds(rows)
    count = {s: sum(1 for r in rows if r["status"] == s) for s in ("completed", "compensated")}
    parked = [r for r in rows if r["status"] == "parked"]
    sagas = len(measured.ids)
    ran = sagas + warmup
    grown = {
        topic: measured.messages_after.get(topic, 0) - measured.messages_before.get(topic, 0)
        for topic in measured.messages_after
    }
    counted = measured.messages_counted
    before, after = measured.cpu_before, measured.cpu_after
    processes = process_figures(measured, stops, logs)
    unfinished = sagas - len(finished) - len(parked)
    problems = problems_of(
        measured,
        stops,
        compensated=count["compensated"],
        expected_compensated=expected_compensated,
        parked=len(parked),
        unfinished=unfinished,
    )
    busy = after.machine_busy - before.machine_busy
    by_client = backend_cpu_by_client(before, after)
    server = next(p.cpu_seconds for p in processes if p.name == "postgres")
    # Background processes (WAL writer, autovacuum, ...), ended backends, other databases.
    by_client["(rest of the server)"] = round(server - sum(by_client.values()), 2)
    total = after.machine_total - before.machine_total
    return LevelResult(
        level=level,
        sagas=sagas,
        warmup=warmup,
        seconds=round(seconds, 3),
        sagas_per_second=round(len(finished) / seconds, 1) if seconds else 0.0,
        completed_per_second=round(count["completed"] / seconds, 1) if seconds else 0.0,
        p50_ms=round(percentile(latencies, 0.50), 2),
        p95_ms=round(percentile(latencies, 0.95), 2),
        p99_ms=round(percentile(latencies, 0.99), 2),
        max_ms=round(max(latencies, default=float("nan")), 2),
        completed_p50_ms=p50_of(finished, "completed"),
        compensated_p50_ms=p50_of(finished, "compensated"),
        completed=count["completed"],
        compensated=count["compensated"],
        parked=len(parked),
        unfinished=unfinished,
        commits_per_saga=round(commits / ran, 2) if ran else 0.0,
        rollbacks_per_saga=round(rollbacks / ran, 3) if ran else 0.0,
        messages_per_saga=round(sum(counted.values()) / sagas, 2) if sagas else 0.0,
        messages_by_topic=counted,
        end_offset_messages_per_saga=round(sum(grown.values()) / sagas, 2) if sagas else 0.0,
        end_offsets_grown=grown,
        machine_cpu_busy_percent=round(100 * busy / total, 1) if total else 0.0,
        other_cpu_seconds=round(busy_other(busy, processes), 2),
        pool_size=pool,
        driver_seconds=round(measured.driver_seconds, 3),
        polls=measured.polls,
        processes=processes,
        postgres_cpu_by_client=by_client,
        parked_errors=sorted({str(r["error"]) for r in parked})[:5],
        problems=problems,
        kinds=kind_figures(rows),
    )
