"""The message envelope: the one shape every command and reply has on the wire.

A :class:`Command` goes from a coordinator to a journey's command topic; a :class:`Reply`
comes back on the reply topic. Both carry the schema version, their own message id, the
saga id (also the Kafka key, so one saga's messages stay in order on one partition), the
step, the phase and the attempt, and W3C trace context. :func:`decode` turns bytes into
one of them or raises :class:`~saga.errors.MalformedMessage` (a
:class:`~saga.errors.MessageRejected`) saying what was wrong.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError

from saga.definition import IsolationLevel
from saga.errors import MalformedMessage
from saga.machine import Outcome, Phase, SagaStatus

SCHEMA_VERSION = 1
"""The newest envelope version this code writes and reads."""

TRACEPARENT = "traceparent"
_NO_BRANCH = {"branch"}


class _Envelope(BaseModel):
    # Numbers are strict (``true`` is not attempt 1). Unknown fields are ignored so a newer
    # writer of the same schema version can add optional data without stopping old readers.
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Annotated[StrictInt, Field(ge=1, le=SCHEMA_VERSION)] = SCHEMA_VERSION
    message_id: uuid.UUID
    saga_id: uuid.UUID
    definition: str
    definition_version: Annotated[StrictInt, Field(ge=1)]
    step_index: Annotated[StrictInt, Field(ge=0)]
    step_name: str
    journey: str
    phase: Phase
    attempt: Annotated[StrictInt, Field(ge=1)]
    trace: dict[str, str] = Field(default_factory=dict)
    branch: Annotated[StrictInt, Field(ge=0)] | None = None
    """Which branch of the parallel group at ``step_index`` the message is about; absent
    (and left out of the bytes) for a plain step, so those messages are as they were."""

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude=_NO_BRANCH if self.branch is None else None).encode()

    def to_document(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=_NO_BRANCH if self.branch is None else None)

    @property
    def key(self) -> str:
        return str(self.saga_id)


class Command(_Envelope):
    """Run ``action`` of ``journey`` for one step of one saga."""

    kind: Literal["command"] = "command"
    action: str
    isolation: IsolationLevel = IsolationLevel.READ_COMMITTED
    timeout_ms: Annotated[StrictInt, Field(gt=0)]
    payload: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    reply_to: str
    undoes: uuid.UUID | None = None
    """For a compensation: the message id of the command it undoes."""


class Reply(_Envelope):
    """What became of one attempt of a command."""

    kind: Literal["reply"] = "reply"
    in_reply_to: uuid.UUID
    outcome: Outcome
    result: dict[str, Any] = Field(default_factory=dict)
    reason: str | None = None
    transaction_retries: dict[str, Annotated[StrictInt, Field(ge=0)]] = Field(default_factory=dict)
    """SQLSTATE → how often the participant re-ran the step's transaction (40001, 40P01)."""


class _ChildMessage(BaseModel):
    """Between a parent saga and its child, on the coordinators' reply topic: written to
    the coordinator's outbox by the transition that causes it, so it goes out exactly
    when that transition commits, and applied like a reply (stale or repeated ones are
    ignored by the state machine)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Annotated[StrictInt, Field(ge=1, le=SCHEMA_VERSION)] = SCHEMA_VERSION
    message_id: uuid.UUID
    saga_id: uuid.UUID
    """The saga the message is for (the Kafka key)."""
    parent_id: uuid.UUID
    child_id: uuid.UUID
    step_index: Annotated[StrictInt, Field(ge=0)]
    """The parent's ``SubSaga`` position."""
    attempt: Annotated[StrictInt, Field(ge=1)]
    trace: dict[str, str] = Field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @property
    def key(self) -> str:
        return str(self.saga_id)


class ChildEnd(_ChildMessage):
    """To the parent: its child saga ended (completed, compensated or aborted)."""

    kind: Literal["child_end"] = "child_end"
    status: SagaStatus
    context: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class CompensateChildRequest(_ChildMessage):
    """To the child: its parent undoes the position that started it."""

    kind: Literal["compensate_child"] = "compensate_child"
    reason: str | None = None


Message = Command | Reply | ChildEnd | CompensateChildRequest
Envelope = Annotated[Message, Field(discriminator="kind")]
_ENVELOPE: TypeAdapter[Message] = TypeAdapter(Envelope)


def decode(data: bytes | None) -> Message:
    """Parse and validate one message; :class:`MalformedMessage` names what was wrong."""
    if not data:
        raise MalformedMessage("empty message")
    try:
        return _ENVELOPE.validate_json(data)
    except ValidationError as exc:
        raise MalformedMessage(f"invalid envelope: {_describe(exc)}") from exc


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False)[:5]:
        where = ".".join(str(part) for part in error["loc"]) or "message"
        problems.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")
