"""OpenTelemetry spans of sagas, exported over OTLP (the optional ``otel`` extra).

A saga outlives any one process, and its steps run in several (the coordinator that
dispatches, the journey service that runs the step, maybe another coordinator that takes
the reply), so no process can hold its spans open. They join one trace by construction:

- the trace id is the saga id (the coordinator already writes it into every command's
  W3C ``traceparent``);
- the saga's span has an id derived from the saga id; whichever process writes the saga's
  end emits it, from the saga's start to its end;
- each step attempt's span (``step <name>``) has an id derived from the command's message
  id and attempt: that id is the span id of the command's ``traceparent``. The process
  that applies the attempt's reply emits it, from the dispatch (the time the command was
  written) to the outcome, a child of the saga's span;
- the participant's span around the handler (``handle <journey>.<action>``) is a child of
  the attempt's span, read from the command's ``traceparent``; the coordinator's span
  around the reply (``reply <step>``) is a child of it too, read from the reply's.

Tracing is on only in a process that called :func:`start_tracing` with
OTEL_EXPORTER_OTLP_ENDPOINT set (``saga run`` does); elsewhere, and without the extra
installed, every function here returns at once. Spans are batched and sent in the
background; :meth:`Tracing.shutdown` sends what is left.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from saga.errors import ConfigurationError
from saga.messages import Command, Reply
from saga.settings import Settings

try:
    from opentelemetry import trace as otel_trace
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the otel extra is not installed: tracing stays off
    otel_trace = None  # type: ignore[assignment]
    RandomIdGenerator = object  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = structlog.get_logger("saga.tracing")

TRACER_NAME = "saga"
_TRACES_PATH = "/v1/traces"

_FORCED_TRACE_ID: ContextVar[int | None] = ContextVar("saga_forced_trace_id", default=None)
_FORCED_SPAN_ID: ContextVar[int | None] = ContextVar("saga_forced_span_id", default=None)


def saga_span_id(saga_id: uuid.UUID) -> int:
    """The span id of the saga's own span: every process derives the same one."""
    return _derived_id(f"saga/{saga_id}")


def attempt_span_id(message_id: uuid.UUID, attempt: int) -> int:
    """The span id of one attempt of one command, carried in its ``traceparent``."""
    return _derived_id(f"attempt/{message_id}/{attempt}")


def _derived_id(text: str) -> int:
    # 64 bits of a hash; never 0, which W3C reserves for "no span".
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") or 1


class _SagaIds(RandomIdGenerator):
    """Random ids, except where a derived id was asked for (the saga's and an attempt's
    span, emitted by whichever process learns how they ended)."""

    def generate_span_id(self) -> int:
        forced = _FORCED_SPAN_ID.get()
        return forced if forced is not None else int(super().generate_span_id())

    def generate_trace_id(self) -> int:
        forced = _FORCED_TRACE_ID.get()
        return forced if forced is not None else int(super().generate_trace_id())


@dataclass(frozen=True, slots=True)
class Tracing:
    """The tracer provider this process installed; :meth:`shutdown` flushes it."""

    provider: TracerProvider
    service_name: str
    endpoint: str

    def shutdown(self) -> None:
        """Send the spans still batched, then stop exporting."""
        self.provider.force_flush()
        self.provider.shutdown()


def start_tracing(settings: Settings, service_name: str) -> Tracing | None:
    """Install a tracer provider exporting over OTLP/HTTP when
    OTEL_EXPORTER_OTLP_ENDPOINT is set (OTEL_SERVICE_NAME, if set, names the process
    instead of ``service_name``); None, and nothing installed, when it is not."""
    base = settings.otel_exporter_otlp_endpoint
    if base is None:
        return None
    if otel_trace is None:
        raise ConfigurationError(
            f"OTEL_EXPORTER_OTLP_ENDPOINT={base} asks for tracing but the otel extra is not "
            "installed: pip install 'austa-saga[otel]'"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = settings.otel_service_name or service_name
    endpoint = traces_url(base)
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: name}),
        id_generator=_SagaIds(),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    otel_trace.set_tracer_provider(provider)
    return Tracing(provider, name, endpoint)


@contextlib.contextmanager
def traced(settings: Settings, service_name: str) -> Iterator[Tracing | None]:
    """:func:`start_tracing` for the block; on leaving it, send the spans still batched."""
    tracing = start_tracing(settings, service_name)
    if tracing is not None:
        log.info("tracing_started", service_name=tracing.service_name, endpoint=tracing.endpoint)
    try:
        yield tracing
    finally:
        if tracing is not None:
            tracing.shutdown()


def traces_url(base: str) -> str:
    """The OTLP/HTTP traces URL under the endpoint, as the OpenTelemetry spec builds it."""
    return base.rstrip("/") + _TRACES_PATH


def _tracer() -> Tracer | None:
    """The engine's tracer, or None while no tracer provider is installed."""
    if otel_trace is None:
        return None
    provider = otel_trace.get_tracer_provider()
    if isinstance(provider, otel_trace.ProxyTracerProvider | otel_trace.NoOpTracerProvider):
        return None
    return provider.get_tracer(TRACER_NAME)


def tracing_on() -> bool:
    """Whether this process records spans."""
    return _tracer() is not None


@contextlib.contextmanager
def handling(name: str, message: Command | Reply, **more: str) -> Iterator[None]:
    """A span named ``name`` around the block, a child of the span in the message's W3C
    trace context, with the message's attributes and ``more`` (as ``saga.<name>``);
    nothing when tracing is off."""
    tracer = _tracer()
    if tracer is None:
        yield
        return
    from opentelemetry.trace import SpanKind

    parent = TraceContextTextMapPropagator().extract(carrier=dict(message.trace))
    attributes = message_attributes(message)
    attributes.update({f"saga.{key}": value for key, value in more.items()})
    with tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ):
        yield


def message_attributes(message: Command | Reply) -> dict[str, str | int]:
    """The span attributes naming the saga, step and attempt a message is about."""
    return attempt_attributes(
        saga_id=message.saga_id,
        definition=message.definition,
        definition_version=message.definition_version,
        step=message.step_name,
        step_index=message.step_index,
        journey=message.journey,
        phase=message.phase.value,
        attempt=message.attempt,
        message_id=message.message_id,
        branch=message.branch,
    )


def attempt_attributes(
    *,
    saga_id: uuid.UUID,
    definition: str,
    definition_version: int,
    step: str,
    step_index: int,
    journey: str,
    phase: str,
    attempt: int,
    message_id: uuid.UUID,
    branch: int | None = None,
) -> dict[str, str | int]:
    """The span attributes naming one attempt of one command (``branch`` within a
    parallel group)."""
    attributes: dict[str, str | int] = {
        "saga.id": str(saga_id),
        "saga.definition": definition,
        "saga.definition_version": definition_version,
        "saga.step": step,
        "saga.step_index": step_index,
        "saga.journey": journey,
        "saga.phase": phase,
        "saga.attempt": attempt,
        "saga.message_id": str(message_id),
    }
    if branch is not None:
        attributes["saga.branch"] = branch
    return attributes


def note(**attributes: str | int) -> None:
    """Add ``attributes`` (as ``saga.<name>``) to the span around the current block."""
    if otel_trace is None:
        return
    span = otel_trace.get_current_span()
    if span.is_recording():
        span.set_attributes({f"saga.{key}": value for key, value in attributes.items()})


def attempt_ended(
    *,
    saga_id: uuid.UUID,
    message_id: uuid.UUID,
    attempt: int,
    step: str,
    started_at: datetime,
    attributes: Mapping[str, Any],
) -> None:
    """Emit the span of one attempt of a command, from its dispatch at ``started_at``
    to now, with the id its ``traceparent`` carried."""
    tracer = _tracer()
    if tracer is None:
        return
    parent = _remote_parent(saga_id, saga_span_id(saga_id))
    _emit(
        tracer,
        f"step {step}",
        trace_id=saga_id.int,
        span_id=attempt_span_id(message_id, attempt),
        parent=parent,
        started_at=started_at,
        attributes=attributes,
    )


def saga_ended(*, saga_id: uuid.UUID, started_at: datetime, attributes: Mapping[str, Any]) -> None:
    """Emit the saga's span, the root of its trace, from its start to now."""
    tracer = _tracer()
    if tracer is None:
        return
    from opentelemetry.context import Context

    _emit(
        tracer,
        f"saga {attributes.get('saga.definition', '')}".rstrip(),
        trace_id=saga_id.int,
        span_id=saga_span_id(saga_id),
        parent=Context(),
        started_at=started_at,
        attributes=attributes,
    )


def _emit(
    tracer: Tracer,
    name: str,
    *,
    trace_id: int,
    span_id: int,
    parent: Context,
    started_at: datetime,
    attributes: Mapping[str, Any],
) -> None:
    trace_token = _FORCED_TRACE_ID.set(trace_id)
    span_token = _FORCED_SPAN_ID.set(span_id)
    try:
        span: Span = tracer.start_span(
            name,
            context=parent,
            attributes=dict(attributes),
            start_time=int(started_at.timestamp() * 1e9),
        )
    finally:
        _FORCED_SPAN_ID.reset(span_token)
        _FORCED_TRACE_ID.reset(trace_token)
    span.end()


def _remote_parent(saga_id: uuid.UUID, span_id: int) -> Context:
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    context = SpanContext(saga_id.int, span_id, is_remote=True, trace_flags=TraceFlags(1))
    assert otel_trace is not None
    return otel_trace.set_span_in_context(NonRecordingSpan(context))
