"""Saga spans across real processes, exported over OTLP to a collector stand-in.

A coordinator and the care, plan and gamification participants run as ``saga run ...``
processes with OTEL_EXPORTER_OTLP_ENDPOINT pointing at a local OTLP/HTTP receiver. One
booking completes; another is refused by plan (over the member's limit) and compensates
care's reservation. The processes are stopped with SIGTERM, which sends the spans still
batched. Then, for each saga, the spans the four processes sent must form one trace:

- every span's trace id is the saga id;
- one ``step`` span per attempt (from the coordinator), with the saga, definition, step,
  phase, attempt and outcome, each a child of the saga's span;
- each participant's ``handle`` span is a child of the ``step`` span of the attempt it
  ran (joined through the command's traceparent), and so is the coordinator's ``reply``
  span for it (through the reply's);
- one saga span, the trace's root, saying how the saga ended.

Below it, the worker: an attempt it finds past its deadline gets its ``step`` span (outcome
``timed_out``) from ``saga run worker``, with the id the attempt's command carried.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from journeys import world
from journeys.care.sagas import book_appointment
from saga.machine import Phase, SagaStatus, command_message_id
from saga.store.driver import DriverConnection
from saga.tracing import attempt_span_id, saga_span_id
from tests.integration.conftest import SagaEnvironment, engine_process
from tests.integration.fleet import fleet
from tests.integration.otlp_collector import Collector, ReceivedSpan, otlp_collector
from tests.integration.sagas import starter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

LAYOUT = {
    "coordinator": ["run", "coordinator"],
    "care": ["run", "participant", "--journey", "care"],
    "plan": ["run", "participant", "--journey", "plan"],
    "gamification": ["run", "participant", "--journey", "gamification"],
}
SERVICES = {
    "coordinator": "saga-coordinator",
    "care": "saga-care",
    "plan": "saga-plan",
    "gamification": "saga-gamification",
}


async def test_a_saga_is_one_trace_across_the_processes_it_ran_in(
    saga_env: SagaEnvironment, tmp_path: Path
) -> None:
    async def build(conn: DriverConnection) -> tuple[world.Member, list[world.Slot]]:
        member = await world.create_member(conn)
        provider = await world.create_provider(conn)
        return member, await world.create_slots(conn, provider, 2)

    member, slots = await saga_env.database.run_driver(build)
    with (
        otlp_collector() as collector,
        fleet(saga_env, tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint) as running,
    ):
        for name, argv in LAYOUT.items():
            running.add(name, *argv)
            running.start(name)
        await running.wait_ready()
        async with starter(saga_env) as coordinator:
            booked = await book_appointment(
                coordinator, user_id=member.user_id, slot_id=slots[0].slot_id, amount_cents=10_000
            )
            refused = await book_appointment(
                coordinator,
                user_id=member.user_id,
                slot_id=slots[1].slot_id,
                amount_cents=member.limit_cents + 1,
            )
            assert (await coordinator.wait(booked, timeout=60)).status is SagaStatus.COMPLETED
            assert (await coordinator.wait(refused, timeout=60)).status is SagaStatus.COMPENSATED
        for name in LAYOUT:
            code, _ = await running.terminate(name, within=30)
            assert code == 0, f"{name} exited with {code}"

    assert collector.requests > 0
    assert {span.service for span in collector.spans} == set(SERVICES.values())

    completed = saga_trace(collector, booked)
    assert attempts_of(completed) == [
        ("reserve_slot", "execute", 1, "succeeded"),
        ("authorize_coverage", "execute", 1, "succeeded"),
        ("award_points", "execute", 1, "succeeded"),
        ("confirm_appointment", "execute", 1, "succeeded"),
    ]
    assert_joined(completed, booked, "completed")

    compensated = saga_trace(collector, refused)
    assert attempts_of(compensated) == [
        ("reserve_slot", "execute", 1, "succeeded"),
        ("authorize_coverage", "execute", 1, "failed"),
        ("reserve_slot", "compensate", 1, "succeeded"),
    ]
    assert_joined(compensated, refused, "compensated")


def saga_trace(collector: Collector, saga_id: uuid.UUID) -> list[ReceivedSpan]:
    """The spans of one saga: those whose trace is the saga's, all of which name it."""
    spans = [span for span in collector.spans if span.trace_id == saga_id.hex]
    assert spans, f"no span of saga {saga_id}"
    assert {span.attributes.get("saga.id") for span in spans} == {str(saga_id)}
    named = [span for span in collector.spans if span.attributes.get("saga.id") == str(saga_id)]
    assert len(named) == len(spans), "a span names the saga but is in another trace"
    return spans


def attempts_of(spans: list[ReceivedSpan]) -> list[tuple[str, str, int, str]]:
    """The coordinator's step spans in dispatch order: step, phase, attempt, outcome."""
    steps = sorted((s for s in spans if s.name.startswith("step ")), key=lambda s: s.start_ns)
    assert {s.service for s in steps} == {"saga-coordinator"}
    for span in steps:
        assert span.name == f"step {span.attributes['saga.step']}"
        assert span.attributes["saga.definition"] == "book_appointment"
        assert span.start_ns <= span.end_ns
    return [
        (
            s.attributes["saga.step"],
            s.attributes["saga.phase"],
            s.attributes["saga.attempt"],
            s.attributes["saga.outcome"],
        )
        for s in steps
    ]


def assert_joined(spans: list[ReceivedSpan], saga_id: uuid.UUID, status: str) -> None:
    roots = [s for s in spans if s.name.startswith("saga ")]
    assert len(roots) == 1, [s.name for s in spans]
    root = roots[0]
    assert (root.name, root.parent_span_id, root.service) == (
        "saga book_appointment",
        "",
        "saga-coordinator",
    )
    assert root.attributes["saga.status"] == status
    steps = {s.span_id: s for s in spans if s.name.startswith("step ")}
    assert {s.parent_span_id for s in steps.values()} == {root.span_id}
    assert all(root.start_ns <= s.start_ns for s in steps.values())

    handlers = [s for s in spans if s.name.startswith("handle ")]
    replies = [s for s in spans if s.name.startswith("reply ")]
    for handler in handlers:
        step = steps[handler.parent_span_id]  # joined through the command's traceparent
        journey = step.attributes["saga.journey"]
        assert handler.service == SERVICES[journey]
        action = handler.attributes["saga.action"]
        assert handler.name == f"handle {journey}.{action}"
        for key in ("saga.step", "saga.phase", "saga.attempt"):
            assert handler.attributes[key] == step.attributes[key], (key, handler, step)
    for reply in replies:
        step = steps[reply.parent_span_id]  # joined through the reply's traceparent
        assert reply.service == "saga-coordinator"
        assert reply.name == f"reply {step.attributes['saga.step']}"
        assert reply.attributes["saga.outcome"] == step.attributes["saga.outcome"]
    assert {s.parent_span_id for s in replies} == set(steps)
    # Each attempt ran once in its journey's process (a delivery of it again, which
    # at-least-once transport allows, is answered from the inbox: a `duplicate`).
    for span_id, step in steps.items():
        ran = [
            h
            for h in handlers
            if h.parent_span_id == span_id and h.attributes["saga.outcome"] != "duplicate"
        ]
        assert len(ran) == 1, (step, ran)
        assert ran[0].attributes["saga.outcome"] == step.attributes["saga.outcome"]
        assert step.start_ns <= ran[0].start_ns <= ran[0].end_ns <= step.end_ns


async def test_the_worker_emits_the_span_of_an_attempt_that_timed_out(
    saga_env: SagaEnvironment,
) -> None:
    async def build(conn: DriverConnection) -> tuple[world.Member, list[world.Slot]]:
        member = await world.create_member(conn)
        provider = await world.create_provider(conn)
        return member, await world.create_slots(conn, provider, 1)

    member, slots = await saga_env.database.run_driver(build)
    with otlp_collector() as collector:
        # No care participant runs: the first command gets no reply.
        async with starter(saga_env) as coordinator:
            saga_id = await book_appointment(
                coordinator, user_id=member.user_id, slot_id=slots[0].slot_id, amount_cents=100
            )
        await saga_env.database.run_driver(
            lambda conn: conn.execute(
                "UPDATE shared.saga_instance SET step_deadline = now() - interval '1 second' "
                "WHERE id = $1",
                saga_id,
            )
        )
        with engine_process(
            saga_env,
            "run",
            "worker",
            "--once",
            "--job",
            "step_timeouts",
            environ={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint},
        ) as worker:
            assert await asyncio.to_thread(worker.wait, 60) == 0

    attempt = await saga_env.database.run_driver(
        lambda conn: conn.fetchval(
            "SELECT step_attempt FROM shared.saga_instance WHERE id = $1", saga_id
        )
    )
    assert attempt == 2, "the worker sent the step again"
    [span] = saga_trace(collector, saga_id)
    first_command = command_message_id(saga_id, 0, Phase.EXECUTE)
    assert (span.service, span.name) == ("saga-worker", "step reserve_slot")
    assert span.span_id == f"{attempt_span_id(first_command, 1):016x}"
    assert span.parent_span_id == f"{saga_span_id(saga_id):016x}"
    assert span.attributes["saga.outcome"] == "timed_out"
    assert span.attributes["saga.attempt"] == 1
    assert span.attributes["saga.message_id"] == str(first_command)
