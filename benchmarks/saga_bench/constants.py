"""Where the benchmark lives, and the figures every part of it shares."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results"
WORKLOADS = ("synthetic", "journeys")
FAIL_EVERY = 10  # one saga in ten fails at its last step
STOP_TIMEOUT = 20.0
IDLE_TIMEOUT_MS = 600_000
# Connections the benchmark's pools may hold together, of PostgreSQL's 100 by default:
# the rest is for the driver's own connections, the check and anyone else on the server.
CONNECTION_BUDGET = 60
