"""A process whose broker is down waits for it instead of exiting: it starts its work once
the broker is back (the reliability suite restarts processes while the broker restarts,
and they exited with "cannot connect to Kafka"), and a SIGTERM while it waits still stops
it at once with exit 0."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


async def test_ready_tells_a_broker_unreachable_for_longer_than_the_setting(
    saga_env: SagaEnvironment, tmp_path: Path
) -> None:
    port = free_port()
    fleet = Fleet(
        {
            **saga_env.process_environment(),
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
            "BROKER_UNREACHABLE_SECONDS": "2",
        },
        tmp_path,
    )
    try:
        fleet.add("coordinator", "run", "coordinator")
        with EmbeddedBroker(port=port):
            fleet.start("coordinator")
            await fleet.wait_ready("coordinator", within=60)
            engine = fleet.processes["coordinator"]
            assert engine.port is not None
            _, report = await asyncio.to_thread(probe, engine.port)
            assert report["broker_unreachable_seconds"] == 0

        # The broker is gone: within a probe period past the setting, /ready says so while
        # /live still answers (the process is fine and waits).
        _, report = await until_probe(engine.port, lambda status, _: status == 503)
        assert "broker" in report["waiting_for"]
        assert report["broker_unreachable_seconds"] >= 2
        assert (await asyncio.to_thread(probe, engine.port, "live"))[0] == 200

        with EmbeddedBroker(port=port):
            _, report = await until_probe(
                engine.port, lambda status, report: "broker" not in report["waiting_for"]
            )
            assert report["broker_unreachable_seconds"] == 0
            await fleet.wait_ready("coordinator", within=60)
            code, _ = await fleet.terminate("coordinator", within=30)
        assert code == 0
        events = [event.get("event") for event in log_events(engine.output_text())]
        assert "broker_unreachable" in events
        assert "broker_reachable_again" in events
    finally:
        fleet.stop_all()


async def until_probe(
    port: int, done: Callable[[int, dict[str, Any]], bool], within: float = 30
) -> tuple[int, dict[str, Any]]:
    deadline = time.monotonic() + within
    while True:
        status, report = await asyncio.to_thread(probe, port)
        if done(status, report):
            return status, report
        assert time.monotonic() < deadline, f"/ready still says {status} {report}"
        await asyncio.sleep(0.2)
