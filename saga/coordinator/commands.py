"""Turning the state machine's decisions into command envelopes and log rows."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from saga.definition import SagaDefinition
from saga.machine import Dispatch, LogEntry, LogStatus, Phase, command_message_id
from saga.messages import TRACEPARENT, Command
from saga.store.saga_log import LogRow, OutboxRow


def traceparent(saga_id: uuid.UUID) -> str:
    """W3C trace context: the saga is the trace, each command a span of it."""
    return f"00-{saga_id.hex}-{secrets.token_hex(8)}-01"


def build_command(
    *,
    saga_id: uuid.UUID,
    definition: SagaDefinition,
    dispatch: Dispatch,
    payload: Mapping[str, Any],
    context: Mapping[str, Any],
    reply_to: str,
) -> Command:
    step = definition.steps[dispatch.step_index]
    execute = dispatch.phase is Phase.EXECUTE
    action = step.action if execute else step.compensation
    assert action is not None, "the machine compensates only compensatable steps"
    return Command(
        message_id=command_message_id(saga_id, dispatch.step_index, dispatch.phase),
        saga_id=saga_id,
        definition=definition.name,
        definition_version=definition.version,
        step_index=dispatch.step_index,
        step_name=step.name,
        journey=step.journey,
        phase=dispatch.phase,
        attempt=dispatch.attempt,
        trace={TRACEPARENT: traceparent(saga_id)},
        action=action,
        isolation=step.isolation,
        timeout_ms=step.timeout_ms,
        payload=dict(payload),
        context=dict(context),
        reply_to=reply_to,
        undoes=None if execute else command_message_id(saga_id, dispatch.step_index, Phase.EXECUTE),
    )


_OUTBOX_NAMESPACE = uuid.UUID("9d3b6c1a-7e52-4f08-b1c4-6a2e8f0d3b57")


def outbox_row(command: Command, topic: str, delay: float) -> OutboxRow:
    """Every attempt of a command carries the command's id (so participants dedup it) but
    is its own outbox row, keyed by the command id and the attempt."""
    return OutboxRow(
        message_id=uuid.uuid5(_OUTBOX_NAMESPACE, f"{command.message_id}/{command.attempt}"),
        topic=topic,
        key=command.key,
        payload=command.to_bytes(),
        headers={TRACEPARENT: command.trace[TRACEPARENT]},
        delay=delay,
    )


def log_rows(
    saga_id: uuid.UUID,
    definition: SagaDefinition,
    entries: Sequence[LogEntry],
    *,
    command: Command | None,
    attempt_started_at: datetime | None,
) -> list[LogRow]:
    rows = []
    for entry in entries:
        step = definition.steps[entry.step_index]
        dispatched = entry.status is LogStatus.DISPATCHED
        rows.append(
            LogRow(
                entry=entry,
                step_name=step.name,
                journey=step.journey,
                message_id=command_message_id(saga_id, entry.step_index, entry.phase),
                request=(
                    {"action": command.action, "context": command.context}
                    if dispatched and command is not None
                    else None
                ),
                started_at=None if dispatched else attempt_started_at,
            )
        )
    return rows
