"""Events an operator must act on: one alert-level log line and one metric each, whichever
process noticed."""

from __future__ import annotations

import uuid

import structlog

from saga import metrics
from saga.masking import summarize

log = structlog.get_logger("saga.alerts")


def saga_parked(saga_id: uuid.UUID, definition: str, reason: str | None) -> None:
    """A saga stopped for an operator: nothing will move it until someone does."""
    metrics.SAGAS_PARKED.labels(definition).inc()
    log.error(
        "saga_parked",
        alert="operator_needed",
        saga_id=str(saga_id),
        definition=definition,
        # The whole reason is in shared.saga_instance.error; it may quote a step's input.
        reason=summarize(reason),
    )
