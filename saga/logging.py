"""structlog set-up: readable console lines in development, JSON lines in production.

Both the engine's structlog lines and the standard library's (aiokafka, asyncio, warnings)
go through one chain ending in one renderer, so a production stream is JSON lines only.
Before rendering, :func:`mask_sensitive` hides every sensitive field (see
:mod:`saga.masking`) and exceptions are shown with their frames and type but only the
safe part of their message.

Lines about a saga carry its context, bound with :func:`saga_context` where a reply, a
command or a timeout is handled: ``saga_id``, ``definition``, ``step``, ``journey``,
``phase``, ``attempt``, ``trace_id`` and ``span_id``.
"""

from __future__ import annotations

import logging
import sys
import traceback
import uuid
from collections.abc import Iterator, MutableMapping
from contextlib import AbstractContextManager
from typing import Any

import structlog

from saga.masking import MASK, SCALARS, declare_sensitive, is_sensitive, masked, summarize
from saga.settings import LogFormat, Settings

# The engine's own top-level fields: what a line is about and why. The engine puts no
# patient data in them (free text only through :func:`saga.masking.summarize`), so a
# journey declaring a field of the same name (care's visit ``reason``) hides it inside
# payloads and results without blanking the engine's account of its own decisions.
ENGINE_FIELDS: frozenset[str] = frozenset(
    {
        "event",
        "level",
        "timestamp",
        "logger",
        "exception",
        "saga_id",
        "definition",
        "version",
        "step",
        "journey",
        "action",
        "phase",
        "attempt",
        "trace_id",
        "span_id",
        "status",
        "outcome",
        "reason",
        "error",
        "error_type",
        "why",
        "name",
        "job",
    }
)


def mask_sensitive(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: every sensitive field of the line, at any depth, is ``***``.

    Runs only for lines that are emitted, and copies a value only when it holds
    something to hide.
    """
    for key, value in event_dict.items():
        if key not in ENGINE_FIELDS and is_sensitive(key):
            event_dict[key] = MASK
        elif value.__class__ not in SCALARS:
            event_dict[key] = masked(value)
    return event_dict


def format_exception_safely(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor in place of ``format_exc_info``: the traceback's frames and
    each exception's type, with only :func:`~saga.masking.summarize` of its message (a
    driver or validation error may quote the patient's data)."""
    exc_info = event_dict.pop("exc_info", None)
    if not exc_info:
        return event_dict
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, tuple):
        exc_info = exc_info[1]
    if isinstance(exc_info, BaseException):
        event_dict["exception"] = safe_traceback(exc_info)
    return event_dict


def safe_traceback(exc: BaseException) -> str:
    """Like ``traceback.format_exception``, but each message is summarised."""
    return "".join(_safe_chain(exc, set())).rstrip("\n")


def _safe_chain(exc: BaseException, seen: set[int]) -> Iterator[str]:
    seen.add(id(exc))
    cause, context = exc.__cause__, exc.__context__
    if cause is not None and id(cause) not in seen:
        yield from _safe_chain(cause, seen)
        yield "\nThe above exception was the direct cause of the following exception:\n\n"
    elif context is not None and not exc.__suppress_context__ and id(context) not in seen:
        yield from _safe_chain(context, seen)
        yield "\nDuring handling of the above exception, another exception occurred:\n\n"
    if exc.__traceback__ is not None:
        yield "Traceback (most recent call last):\n"
        yield from traceback.format_tb(exc.__traceback__)
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    message = summarize(str(exc))
    yield f"{name}: {message}\n" if message else f"{name}\n"


def trace_fields(traceparent: str | None, saga_id: uuid.UUID | None = None) -> dict[str, str]:
    """``trace_id`` and ``span_id`` of a W3C ``traceparent``
    (``00-<32 hex trace id>-<16 hex span id>-<flags>``). Without one, the trace is the
    saga's (the coordinator makes the saga id the trace id) and there is no span."""
    if traceparent:
        parts = traceparent.split("-")
        if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
            return {"trace_id": parts[1], "span_id": parts[2]}
    return {} if saga_id is None else {"trace_id": saga_id.hex}


def saga_context(
    *,
    saga_id: uuid.UUID,
    definition: str,
    step: str,
    journey: str | None,
    phase: str,
    attempt: int,
    traceparent: str | None = None,
    **more: Any,
) -> AbstractContextManager[None]:
    """Bind the context of one saga's step to every line logged inside the block, by
    this task and the tasks it starts (the handler, the inbox and outbox code, the
    database runner)."""
    return structlog.contextvars.bound_contextvars(
        saga_id=str(saga_id),
        definition=definition,
        step=step,
        journey=journey,
        phase=phase,
        attempt=attempt,
        **trace_fields(traceparent, saga_id),
        **more,
    )


def configure_logging(settings: Settings) -> None:
    """Route structlog and the standard library's logging through one renderer, and add
    ``LOG_SENSITIVE_FIELDS`` to the masked names."""
    declare_sensitive(settings.sensitive_fields)
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    renderer: structlog.types.Processor
    if settings.effective_log_format is LogFormat.JSON:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(),
            # Never a formatter that prints a frame's local variables (rich's does).
            exception_formatter=structlog.dev.plain_traceback,
        )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    last: list[structlog.types.Processor] = [format_exception_safely, mask_sensitive, renderer]
    structlog.configure(
        processors=[*shared, *last],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *last],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # Third-party libraries log through the standard library; keep them at WARNING so
    # their chatter does not drown the engine's own events.
    root.setLevel(max(level, logging.WARNING))
    # Python's warnings would otherwise be printed as plain text beside the JSON lines.
    logging.captureWarnings(True)
