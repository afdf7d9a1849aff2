"""Prometheus metrics the engine's processes keep, and the endpoint that serves them.

One registry per process (the default one): counters are process-local and Prometheus
sums them across processes. :func:`serve_metrics` starts ``/metrics`` on METRICS_PORT.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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
SAGAS_EXPIRED = Counter(
    "saga_deadline_expired",
    "Sagas compensated (or parked) because they outran their overall deadline",
    ["definition"],
)
DB_RETRIES = Counter(
    "saga_db_transaction_retries",
    "Transactions re-run after a serialization failure or deadlock, by unit of work",
    ["unit", "sqlstate"],
)
STEP_DB_RETRIES = Gauge(
    "saga_step_db_retries_recent",
    "Serialization and deadlock retries per step over the retry monitor's window",
    ["journey", "step", "kind"],
)
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


def serve_metrics(port: int, host: str = "0.0.0.0") -> int:  # noqa: S104 - scraped from outside
    """Serve ``/metrics`` on ``port`` (0 picks a free one) and return the port."""
    server, _ = start_http_server(port, addr=host)
    return int(server.server_port)
