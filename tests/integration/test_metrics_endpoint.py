"""Every long-running process serves its metrics on /metrics: a real coordinator, the care,
plan and gamification participants and a worker, each ``saga run ...`` as a process of its
own, are scraped before and after real bookings (three completed, one compensated) and a
poison command, and their counters must have moved by exactly what happened."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from journeys import world
from journeys.care.sagas import BOOK_APPOINTMENT, book_appointment
from saga.machine import SagaStatus
from saga.store.driver import DriverConnection
from saga.transport import OutgoingMessage, Producer, Topics
from tests.integration.conftest import SagaEnvironment, engine_process
from tests.integration.sagas import starter

pytestmark = [pytest.mark.integration, pytest.mark.embedded]

PARTICIPANTS = ("care", "plan", "gamification")
OUTBOXES = {
    "coordinator": ["shared.saga_outbox"],
    "care": ["care_journey.care_outbox"],
    "plan": ["plan_journey.plan_outbox"],
    "gamification": ["gamification.gamification_outbox"],
    "worker": [
        "shared.saga_outbox",
        "care_journey.care_outbox",
        "plan_journey.plan_outbox",
        "gamification.gamification_outbox",
        "health_journey.health_outbox",
    ],
}
BOOKING = BOOK_APPOINTMENT.name
POOL_SIZE = 8  # DATABASE_POOL_SIZE of every engine process (max overflow 0)
PARTITIONS = 4  # KAFKA_TOPIC_PARTITIONS of the test's topics: each process holds them all


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Scrape:
    """One /metrics page: every sample by name and labels."""

    samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float]

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: value for (found, labels), value in self.samples.items() if found == name}


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return Scrape(
        {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
    )


async def scrape_when_up(port: int, process: subprocess.Popen[bytes]) -> Scrape:
    deadline = time.monotonic() + 30
    while True:
        try:
            return await asyncio.to_thread(scrape, port)
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no /metrics on port {port} (see its output)") from None
            await asyncio.sleep(0.1)


async def eventually(
    port: int, check: str, ready: Callable[[Scrape], bool], within: float = 15
) -> Scrape:
    """Scrape until ``ready(scrape)`` holds (samplers and lag refresh on their own timers)."""
    deadline = time.monotonic() + within
    while True:
        found = await asyncio.to_thread(scrape, port)
        if ready(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{check} did not happen on port {port} within {within} s")
        await asyncio.sleep(0.2)


def in_process(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@contextlib.contextmanager
def engine_processes(
    env: SagaEnvironment, ports: Mapping[str, int], logs: Path
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """The processes, their output in files (a pipe nobody reads could block one); if the
    test fails, the end of each one's output is printed with the failure."""
    argv = {
        "coordinator": ["run", "coordinator"],
        "worker": ["run", "worker"],
        **{name: ["run", "participant", "--journey", name] for name in PARTICIPANTS},
    }
    with contextlib.ExitStack() as stack:
        outputs = {name: stack.enter_context((logs / f"{name}.log").open("wb")) for name in ports}
        try:
            yield {
                name: stack.enter_context(
                    engine_process(
                        env,
                        *argv[name],
                        environ={"METRICS_PORT": str(ports[name])},
                        output=outputs[name],
                    )
                )
                for name in ports
            }
        except BaseException:
            for name in ports:
                tail = (logs / f"{name}.log").read_text(errors="replace")[-3000:]
                print(f"--- {name} ---\n{tail}")
            raise


async def test_every_process_exports_what_happened_on_its_metrics_endpoint(
    saga_env: SagaEnvironment, tmp_path: Path
) -> None:
    env = saga_env

    async def build(conn: DriverConnection) -> tuple[world.Member, world.Member, list[world.Slot]]:
        rich = await world.create_member(conn, limit_cents=1_000_000)
        poor = await world.create_member(conn, limit_cents=10_000)
        provider = await world.create_provider(conn)
        return rich, poor, await world.create_slots(conn, provider, 4)

    rich, poor, slots = await env.database.run_driver(build)
    ports = {name: free_port() for name in ("coordinator", *PARTICIPANTS, "worker")}
    topics = Topics.from_settings(env.settings)
    with engine_processes(env, ports, tmp_path) as processes:
        before = {
            name: await scrape_when_up(ports[name], process) for name, process in processes.items()
        }
        started_before = in_process("saga_started_total", definition=BOOKING)

        async with starter(env) as starting:
            outcomes = []
            for slot in slots[:3]:
                saga_id = await book_appointment(
                    starting, user_id=rich.user_id, slot_id=slot.slot_id, amount_cents=20_000
                )
                outcomes.append((await starting.wait(saga_id, timeout=40)).status)
            refused = await book_appointment(
                starting, user_id=poor.user_id, slot_id=slots[3].slot_id, amount_cents=20_000
            )
            outcomes.append((await starting.wait(refused, timeout=40)).status)
            # A repeated start with the same key starts nothing and counts nothing.
            again = await book_appointment(
                starting,
                user_id=rich.user_id,
                slot_id=slots[0].slot_id,
                amount_cents=20_000,
                idempotency_key="metrics-once",
            )
            assert again == await book_appointment(
                starting,
                user_id=rich.user_id,
                slot_id=slots[0].slot_id,
                amount_cents=20_000,
                idempotency_key="metrics-once",
            )
            outcomes.append((await starting.wait(again, timeout=40)).status)
        assert outcomes == [SagaStatus.COMPLETED] * 3 + [
            SagaStatus.COMPENSATED,
            SagaStatus.COMPENSATED,  # the slot is taken by the first booking
        ]
        assert in_process("saga_started_total", definition=BOOKING) - started_before == 5

        async with Producer.from_settings(env.settings, bootstrap_servers=env.bootstrap) as p:
            await p.send(OutgoingMessage(topics.commands("care"), "poison", b"{not json", {}))

        care_commands = topics.commands("care")
        care = await eventually(
            ports["care"],
            "the poison command's dead letter",
            lambda s: (
                s.get("saga_dead_letters_total", topic=care_commands, reason_kind="malformed") >= 1
            ),
        )

        # -- the coordinator ------------------------------------------------------------------
        coordinator = await asyncio.to_thread(scrape, ports["coordinator"])
        old = before["coordinator"]

        def moved(name: str, **labels: str) -> float:
            return coordinator.get(name, **labels) - old.get(name, **labels)

        assert moved("saga_completed_total", definition=BOOKING) == 3
        assert moved("saga_compensated_total", definition=BOOKING) == 2
        assert moved("saga_parked_total", definition=BOOKING) == 0

        def attempts(step: str, phase: str, outcome: str) -> float:
            return moved(
                "saga_step_duration_seconds_count",
                definition=BOOKING,
                step=step,
                phase=phase,
                outcome=outcome,
            )

        assert attempts("reserve_slot", "execute", "succeeded") == 4
        assert attempts("reserve_slot", "execute", "failed") == 1  # the slot already booked
        assert attempts("authorize_coverage", "execute", "succeeded") == 3
        assert attempts("authorize_coverage", "execute", "failed") == 1  # not covered
        assert attempts("award_points", "execute", "succeeded") == 3
        assert attempts("confirm_appointment", "execute", "succeeded") == 3
        assert attempts("reserve_slot", "compensate", "succeeded") == 1
        total = sum(
            value - old.samples.get(("saga_step_duration_seconds_count", labels), 0.0)
            for labels, value in coordinator.series("saga_step_duration_seconds_count").items()
        )
        assert total == 16, "one observation per reply applied"
        # The coordinator process published every command after the first of each saga.
        assert moved("saga_outbox_publish_lag_seconds_count", outbox="shared.saga_outbox") == 11

        # -- the participants -----------------------------------------------------------------
        plan = await asyncio.to_thread(scrape, ports["plan"])
        gamification = await asyncio.to_thread(scrape, ports["gamification"])
        handled = {"care": care, "plan": plan, "gamification": gamification}

        def runs(journey: str, action: str, outcome: str) -> float:
            name = "saga_participant_handler_seconds_count"
            labels = {"journey": journey, "action": action, "outcome": outcome}
            return handled[journey].get(name, **labels) - before[journey].get(name, **labels)

        assert runs("care", "reserve_slot", "succeeded") == 4
        assert runs("care", "reserve_slot", "failed") == 1
        assert runs("care", "confirm_appointment", "succeeded") == 3
        assert runs("care", "release_slot", "succeeded") == 1
        assert runs("plan", "authorize_coverage", "succeeded") == 3
        assert runs("plan", "authorize_coverage", "failed") == 1
        assert runs("gamification", "award_points", "succeeded") == 3
        assert (
            care.get("saga_dead_letters_total", topic=care_commands, reason_kind="malformed") == 1
        )
        assert not plan.series("saga_dead_letters_total")
        # Every stored reply is published from its journey's outbox.
        for journey, replies in (("care", 9), ("plan", 4), ("gamification", 3)):
            outbox = OUTBOXES[journey][0]
            assert handled[journey].get("saga_outbox_publish_lag_seconds_count", outbox=outbox) == (
                replies
            ), journey

        # -- every process, once idle ----------------------------------------------------------
        for name in processes:

            def idle(s: Scrape, name: str = name) -> bool:
                backlogs = [
                    s.samples.get(("saga_outbox_backlog", frozenset({("outbox", o)})))
                    for o in OUTBOXES[name]
                ]
                lags = s.series("saga_consumer_lag_messages").values()
                consuming = name != "worker"
                return (
                    backlogs == [0.0] * len(backlogs)
                    and (not consuming or (bool(lags) and set(lags) == {0.0}))
                    and s.get("saga_db_pool_waiting") == 0
                )

            now = await eventually(ports[name], f"{name} idle", idle)
            assert now.get("saga_db_pool_size") == POOL_SIZE, name
            in_use = now.get("saga_db_pool_connections", state="in_use")
            idle_connections = now.get("saga_db_pool_connections", state="idle")
            assert 0 <= in_use <= POOL_SIZE, name
            assert 1 <= in_use + idle_connections <= POOL_SIZE, name
            for oldest in (
                now.get("saga_outbox_oldest_unpublished_seconds", outbox=o) for o in OUTBOXES[name]
            ):
                assert oldest == 0, name
            if name != "worker":
                # One group per consuming process, its partitions of its own topic.
                lagging = now.series("saga_consumer_lag_messages")
                own_topic = topics.replies if name == "coordinator" else topics.commands(name)
                group = env.settings.kafka_topic_prefix + "." + name
                assert {dict(labels)["group"] for labels in lagging} == {group}, lagging
                assert {dict(labels)["topic"] for labels in lagging} == {own_topic}, lagging
                partitions = {dict(labels)["partition"] for labels in lagging}
                assert partitions == {str(n) for n in range(PARTITIONS)}, lagging
        assert (await asyncio.to_thread(scrape, ports["worker"])).get(
            "saga_worker_job_runs_total", job="step_timeouts"
        ) >= 1

        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for name, process in processes.items():
            assert await asyncio.to_thread(process.wait, 30) == 0, name
