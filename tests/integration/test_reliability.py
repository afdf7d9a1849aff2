"""The reliability suite's short form: a few hundred mixed sagas across real processes
while every kind of fault strikes at least once, then nothing lost, nothing duplicated,
every saga finished (or parked with a reason), and no process dead by itself.

The long form (10,000 sagas, faults throughout) is ``python -m benchmarks.reliability``;
its figures are in docs/reliability.md.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from benchmarks.reliability.faults import POISON_KINDS
from benchmarks.reliability.harness import Faults, RunSettings, run_reliability
from saga.store import admin

pytestmark = pytest.mark.integration

SAGAS = 300
FAULT_KINDS = {
    "kill_coordinator",
    "kill_participant",
    "kill_worker",
    "broker_restart",
    "pool_exhausted",
    "duplicate_delivery",
    "reply_reordered",
    "backend_terminated",
    "serialization_conflict",
    *POISON_KINDS,
}
SHORT = Faults(
    kill=2.0,
    broker_restart=20.0,
    broker_restart_first=4.0,
    pool_exhaustion=8.0,
    pool_exhaustion_window=3.0,
    backend_termination=2.0,
    contention=0.5,
    poison=1.0,
)


@pytest.mark.timeout(600)
async def test_a_short_run_with_every_fault_loses_and_duplicates_nothing(
    admin_database_url: str, template_database_name: str, tmp_path: Path
) -> None:
    name = f"austa_test_reliability_{uuid.uuid4().hex[:10]}"
    url = await admin.create_database(admin_database_url, name, template=template_database_name)
    try:
        report = await run_reliability(
            RunSettings(sagas=SAGAS, rate=25.0, faults=SHORT, drain_timeout=240),
            database_url=url,
            admin_url=admin_database_url,
            logs=tmp_path,
        )
    finally:
        await admin.drop_database(admin_database_url, name)
    print(report.render())

    assert {kind for kind, count in report.faults.items() if count > 0} >= FAULT_KINDS, (
        report.render()
    )
    assert report.sagas == SAGAS
    assert report.lost == 0, report.render()
    assert report.duplicated == 0, report.render()
    assert report.unfinished == 0, report.render()
    assert report.crashes == {}, report.render()
    assert report.passed, report.render()
    assert report.by_status["completed"] > 0
    assert report.by_status["compensated"] > 0
    # The new shapes were in the mix: claims reviewed each way (benchmarks.reliability.reviews),
    # and no review after the timeout was let through.
    reviews = {kind for kind, count in report.evidence.items() if kind.startswith("review ")}
    for way in ("on_time", "rejected", "twice", "early", "late"):
        assert any(kind.startswith(f"review {way}:") for kind in reviews), report.render()
    assert "review late:not_refused" not in reviews, report.render()
    # Goal completions start their wellness credit as a child saga, and every child the
    # run started ended with its parent (the faults kill coordinators mid-run).
    children = {k: n for k, n in report.evidence.items() if k.startswith("child sagas ")}
    assert sum(children.values()) > 0, report.render()
    assert set(children) <= {f"child sagas {s}" for s in ("completed", "compensated", "parked")}, (
        report.render()
    )
    # Poison never blocks what is behind it (every saga finished) and is set aside.
    assert sum(report.dead_letters.values()) > 0
