"""The journey services as real processes: ``saga run participant --journey X`` logs in
as the journey's own role and serves its steps (the example scripts: test_examples.py)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import pytest

from journeys import world
from journeys.care.sagas import book_appointment
from saga.machine import SagaStatus
from saga.participant.journey import discover_journeys
from saga.stack import running_services
from saga.store.driver import DriverConnection
from tests.conftest import REPO_ROOT
from tests.integration.conftest import SagaEnvironment, engine_process
from tests.integration.sagas import FAST_RELAY

pytestmark = [pytest.mark.integration, pytest.mark.embedded]


async def logged_in_roles(env: SagaEnvironment, application: str) -> set[str]:
    async def query(conn: DriverConnection) -> set[str]:
        rows = await conn.fetch(
            "SELECT usename FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = $1",
            application,
        )
        return {row["usename"] for row in rows}

    return await env.database.run_driver(query, transaction=False)


async def test_a_participant_process_serves_its_journey_as_its_own_role(
    saga_env: SagaEnvironment,
) -> None:
    journeys = discover_journeys()

    async def build(conn: DriverConnection) -> tuple[world.Member, list[world.Slot]]:
        member = await world.create_member(conn)
        provider = await world.create_provider(conn)
        return member, await world.create_slots(conn, provider, 1)

    member, slots = await saga_env.database.run_driver(build)
    with engine_process(saga_env, "run", "participant", "--journey", "care") as care:
        async with running_services(
            saga_env.settings,
            database_url=saga_env.database_url,
            bootstrap_servers=saga_env.bootstrap,
            journeys=[journeys["plan"], journeys["gamification"]],
            coordinator_options={"relay": FAST_RELAY},
        ) as services:
            saga_id = await book_appointment(
                services.coordinator,
                user_id=member.user_id,
                slot_id=slots[0].slot_id,
                amount_cents=10_000,
            )
            summary = await services.coordinator.wait(saga_id, timeout=60)
            assert summary.status is SagaStatus.COMPLETED, summary.error
            assert await logged_in_roles(saga_env, "saga-participant-care") == {
                "austa_care_journey"
            }
        care.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(care.wait, 30) == 0


def test_an_unknown_journey_is_a_one_line_error(saga_env: SagaEnvironment) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "saga", "run", "participant", "--journey", "dental"],
        cwd=REPO_ROOT,
        env=saga_env.process_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "no journey service named 'dental'" in result.stderr
    assert "care, gamification, health, plan" in result.stderr
    assert "Traceback" not in result.stderr
