"""Turning the state machine's decisions into command envelopes and log rows."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from saga.definition import SagaDefinition
from saga.machine import Dispatch, LogEntry, LogStatus, Phase, Transition, command_message_id
from saga.messages import TRACEPARENT, Command
from saga.store.outbox import PendingMessage
from saga.store.records import InstanceRow, LogRow, OutboxRow
from saga.transport import Topics


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


DEADLOCK = "40P01"
"""The SQLSTATE of a deadlock; every other retried conflict is a serialization failure."""

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


@dataclass(frozen=True, slots=True)
class PreparedWrite:
    """Everything one transition writes, ready for
    :meth:`saga.store.port.SagaLog.write_transition`."""

    command: Command | None
    outbox: OutboxRow | None
    log: list[LogRow]
    step_timeout: float

    @property
    def delay(self) -> float:
        """Seconds the command waits before it is sent (a retry's backoff)."""
        return self.outbox.delay if self.outbox is not None else 0.0

    @property
    def pending(self) -> PendingMessage | None:
        """The command as the publisher sends it after the commit."""
        if self.outbox is None:
            return None
        box = self.outbox
        return PendingMessage(box.message_id, box.topic, box.key, box.payload, dict(box.headers))


def prepare_write(
    instance: InstanceRow,
    definition: SagaDefinition,
    transition: Transition,
    topics: Topics,
    *,
    transaction_retries: Mapping[str, int] | None = None,
) -> PreparedWrite:
    """The command, outbox row and log rows of ``transition`` (the coordinator's replies
    and the worker's timeouts write them the same way). ``transaction_retries`` are the
    reply's, recorded on the row of the outcome it reports."""
    command = None
    outbox = None
    if transition.dispatch is not None:
        command = build_command(
            saga_id=instance.id,
            definition=definition,
            dispatch=transition.dispatch,
            payload=instance.payload,
            context=transition.state.context,
            reply_to=topics.replies,
        )
        outbox = outbox_row(command, topics.commands(command.journey), transition.dispatch.delay)
    rows = log_rows(
        instance.id,
        definition,
        transition.log,
        command=command,
        attempt_started_at=instance.step_started_at,
    )
    if transaction_retries and rows:
        # The machine logs the event's outcome first, before any dispatch it causes.
        deadlocks = transaction_retries.get(DEADLOCK, 0)
        rows[0] = replace(
            rows[0],
            deadlock_retries=deadlocks,
            serialization_retries=sum(transaction_retries.values()) - deadlocks,
        )
    return PreparedWrite(
        command, outbox, rows, definition.steps[transition.state.current_step].timeout
    )
