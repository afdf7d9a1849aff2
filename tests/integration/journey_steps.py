"""Calling a journey's step handlers directly, as the journey's own database role, the way
the participant runtime calls them: one transaction each, at the isolation level of the
saga step the action belongs to."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest

from journeys.care.sagas import BOOK_APPOINTMENT
from journeys.health.sagas import COMPLETE_HEALTH_GOAL
from journeys.plan.sagas import SUBMIT_CLAIM
from saga.definition import SagaDefinition, Step
from saga.errors import StepRefused
from saga.machine import Phase
from saga.messages import Command
from saga.participant import StepContext
from saga.participant.journey import JourneyService
from saga.retry import RetryPolicy
from saga.store import Database, IsolationLevel
from tests.integration.conftest import SagaEnvironment

SAGAS = (BOOK_APPOINTMENT, SUBMIT_CLAIM, COMPLETE_HEALTH_GOAL)


@asynccontextmanager
async def role_database(env: SagaEnvironment, service: JourneyService) -> AsyncIterator[Database]:
    """A Database on ``env``'s database logged in as ``service``'s own role."""
    db = Database.from_settings(
        env.settings,
        url=service.database_url(env.database_url),
        application_name=f"test-{service.name}-steps",
    )
    try:
        yield db
    finally:
        await db.dispose()


def saga_step(
    action: str, definition: SagaDefinition | None = None
) -> tuple[SagaDefinition, int, Step]:
    """The saga (``definition``, else the first of :data:`SAGAS` that has one), index and
    step whose action or compensation is ``action``."""
    for saga in SAGAS if definition is None else (definition,):
        for index, step in enumerate(saga.steps):
            if action in (step.action, step.compensation):
                return saga, index, step
    raise LookupError(f"no saga step runs {action!r}")


async def run_step(
    db: Database,
    service: JourneyService,
    action: str,
    saga_id: uuid.UUID,
    payload: Mapping[str, Any] | None = None,
    *,
    context: Mapping[str, Any] | None = None,
    definition: SagaDefinition | None = None,
    attempt: int = 1,
    phase: Phase | None = None,
    isolation: IsolationLevel | None = None,
    retry: RetryPolicy | None = None,
) -> Mapping[str, Any]:
    """Run ``service``'s handler for ``action`` on the command the coordinator would send
    for it (as the step of ``definition``, by default of the first saga with the action;
    a step's compensation in the COMPENSATE phase), in its own transaction on ``db`` at the
    step's isolation level, conflicts re-run by ``retry`` (by default the service's policy,
    else the database's). A refusal propagates as StepRefused, its writes rolled back.
    Every handler of these journeys returns a result: it is returned."""
    definition, index, step = saga_step(action, definition)
    command = Command(
        message_id=uuid.uuid4(),
        saga_id=saga_id,
        definition=definition.name,
        definition_version=definition.version,
        step_index=index,
        step_name=step.name,
        journey=service.name,
        phase=phase or (Phase.EXECUTE if action == step.action else Phase.COMPENSATE),
        attempt=attempt,
        action=action,
        isolation=isolation or step.isolation,
        timeout_ms=step.timeout_ms,
        payload=dict(payload or {}),
        context=dict(context or {}),
        reply_to="replies",
    )
    handler = service.handlers[action]
    result = await db.run_driver(
        lambda conn: handler(StepContext(conn, command)),
        isolation=command.isolation,
        retry=retry or service.retry,
        name=f"test.{service.name}.{action}",
    )
    assert result is not None, f"{action} returned nothing"
    return result


async def refusal(
    db: Database,
    service: JourneyService,
    action: str,
    saga_id: uuid.UUID,
    payload: Mapping[str, Any] | None = None,
    **options: Any,
) -> str:
    """The reason :func:`run_step` (given ``options``) is refused for; that it is refused
    is asserted."""
    with pytest.raises(StepRefused) as caught:
        await run_step(db, service, action, saga_id, payload, **options)
    return caught.value.reason
