"""Helpers for users' tests: run a saga to its end and see a failure raised, not logged."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from saga.coordinator import Coordinator, SagaSummary
from saga.definition import SagaDefinition
from saga.errors import SagaFailed
from saga.machine import SagaStatus


async def run_saga(
    coordinator: Coordinator,
    definition: SagaDefinition | str,
    payload: Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
    within: float = 30.0,
) -> SagaSummary:
    """Start a saga and wait for it; raise :class:`~saga.errors.SagaFailed` unless it
    completed (the error says whether it was compensated or parked, and why)."""
    saga_id: uuid.UUID = await coordinator.start(
        definition, payload, idempotency_key=idempotency_key
    )
    summary = await coordinator.wait(saga_id, timeout=within)
    if summary.status is not SagaStatus.COMPLETED:
        raise SagaFailed(saga_id, summary.status.value, summary.error)
    return summary
