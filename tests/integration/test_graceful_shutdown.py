"""SIGTERM in the middle of a load, for each kind of engine process, loses nothing.

Each test runs real ``saga run ...`` processes on PostgreSQL and the broker, starts a
mixed load of bookings, claims and goal completions (some refused, so they compensate),
and once the load is under way sends SIGTERM to one process that is doing work. That
process must exit 0 within SHUTDOWN_TIMEOUT_SECONDS without giving up the batch in hand,
and leave nothing behind: a second member of its group takes over (coordinator,
participant) or the process is restarted (worker, all-in-one). Every saga must then
finish, none parked, and the invariant check must find every effect applied exactly once
for what completed and undone for what compensated.

The coordinator and participant cases run no worker: nothing re-sends a command after a
timeout, so a command or reply dropped by the shutdown would leave its saga unfinished
instead of being rescued.
"""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from journeys.invariants import check_invariants
from saga.participant.journey import discover_journeys
from saga.store.roles import COORDINATOR_ROLE
from tests.integration.conftest import SagaEnvironment
from tests.integration.fleet import (
    Fleet,
    count_finished,
    fleet,
    log_events,
    prepare_mix,
    wait_finished,
    wait_some_finished,
)
from tests.integration.sagas import starter

pytestmark = [pytest.mark.integration, pytest.mark.embedded]

SHUTDOWN_TIMEOUT = 20  # SHUTDOWN_TIMEOUT_SECONDS of every process
SAGAS = 80
BURST = 5  # sagas started at once, every BURST_PAUSE seconds: about 20 a second
BURST_PAUSE = 0.25
IN_FLIGHT = 3  # the signal is sent once at least this many sagas are unfinished
JOURNEYS = sorted(discover_journeys())


@dataclass(frozen=True)
class Case:
    layout: dict[str, list[str]]
    target: str
    restart: bool
    busy_metric: str
    """A counter the target moves only by doing its work: it must have moved before the
    signal, so the signal lands on a process that holds work."""


def participants(*extra: str) -> dict[str, list[str]]:
    layout = {name: ["run", "participant", "--journey", name] for name in JOURNEYS}
    for name in extra:
        layout[name] = ["run", "participant", "--journey", name.split("-")[0]]
    return layout


CASES = {
    "coordinator": Case(
        {
            "coordinator": ["run", "coordinator"],
            "coordinator-b": ["run", "coordinator"],
            **participants(),
        },
        target="coordinator",
        restart=False,
        busy_metric="saga_step_duration_seconds_count",
    ),
    "participant": Case(
        {"coordinator": ["run", "coordinator"], **participants("care-b")},
        target="care",
        restart=False,
        busy_metric="saga_participant_handler_seconds_count",
    ),
    "worker": Case(
        {"coordinator": ["run", "coordinator"], **participants(), "worker": ["run", "worker"]},
        target="worker",
        restart=True,
        busy_metric="saga_worker_job_runs_total",
    ),
    "all": Case(
        {"all": ["run", "all"]},
        target="all",
        restart=True,
        busy_metric="saga_step_duration_seconds_count",
    ),
}


def metric_total(port: int | None, name: str) -> float:
    assert port is not None, "the process has not said where it serves /metrics"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


async def until(check: Callable[[], bool], what: str, within: float = 30) -> None:
    for _ in range(int(within / 0.1)):
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {within} s")


@pytest.mark.parametrize("kind", list(CASES))
async def test_sigterm_mid_load_loses_nothing(
    kind: str, saga_env: SagaEnvironment, tmp_path: Path
) -> None:
    case = CASES[kind]
    starting = await prepare_mix(saga_env, SAGAS)
    as_coordinator = (
        make_url(saga_env.database_url)
        .set(username=COORDINATOR_ROLE, password=None)
        .render_as_string(hide_password=False)
    )
    with fleet(saga_env, tmp_path, SHUTDOWN_TIMEOUT_SECONDS=str(SHUTDOWN_TIMEOUT)) as running:
        for name, argv in case.layout.items():
            # As in docker-compose.yml, coordinators log in as the coordinator's own role.
            as_role = {"DATABASE_URL": as_coordinator} if argv[1] == "coordinator" else {}
            running.add(name, *argv, environ=as_role)
            running.start(name)
        await running.wait_ready()
        target = running.processes[case.target]
        if "coordinator" in case.layout:
            assert await logged_in_as(saga_env, "saga-coordinator") == {COORDINATOR_ROLE}

        ids: list[uuid.UUID] = []
        async with starter(saga_env) as coordinator:

            async def start_load() -> None:
                for first in range(0, SAGAS, BURST):
                    burst = starting[first : first + BURST]
                    ids.extend(await asyncio.gather(*(start(coordinator) for start in burst)))
                    await asyncio.sleep(BURST_PAUSE)

            loading = asyncio.create_task(start_load())
            try:
                await wait_some_finished(saga_env.database, ids, SAGAS // 5)
                await until(
                    lambda: metric_total(target.port, case.busy_metric) > 0,
                    f"{case.target} doing its work",
                )
                await wait_in_flight(saga_env, ids, loading)
                code, seconds = await running.terminate(case.target, within=SHUTDOWN_TIMEOUT + 15)
                assert code == 0, running.describe()
                assert seconds < SHUTDOWN_TIMEOUT, f"{case.target} took {seconds:.1f} s to stop"
                await assert_stopped_cleanly(running, case.target)
                if case.restart:
                    running.start(case.target)
                    await running.wait_ready(case.target)
                await loading
            finally:
                loading.cancel()

        await wait_finished(saga_env.database, ids, within=120)
    report = await check_invariants(saga_env.database, saga_ids=ids, allow_parked=False)
    assert report.ok, report.describe()
    assert report.parked == []
    assert sum(report.sagas_by_status.values()) == SAGAS
    assert report.sagas_by_status["completed"] > 0
    assert report.sagas_by_status["compensated"] > 0


async def logged_in_as(env: SagaEnvironment, application: str) -> set[str]:
    rows = await env.database.run_driver(
        lambda conn: conn.fetch(
            "SELECT DISTINCT usename FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = $1",
            application,
        ),
        transaction=False,
    )
    return {row["usename"] for row in rows}


async def wait_in_flight(
    env: SagaEnvironment, ids: list[uuid.UUID], loading: asyncio.Task[None]
) -> None:
    """Until at least IN_FLIGHT sagas are unfinished, so the signal finds work in hand."""
    while len(ids) - await count_finished(env.database, ids) < IN_FLIGHT:
        if loading.done():
            raise AssertionError("the load ended before the signal: start more sagas")
        await asyncio.sleep(0.01)


async def assert_stopped_cleanly(running: Fleet, name: str) -> None:
    events = [event["event"] for event in log_events(running.processes[name].output_text())]
    assert "stopping_on_signal" in events
    assert "stopped" in events
    assert "shutdown_timed_out" not in events
    # The batch in hand finished rather than being given up on.
    pass
