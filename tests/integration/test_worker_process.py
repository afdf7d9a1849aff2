"""``saga run worker`` as a process: it parks a saga nobody answers, exports the alert on
/metrics, stops on SIGTERM; ``--once`` runs each job once; bad job names are one line."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import replace

import pytest

from saga.coordinator import Coordinator
from saga.definition import SagaDefinition
from saga.machine import SagaStatus
from saga.retry import RetryPolicy
from tests.conftest import REPO_ROOT
from tests.integration.conftest import SagaEnvironment, engine_process
from tests.integration.sagas import BOOKING, FAST_RELAY, cluster, create_effect_tables

pytestmark = [pytest.mark.integration, pytest.mark.embedded]

QUICK = RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.02)
UNANSWERED = SagaDefinition(
    "worker_process_unanswered",
    1,
    [
        BOOKING.steps[0],
        replace(BOOKING.steps[1], timeout=0.3, retry=QUICK, compensation_retry=QUICK),
        *BOOKING.steps[2:],
    ],
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def sample(metrics: str, prefix: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_worker_process_parks_what_nobody_answers_and_stops_on_sigterm(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    port = free_port()
    environ = {"WORKER_SCHEDULE": "step_timeouts=0.2", "METRICS_PORT": str(port)}
    async with (
        cluster(env.settings, env.database, env.bootstrap, journeys=("care", "gamification")),
        Coordinator(
            settings=env.settings,
            database=env.database,
            bootstrap_servers=env.bootstrap,
            relay=FAST_RELAY,
        ) as coordinator,
    ):
        with engine_process(env, "run", "worker", environ=environ) as worker:
            saga_id = await coordinator.start(UNANSWERED, {})
            summary = await coordinator.wait(saga_id, timeout=40)
            assert summary.status is SagaStatus.PARKED
            assert "compensation of step 'authorize' failed after 2 attempts" in (
                summary.error or ""
            )
            metrics = await asyncio.to_thread(scrape, port)
            parked = f'saga_parked_total{{definition="{UNANSWERED.name}"}}'
            assert sample(metrics, parked) == 1.0
            for phase in ("execute", "compensate"):
                timeouts = (
                    f'saga_step_timeouts_total{{definition="{UNANSWERED.name}",phase="{phase}",'
                    'step="authorize"}'
                )
                assert sample(metrics, timeouts) == 2.0, "both attempts of each timed out"
            assert sample(metrics, 'saga_worker_job_runs_total{job="step_timeouts"}') >= 1
            worker.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(worker.wait, 15) == 0


async def test_once_runs_each_job_once_and_exits(saga_env: SagaEnvironment) -> None:
    env = saga_env
    async with Coordinator(
        settings=env.settings, database=env.database, bootstrap_servers=env.bootstrap
    ) as coordinator:
        saga_id = await coordinator.start(UNANSWERED, {})  # nobody serves care here
    await env.database.run_driver(
        lambda conn: conn.execute(
            "UPDATE shared.saga_instance SET step_deadline = now() - interval '1 second'"
        )
    )
    with engine_process(env, "run", "worker", "--once", "--job", "step_timeouts") as worker:
        code = await asyncio.to_thread(worker.wait, 60)
        stderr = worker.stderr.read().decode() if worker.stderr else ""
    assert code == 0, stderr
    attempt = await env.database.run_driver(
        lambda conn: conn.fetchval(
            "SELECT step_attempt FROM shared.saga_instance WHERE id = $1", saga_id
        )
    )
    assert attempt == 2, "the first step timed out once and was sent again"


def test_list_shows_every_job_with_its_schedule() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "saga", "run", "worker", "--list"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "WORKER_SCHEDULE": "step_timeouts=0.5/20"},
        check=True,
    )
    lines = listed.stdout.splitlines()
    assert any(
        line.startswith("step_timeouts") and "every 0.5 s, batch 20" in line for line in lines
    )
    names = {line.split()[0] for line in lines}
    assert {"step_timeouts", "saga_deadlines", "retry_monitor"} <= names


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--job", "nonsense"], {}, "no worker job named nonsense (jobs: "),
        ([], {"WORKER_DISABLED_JOBS": "nonsense"}, "WORKER_DISABLED_JOBS names no job called"),
        ([], {"WORKER_SCHEDULE": "step_timeouts=soon"}, "WORKER_SCHEDULE"),
    ],
)
def test_a_bad_job_name_or_schedule_is_one_line_and_exit_2(
    argv: list[str], environ: dict[str, str], message: str
) -> None:
    failed = subprocess.run(
        [sys.executable, "-m", "saga", "run", "worker", "--list", *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **environ},
        check=False,
    )
    assert failed.returncode == 2
    assert message in failed.stderr
    assert "Traceback" not in failed.stderr


async def test_a_database_job_runs_once_without_a_broker(saga_env: SagaEnvironment) -> None:
    """Cron runs a database-only job with no broker to talk to; a job that sends asks for
    one in a line that says which jobs need it."""
    env = saga_env
    await env.database.run_driver(
        lambda conn: conn.execute(
            "INSERT INTO care_journey.care_outbox (message_id, topic, message_key, payload, "
            "published_at) VALUES (gen_random_uuid(), 't', 'k', '{}', now() - interval '30 days')"
        )
    )
    no_broker = {
        **env.process_environment(),
        "KAFKA_BOOTSTRAP_SERVERS": "",
        "LOG_LEVEL": "WARNING",
    }

    def worker(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "saga", "run", "worker", "--once", *argv],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env=no_broker,
            check=False,
        )

    cleaned = await asyncio.to_thread(worker, "--job", "outbox_retention")
    assert cleaned.returncode == 0, cleaned.stderr
    left = await env.database.run_driver(
        lambda conn: conn.fetchval("SELECT count(*) FROM care_journey.care_outbox")
    )
    assert left == 0, "the published row past retention was deleted"

    refused = await asyncio.to_thread(worker, "--job", "outbox_retention", "--job", "step_timeouts")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "saga: error: no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS or pass bootstrap_servers "
        "(the embedded broker is only started by the demo and the tests); the job step_timeouts "
        "sends through the broker (without one, run only the jobs that need just the "
        "database: --job NAME, see --list)"
    ]
