"""A process whose broker is down waits for it instead of exiting: it starts its work once
the broker is back (the reliability suite restarts processes while the broker restarts,
and they exited with "cannot connect to Kafka"), and a SIGTERM while it waits still stops
it at once with exit 0."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from benchmarks.reliability.processes import Fleet, log_events, probe
from saga.embedded import EmbeddedBroker
from saga.embedded.broker import free_port
from tests.integration.conftest import SagaEnvironment

pytestmark = [pytest.mark.integration, pytest.mark.embedded]


async def waiting_for_the_broker(fleet: Fleet, name: str, within: float = 30) -> None:
    engine = fleet.processes[name]
    deadline = time.monotonic() + within
    while not any(
        event.get("event") == "broker_unavailable_waiting"
        for event in log_events(engine.output_text())
    ):
        assert fleet.running(name), engine.output_text()[-2000:]
        assert time.monotonic() < deadline, "it never said it waits for the broker"
        await asyncio.sleep(0.1)
    engine.port = engine.served_port()


@pytest.mark.parametrize("argv", [["run", "participant", "--journey", "care"], ["run", "worker"]])
async def test_a_process_started_without_its_broker_waits_and_then_serves(
    argv: list[str], saga_env: SagaEnvironment, tmp_path: Path
) -> None:
    port = free_port()
    fleet = Fleet(
        {**saga_env.process_environment(), "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"},
        tmp_path,
    )
    try:
        fleet.add("process", *argv)
        fleet.start("process")
        await waiting_for_the_broker(fleet, "process")
        engine = fleet.processes["process"]
        assert engine.port is not None
        status, report = await asyncio.to_thread(probe, engine.port)
        assert (status, report["phase"]) == (503, "starting")
        assert (await asyncio.to_thread(probe, engine.port, "live"))[0] == 200

        with EmbeddedBroker(port=port):
            await fleet.wait_ready("process", within=60)
            code, _ = await fleet.terminate("process", within=30)
        assert code == 0
    finally:
        fleet.stop_all()


async def test_sigterm_while_waiting_for_the_broker_stops_at_once(
    saga_env: SagaEnvironment, tmp_path: Path
) -> None:
    fleet = Fleet(
        {**saga_env.process_environment(), "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"},
        tmp_path,
    )
    try:
        fleet.add("coordinator", "run", "coordinator")
        fleet.start("coordinator")
        await waiting_for_the_broker(fleet, "coordinator")
        code, seconds = await fleet.terminate("coordinator", within=30)
        assert code == 0
        assert seconds < 10
    finally:
        fleet.stop_all()
