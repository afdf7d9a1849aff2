"""The wire envelope: commands and replies round-trip; bad bytes are rejected with a reason."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from saga.definition import IsolationLevel
from saga.errors import MessageRejected, SagaError
from saga.machine import Outcome, Phase, command_message_id
from saga.messages import SCHEMA_VERSION, TRACEPARENT, Command, Reply, decode

SAGA_ID = uuid.UUID("7d4c1f0a-2b3e-4c5d-8e9f-0a1b2c3d4e5f")
TRACE = {TRACEPARENT: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def command(**overrides: Any) -> Command:
    fields: dict[str, Any] = {
        "message_id": command_message_id(SAGA_ID, 1, Phase.EXECUTE),
        "saga_id": SAGA_ID,
        "definition": "book_appointment",
        "definition_version": 2,
        "step_index": 1,
        "step_name": "authorize_coverage",
        "journey": "plan",
        "phase": Phase.EXECUTE,
        "attempt": 3,
        "trace": TRACE,
        "action": "authorize_coverage",
        "isolation": IsolationLevel.SERIALIZABLE,
        "timeout_ms": 2500,
        "payload": {"plan_id": "p-1", "amount_cents": 12_500, "items": [1, 2.5, None]},
        "context": {"slot_id": "s-9", "nested": {"ok": True}},
        "reply_to": "saga.replies",
    }
    fields.update(overrides)
    return Command(**fields)


def reply(**overrides: Any) -> Reply:
    fields: dict[str, Any] = {
        "message_id": uuid.UUID("11111111-2222-4333-8444-555555555555"),
        "saga_id": SAGA_ID,
        "definition": "book_appointment",
        "definition_version": 2,
        "step_index": 1,
        "step_name": "authorize_coverage",
        "journey": "plan",
        "phase": Phase.EXECUTE,
        "attempt": 3,
        "trace": TRACE,
        "in_reply_to": command_message_id(SAGA_ID, 1, Phase.EXECUTE),
        "outcome": Outcome.FAILED,
        "result": {"authorization": None},
        "reason": "not covered: plan limit reached",
    }
    fields.update(overrides)
    return Reply(**fields)


def document(message: Command | Reply) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(message.to_bytes())
    return loaded


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(command(), id="command"),
        pytest.param(
            command(
                message_id=command_message_id(SAGA_ID, 1, Phase.COMPENSATE),
                phase=Phase.COMPENSATE,
                action="void_authorization",
                undoes=command_message_id(SAGA_ID, 1, Phase.EXECUTE),
                attempt=1,
            ),
            id="compensation-command",
        ),
        pytest.param(reply(), id="failed-reply"),
        pytest.param(
            reply(outcome=Outcome.SUCCEEDED, result={"authorization": "a-1"}, reason=None),
            id="succeeded-reply",
        ),
    ],
)
def test_a_message_round_trips_through_bytes(message: Command | Reply) -> None:
    decoded = decode(message.to_bytes())
    assert type(decoded) is type(message)
    assert decoded == message
    assert decoded.to_bytes() == message.to_bytes()
    assert decoded.key == str(SAGA_ID)


def test_a_command_decodes_to_the_values_it_was_built_with() -> None:
    decoded = decode(command().to_bytes())
    assert isinstance(decoded, Command)
    assert decoded.kind == "command"
    assert decoded.schema_version == SCHEMA_VERSION
    assert decoded.message_id == command_message_id(SAGA_ID, 1, Phase.EXECUTE)
    assert decoded.saga_id == SAGA_ID
    assert decoded.phase is Phase.EXECUTE
    assert decoded.isolation is IsolationLevel.SERIALIZABLE
    assert decoded.attempt == 3
    assert decoded.timeout_ms == 2500
    assert decoded.payload == {"plan_id": "p-1", "amount_cents": 12_500, "items": [1, 2.5, None]}
    assert decoded.context == {"slot_id": "s-9", "nested": {"ok": True}}
    assert decoded.trace == TRACE
    assert decoded.undoes is None


def test_a_reply_decodes_to_the_values_it_was_built_with() -> None:
    decoded = decode(reply().to_bytes())
    assert isinstance(decoded, Reply)
    assert decoded.kind == "reply"
    assert decoded.outcome is Outcome.FAILED
    assert decoded.in_reply_to == command_message_id(SAGA_ID, 1, Phase.EXECUTE)
    assert decoded.reason == "not covered: plan limit reached"
    assert decoded.result == {"authorization": None}


def test_to_document_is_the_json_on_the_wire() -> None:
    message = command()
    assert message.to_document() == document(message)
    assert document(message)["message_id"] == str(message.message_id)
    assert document(message)["isolation"] == "SERIALIZABLE"
    assert document(message)["kind"] == "command"
    assert document(reply())["outcome"] == "failed"


def test_defaults_fill_in_what_a_writer_left_out() -> None:
    doc = document(command())
    for optional in ("schema_version", "trace", "isolation", "payload", "context", "undoes"):
        del doc[optional]
    decoded = decode(encode(doc))
    assert isinstance(decoded, Command)
    assert decoded.schema_version == SCHEMA_VERSION
    assert decoded.trace == {}
    assert decoded.isolation is IsolationLevel.READ_COMMITTED
    assert decoded.payload == {}
    assert decoded.undoes is None


def test_unknown_fields_are_ignored() -> None:
    for message in (command(), reply()):
        doc = document(message)
        doc["added_in_a_later_release"] = {"anything": [1, 2, 3]}
        doc["priority"] = 7
        decoded = decode(encode(doc))
        assert decoded == message
        assert not hasattr(decoded, "priority")


# --- rejections -----------------------------------------------------------------------------


def _without(field: str) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc.pop(field)


def _with(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc.update({field: value})


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"\x00\xffnot json at all", "Invalid JSON", id="garbage-bytes"),
        pytest.param(b'{"kind": "command", ', "Invalid JSON", id="truncated-json"),
        pytest.param(b"", "empty message", id="empty-bytes"),
        pytest.param(None, "empty message", id="none"),
        pytest.param(b"[1, 2]", "should be an object", id="json-array"),
        pytest.param(b'"command"', "should be an object", id="json-string"),
        pytest.param(b"42", "should be an object", id="json-number"),
        pytest.param(b"null", "should be an object", id="json-null"),
        pytest.param(b"{}", "discriminator 'kind'", id="empty-object"),
    ],
)
def test_bytes_that_are_no_envelope_are_rejected(data: bytes | None, expected: str) -> None:
    with pytest.raises(MessageRejected) as caught:
        decode(data)
    assert isinstance(caught.value, SagaError)
    assert expected in caught.value.reason
    assert str(caught.value) == caught.value.reason


@pytest.mark.parametrize(
    ("message", "change", "field", "expected"),
    [
        pytest.param(command(), _without("saga_id"), "command.saga_id", "Field required",
                     id="missing-saga-id"),
        pytest.param(command(), _without("action"), "command.action", "Field required",
                     id="missing-action"),
        pytest.param(reply(), _without("outcome"), "reply.outcome", "Field required",
                     id="missing-outcome"),
        pytest.param(reply(), _without("in_reply_to"), "reply.in_reply_to", "Field required",
                     id="missing-in-reply-to"),
        pytest.param(command(), _without("kind"), "'kind'", "Unable to extract tag",
                     id="missing-kind"),
        pytest.param(command(), _with("kind", "query"), "'kind'", "'query'", id="wrong-kind"),
        pytest.param(command(), _with("schema_version", 99), "command.schema_version",
                     "less than or equal to 1", id="future-schema-version"),
        pytest.param(reply(), _with("schema_version", 2), "reply.schema_version",
                     "less than or equal to 1", id="next-schema-version-reply"),
        pytest.param(command(), _with("schema_version", 0), "command.schema_version",
                     "greater than or equal to 1", id="schema-version-zero"),
        pytest.param(command(), _with("message_id", "not-a-uuid"), "command.message_id",
                     "valid UUID", id="invalid-message-id"),
        pytest.param(command(), _with("saga_id", 12345), "command.saga_id", "UUID",
                     id="numeric-saga-id"),
        pytest.param(reply(), _with("in_reply_to", "1234"), "reply.in_reply_to", "valid UUID",
                     id="invalid-in-reply-to"),
        pytest.param(command(), _with("undoes", "xyz"), "command.undoes", "UUID",
                     id="invalid-undoes"),
        pytest.param(command(), _with("phase", "rollback"), "command.phase", "'execute'",
                     id="unknown-phase"),
        pytest.param(reply(), _with("outcome", "maybe"), "reply.outcome", "'succeeded'",
                     id="unknown-outcome"),
        pytest.param(command(), _with("isolation", "CHAOS"), "command.isolation",
                     "'SERIALIZABLE'", id="unknown-isolation"),
        pytest.param(command(), _with("attempt", 0), "command.attempt",
                     "greater than or equal to 1", id="attempt-zero"),
        pytest.param(command(), _with("step_index", -1), "command.step_index",
                     "greater than or equal to 0", id="negative-step-index"),
        pytest.param(command(), _with("timeout_ms", 0), "command.timeout_ms", "greater than 0",
                     id="zero-timeout"),
        pytest.param(command(), _with("payload", [1, 2]), "command.payload", "an object",
                     id="payload-not-an-object"),
        pytest.param(command(), _with("trace", {"traceparent": 1}), "command.trace.traceparent",
                     "string", id="trace-value-not-a-string"),
    ],
)  # fmt: skip
def test_an_invalid_field_is_rejected_and_named(
    message: Command | Reply,
    change: Callable[[dict[str, Any]], None],
    field: str,
    expected: str,
) -> None:
    doc = document(message)
    change(doc)
    with pytest.raises(MessageRejected) as caught:
        decode(encode(doc))
    reason = caught.value.reason
    assert reason.startswith("invalid envelope: ")
    assert field in reason
    assert expected in reason


def test_a_rejection_lists_at_most_five_problems_and_counts_the_rest() -> None:
    doc = document(command())
    for name in ("message_id", "saga_id", "definition", "step_name", "journey", "action", "phase"):
        del doc[name]
    with pytest.raises(MessageRejected) as caught:
        decode(encode(doc))
    reason = caught.value.reason
    assert reason.count("Field required") == 5
    assert reason.endswith("(and 2 more)")


def test_a_bool_in_an_integer_field_is_rejected() -> None:
    doc = document(command())
    doc["attempt"] = True
    with pytest.raises(MessageRejected, match="attempt"):
        decode(encode(doc))
