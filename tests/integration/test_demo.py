"""`make demo`'s command on the embedded default: everything up, migrated, seeded, down."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def server_processes() -> set[int]:
    """PIDs of embedded PostgreSQL and Tansu broker processes on this machine."""
    found = set()
    for proc in psutil.process_iter(attrs=["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "austa-pg-" in cmdline or ("tansu" in cmdline and "memory://" in cmdline):
            found.add(proc.info["pid"])
    return found


def test_demo_runs_on_the_embedded_default_and_cleans_up() -> None:
    before = server_processes()
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "APP_ENV"}
    }
    result = subprocess.run(
        [sys.executable, "-m", "saga", "demo"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "started embedded PostgreSQL" in out
    assert "started embedded Kafka-protocol broker" in out
    assert "broker answered a metadata request: 1 node(s)" in out
    assert "migrated to" in out
    assert "schema lint: 0 finding(s)" in out
    first_seed = next(line for line in out.splitlines() if "seed run 1" in line)
    assert "inserted 0 row(s)" not in first_seed
    assert "seed run 2: inserted 0 row(s)" in out
    assert "care_journey.care_appointment:" in out
    # The booking runs its parallel group, the claim waits for the auditor's signal, the
    # health goal starts its wellness credit as a child saga.
    for saga in (
        "book_appointment v2",
        "submit_claim v2",
        "complete_health_goal v2",
        "grant_wellness_credit v1",
    ):
        assert f"{saga}: completed in" in out
        assert f"{saga}: compensated in" in out
    assert "is waiting for 'claim_reviewed'" in out
    # The review is sent by `saga signal` as a process of its own, its receipt printed.
    assert "the plan auditor runs: saga signal " in out
    assert "--actor auditor.marina --reason 'laudo confere'" in out
    assert '"outcome": "accepted"' in out
    assert "stopped everything the demo started" in out
    assert server_processes() <= before
