"""Tracing is off unless OTEL_EXPORTER_OTLP_ENDPOINT is set, costs nothing then, and the
engine runs without the otel extra. (The spans themselves, across real processes:
tests/integration/test_tracing.py.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from opentelemetry import trace as otel_trace

from saga import tracing
from saga.coordinator.commands import build_command
from saga.definition import SagaDefinition, Step
from saga.errors import ConfigurationError
from saga.machine import Dispatch, Phase
from saga.messages import TRACEPARENT
from saga.settings import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
SAGA_ID = uuid.UUID("4bf92f35-77b3-4da6-a3ce-929d0e0e4736")
DEFINITION = SagaDefinition(
    name="trace_me",
    version=1,
    steps=[
        Step(name="first", journey="care", action="do", compensation="undo"),
        Step(name="second", journey="plan", action="do"),
    ],
)


def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str | None) -> Settings:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    if endpoint is not None:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    return load_settings(env_dir=tmp_path)


def test_without_the_endpoint_no_tracer_provider_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tracing.traced(settings(tmp_path, monkeypatch, None), "saga-coordinator") as installed:
        assert installed is None
        assert isinstance(otel_trace.get_tracer_provider(), otel_trace.ProxyTracerProvider)
        assert not tracing.tracing_on()
        command = build_command(
            saga_id=SAGA_ID,
            definition=DEFINITION,
            dispatch=Dispatch(0, Phase.EXECUTE, 1),
            payload={},
            context={},
            reply_to="replies",
        )
        with tracing.handling("handle care.do", command, action="do"):
            # No span was started around the block: the current one is the invalid span.
            assert not otel_trace.get_current_span().get_span_context().is_valid
            tracing.note(outcome="succeeded")


def test_each_attempt_of_a_command_carries_a_span_id_of_its_own_that_anyone_can_derive() -> None:
    def sent(index: int, phase: Phase, attempt: int) -> tuple[str, str]:
        command = build_command(
            saga_id=SAGA_ID,
            definition=DEFINITION,
            dispatch=Dispatch(index, phase, attempt),
            payload={},
            context={},
            reply_to="replies",
        )
        version, trace_id, span_id, flags = command.trace[TRACEPARENT].split("-")
        assert (version, trace_id, flags) == ("00", SAGA_ID.hex, "01")
        assert span_id == f"{tracing.attempt_span_id(command.message_id, attempt):016x}"
        return trace_id, span_id

    spans = [
        sent(0, Phase.EXECUTE, 1),
        sent(0, Phase.EXECUTE, 2),
        sent(1, Phase.EXECUTE, 1),
        sent(0, Phase.COMPENSATE, 1),
    ]
    assert len({span for _, span in spans}) == len(spans)
    assert sent(0, Phase.EXECUTE, 2) == spans[1]  # the same attempt sent again: one span
    assert f"{tracing.saga_span_id(SAGA_ID):016x}" not in {span for _, span in spans}


def test_the_traces_url_is_under_the_endpoint() -> None:
    assert tracing.traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert tracing.traces_url("https://c.example/otlp/") == "https://c.example/otlp/v1/traces"


def test_the_endpoint_without_the_extra_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracing, "otel_trace", None)
    configured = settings(tmp_path, monkeypatch, "http://127.0.0.1:4318")
    with pytest.raises(ConfigurationError, match=r"the otel extra is not installed"):
        tracing.start_tracing(configured, "saga-worker")


def test_the_engine_imports_and_dispatches_without_the_extra() -> None:
    # A fresh interpreter in which importing opentelemetry fails, as it would without
    # the extra installed.
    script = textwrap.dedent(
        """
        import sys, uuid
        for name in ("opentelemetry", "opentelemetry.trace", "opentelemetry.sdk"):
            sys.modules[name] = None
        from saga import tracing
        from saga.coordinator.commands import build_command, traceparent
        from saga.coordinator.replies import ReplyProcessor
        from saga.participant.runtime import CommandProcessor
        assert tracing.otel_trace is None and not tracing.tracing_on()
        saga_id = uuid.uuid4()
        with tracing.handling("handle care.do", None):
            tracing.note(outcome="succeeded")
        print(traceparent(saga_id, uuid.uuid4(), 1).split("-")[1] == saga_id.hex)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
