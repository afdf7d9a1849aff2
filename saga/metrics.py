"""Prometheus metrics the engine's processes keep.

One registry per process (the default one): counters are process-local and Prometheus
sums them across processes. :func:`saga.health.serve_endpoints` serves ``/metrics`` on
METRICS_PORT, beside the probes.

Labels are bounded on purpose: definition, step, journey, action and outbox names come
from stored definitions and registered handlers, topics and partitions from the broker,
``reason_kind`` from a fixed set; never a saga id or a free-text reason.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from saga.machine import SagaStatus

# -- saga lifecycle -------------------------------------------------------------------------

SAGAS_STARTED = Counter(
    "saga_started",
    "Sagas started (a repeated start with a used idempotency key counts once)",
    ["definition"],
)
SAGAS_COMPLETED = Counter("saga_completed", "Sagas that ran every step", ["definition"])
SAGAS_COMPENSATED = Counter(
    "saga_compensated", "Sagas that failed and undid every completed step", ["definition"]
)
SAGAS_ABORTED = Counter(
    "saga_aborted", "Sagas an operator stopped with `saga abort` (no compensation)", ["definition"]
)
SAGAS_PARKED = Counter(
    "saga_parked",
    "Sagas parked for an operator (an alert: someone must look)",
    ["definition"],
)
STEP_TIMEOUTS = Counter(
    "saga_step_timeouts",
    "Step or compensation attempts that had no reply by their deadline",
    ["definition", "step", "phase"],
)
CHILD_CHECKS = Counter(
    "saga_child_checks",
    "Looks of a parent at the child saga it waits on, by what they found: waiting (the "
    "child has not ended), end_found (an end whose message never came: a broker lost it), "
    "asked_again (the child had not acted on the request to compensate, sent again), "
    "parked (the child is gone from the log)",
    ["definition", "found"],
)
SAGAS_EXPIRED = Counter(
    "saga_deadline_expired",
    "Sagas compensated (or parked) because they outran their overall deadline",
    ["definition"],
)

SAGAS_WAITING = Gauge(
    "saga_waiting",
    "Sagas waiting for a signal at an AwaitEvent (sampled by the worker)",
    ["definition"],
)
SAGAS_WAITING_OVERDUE = Gauge(
    "saga_waiting_overdue",
    "Waiting sagas past their wait's (or their own) deadline: the timeout worker is due "
    "to act (sampled by the worker)",
    ["definition"],
)
SIGNALS = Counter(
    "saga_signals",
    "Signals sent to sagas, by what became of them: accepted (the saga was waiting for "
    "it), kept (for a wait not reached yet), refused (finished saga, or an event its "
    "definition never waits for), repeated (a signal id sent before), conflict (a signal "
    "id reused for another signal)",
    ["definition", "event", "outcome"],
)


class SignalCount(StrEnum):
    ACCEPTED = "accepted"
    KEPT = "kept"
    REFUSED = "refused"
    REPEATED = "repeated"
    CONFLICT = "conflict"


def count_signal(definition: str, event: str, outcome: SignalCount, *, awaited: bool) -> None:
    """Count one signal for a saga of ``definition``. ``awaited`` says whether the
    definition waits for ``event`` (a bounded set of names); any other event is counted
    as ``other``, so a sender's typo cannot grow the series."""
    SIGNALS.labels(definition, event if awaited else "other", outcome.value).inc()


# -- step latency ---------------------------------------------------------------------------

STEP_SECONDS = Histogram(
    "saga_step_duration_seconds",
    "From an attempt's dispatch to its reply being applied by the coordinator",
    ["definition", "step", "phase", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
HANDLER_SECONDS = Histogram(
    "saga_participant_handler_seconds",
    "A participant's local transaction for one command (inbox check, handler, inbox and "
    "outbox writes, retries included), by how it was answered",
    ["journey", "action", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# -- outboxes and consumers -----------------------------------------------------------------

OUTBOX_BACKLOG = Gauge(
    "saga_outbox_backlog", "Unpublished rows in the outbox (sampled)", ["outbox"]
)
OUTBOX_OLDEST = Gauge(
    "saga_outbox_oldest_unpublished_seconds",
    "How long the oldest unpublished row has been due (0: none is; sampled)",
    ["outbox"],
)
OUTBOX_PUBLISH_LAG = Histogram(
    "saga_outbox_publish_lag_seconds",
    "From an outbox row being due (its commit, or the end of its retry backoff) to the "
    "broker acknowledging it",
    ["outbox"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CONSUMER_LAG = Gauge(
    "saga_consumer_lag_messages",
    "Records on an assigned partition not yet taken by this consumer (highwater - position)",
    ["group", "topic", "partition"],
)
DEAD_LETTERS = Counter(
    "saga_dead_letters",
    "Messages sent to the dead-letter topic, by their original topic and why: malformed "
    "(not a valid envelope), rejected (valid but unhandleable), oversize, exhausted "
    "(kept failing)",
    ["topic", "reason_kind"],
)

# -- database -------------------------------------------------------------------------------

DB_RETRIES = Counter(
    "saga_db_transaction_retries",
    "Transactions re-run after a serialization failure or deadlock, by unit of work",
    ["unit", "sqlstate"],
)
DB_SLOW_UNITS = Counter(
    "saga_db_slow_units",
    "Units of work (retries and the wait for a connection included) slower than "
    "DATABASE_SLOW_UNIT_THRESHOLD",
    ["unit"],
)
DB_SLOW_QUERIES = Counter(
    "saga_db_slow_queries",
    "Single statements slower than DATABASE_SLOW_QUERY_THRESHOLD (each is logged as slow_query)",
)
GROUP_COMMIT_WRITES = Histogram(
    "saga_db_group_commit_writes",
    "Writes committed together by one group commit (1: the write was alone), by unit",
    ["unit"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
STEP_DB_RETRIES = Gauge(
    "saga_step_db_retries_recent",
    "Serialization and deadlock retries per step over the retry monitor's window",
    ["journey", "step", "kind"],
)

# -- worker ---------------------------------------------------------------------------------

JOB_RUNS = Counter("saga_worker_job_runs", "Worker job runs", ["job"])
JOB_ROWS = Counter(
    "saga_worker_job_rows", "Rows a worker job acted on, by what it did", ["job", "what"]
)
JOB_FAILURES = Counter("saga_worker_job_failures", "Worker job runs that raised", ["job"])
JOB_SECONDS = Histogram(
    "saga_worker_job_duration_seconds",
    "Time one worker job run took",
    ["job"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# -- table maintenance (sampled by the worker's table_maintenance job) -----------------------

TABLE_DEAD_TUPLES = Gauge(
    "saga_table_dead_tuples", "Dead tuples of a churning table (pg_stat_user_tables)", ["table"]
)
TABLE_LIVE_TUPLES = Gauge(
    "saga_table_live_tuples", "Live tuples of a churning table (pg_stat_user_tables)", ["table"]
)
TABLE_MODIFIED_SINCE_ANALYZE = Gauge(
    "saga_table_modified_since_analyze",
    "Rows of a churning table changed since its statistics were last gathered",
    ["table"],
)
TABLE_LAST_VACUUM = Gauge(
    "saga_table_last_vacuum_timestamp_seconds",
    "When a churning table was last vacuumed, by autovacuum or by hand (0: never, as far "
    "as the statistics know)",
    ["table"],
)
TABLE_LAST_ANALYZE = Gauge(
    "saga_table_last_analyze_timestamp_seconds",
    "When a churning table was last analyzed, by autovacuum or by hand (0: never)",
    ["table"],
)
TABLE_AUTOVACUUM_ENABLED = Gauge(
    "saga_table_autovacuum_enabled",
    "1 when autovacuum may vacuum a churning table (server and table settings), else 0",
    ["table"],
)
INDEX_SIZE = Gauge("saga_index_size_bytes", "Size of a churning table's index", ["table", "index"])
INDEX_BLOAT_RATIO = Gauge(
    "saga_index_bloat_ratio",
    "Estimated share of a churning table's B-tree index that is wasted space, 0..1 "
    "(from pg_class and pg_stats; as fresh as the last ANALYZE)",
    ["table", "index"],
)

_FINISHED = {
    SagaStatus.COMPLETED: SAGAS_COMPLETED,
    SagaStatus.COMPENSATED: SAGAS_COMPENSATED,
    SagaStatus.ABORTED: SAGAS_ABORTED,
}


def count_finished(definition: str, status: SagaStatus | str) -> None:
    """Count a saga of ``definition`` that just ended ``status``: completed, compensated
    or aborted. Parked and in-flight statuses count nothing here (parking is counted by
    :func:`saga.alerts.saga_parked`); an unknown status raises ValueError."""
    counter = _FINISHED.get(SagaStatus(status))
    if counter is not None:
        counter.labels(definition).inc()


# -- connection pools, read when scraped ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolStatus:
    in_use: int
    idle: int
    waiting: int
    size: int


class PoolSource(Protocol):
    def pool_status(self) -> PoolStatus | None: ...


class _PoolCollector(Collector):
    """Sums the pools of this process's live databases at scrape time: nothing is
    counted on the hot path but the waiters, which the database keeps itself."""

    def __init__(self) -> None:
        self._sources: weakref.WeakSet[PoolSource] = weakref.WeakSet()
        # Scrapes run on the HTTP server's thread while the event loop adds databases.
        self._lock = threading.Lock()

    def track(self, source: PoolSource) -> None:
        with self._lock:
            self._sources.add(source)

    def forget(self, source: PoolSource) -> None:
        with self._lock:
            self._sources.discard(source)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            sources = list(self._sources)
        statuses = [s for s in (source.pool_status() for source in sources) if s]
        connections = GaugeMetricFamily(
            "saga_db_pool_connections",
            "Pooled database connections by state (in_use: lent to a unit; idle: in the pool)",
            labels=["state"],
        )
        connections.add_metric(["in_use"], sum(s.in_use for s in statuses))
        connections.add_metric(["idle"], sum(s.idle for s in statuses))
        yield connections
        yield GaugeMetricFamily(
            "saga_db_pool_waiting",
            "Units of work waiting for a pooled connection",
            value=sum(s.waiting for s in statuses),
        )
        yield GaugeMetricFamily(
            "saga_db_pool_size",
            "Connections the pools may hold (DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW each)",
            value=sum(s.size for s in statuses),
        )


POOLS = _PoolCollector()
REGISTRY.register(POOLS)
