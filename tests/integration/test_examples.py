"""Each example script runs against the test's stack as a reader would run it (a process
with DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS set) and ends its sagas as it says."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from typing import Any

import pytest

from saga.store.driver import DriverConnection
from tests.conftest import REPO_ROOT
from tests.integration.conftest import SagaEnvironment

pytestmark = pytest.mark.integration

# Each example's saga and version, and the function its journey starts it with (None: the
# example starts its own saga with Coordinator.start).
EXAMPLES = {
    "two_journeys": ("place_order v1", None),
    "book_appointment": ("book_appointment v2", "book_appointment"),
    "submit_claim": ("submit_claim v2", "submit_claim"),
    "complete_health_goal": ("complete_health_goal v2", "complete_health_goal"),
}


def run_example(env: SagaEnvironment, example: str) -> subprocess.CompletedProcess[str]:
    environment = env.process_environment()
    environment["KAFKA_TOPIC_PREFIX"] = f"example.{uuid.uuid4().hex[:10]}"
    return subprocess.run(
        [sys.executable, f"examples/{example}.py"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


async def reviews(env: SagaEnvironment) -> list[dict[str, Any]]:
    """Each review the wait's step-log row records, with the signal that made it."""

    async def fetch(conn: DriverConnection) -> list[dict[str, Any]]:
        rows = await conn.fetch(
            "SELECT l.actor, s.reason, s.consumed_at IS NOT NULL AS consumed "
            "FROM shared.saga_step_log l JOIN shared.saga_signal s "
            "ON s.saga_instance_id = l.saga_instance_id "
            "WHERE l.step_name = 'review' AND l.status = 'succeeded'"
        )
        return [dict(row) for row in rows]

    return await env.database.run_driver(fetch, transaction=False)


# The embedded pass runs the from-scratch example: a new user's first script.
@pytest.mark.parametrize(
    "example",
    [
        pytest.param(name, marks=pytest.mark.embedded) if name == "two_journeys" else name
        for name in sorted(EXAMPLES)
    ],
)
async def test_the_example_runs_its_saga_to_completion_and_to_compensation(
    saga_env: SagaEnvironment, example: str
) -> None:
    saga, start = EXAMPLES[example]
    result = await asyncio.to_thread(run_example, saga_env, example)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{saga}: completed in" in result.stdout
    assert f"{saga}: compensated in" in result.stdout
    assert "reason: " in result.stdout
    if example == "submit_claim":
        # The review went through `saga signal` in a process of its own: its JSON receipt
        # is printed, and the wait's step-log row names the auditor it was given.
        assert "the plan auditor runs: saga signal " in result.stdout
        assert "--actor auditor.marina --reason 'laudo confere'" in result.stdout
        assert '"outcome": "accepted"' in result.stdout
        assert await reviews(saga_env) == [
            {"actor": "auditor.marina", "reason": "laudo confere", "consumed": True}
        ]
    if example == "complete_health_goal":
        assert "child saga grant_wellness_credit v1 as 'wellness_credit'" in result.stdout
        assert "grant_wellness_credit v1: completed in" in result.stdout
        assert "grant_wellness_credit v1: compensated in" in result.stdout
    if start is not None:
        assert f"{saga}: " in result.stdout.splitlines()[0]  # the outline comes first
        assert f"started with: saga_id = await {start}(coordinator, *, user_id" in result.stdout


def test_the_examples_readme_names_every_example() -> None:
    listed = (REPO_ROOT / "examples" / "README.md").read_text(encoding="utf-8")
    scripts = {path.stem for path in (REPO_ROOT / "examples").glob("*.py")} - {"outline"}
    assert scripts == set(EXAMPLES)
    assert all(f"examples/{name}.py" in listed for name in scripts)
