"""Masking: which fields are hidden, how deep, and that both renderers of a configured
process hide them (and quote no patient data from a reason or an exception)."""

from __future__ import annotations

import json
import logging
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from pydantic import BaseModel

from saga import masking
from saga.errors import SettingsError
from saga.logging import (
    configure_logging,
    mask_sensitive,
    safe_traceback,
    saga_context,
    trace_fields,
)
from saga.masking import (
    DEFAULT_SENSITIVE_FIELDS,
    declare_sensitive,
    is_sensitive,
    mask,
    masked,
    sensitive_fields,
    summarize,
)
from saga.participant.journey import discover_journeys
from saga.settings import load_settings

SAGA_ID = uuid.UUID("4bf92f35-77b3-4da6-a3ce-929d0e0e4736")
TRACEPARENT = f"00-{SAGA_ID.hex}-00f067aa0ba902b7-01"


@pytest.fixture(autouse=True)
def declared() -> Iterator[None]:
    """Each test starts from the default names (whatever other tests in this process
    declared), and the process's names and logging are put back afterwards."""
    names = dict(masking._declared)
    masking._declared.clear()
    masking._declared.update(
        {masking._normal(name): name for name in masking.DEFAULT_SENSITIVE_FIELDS}
    )
    masking._verdicts.clear()
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        masking._declared.clear()
        masking._declared.update(names)
        masking._verdicts.clear()
        structlog.configure(**config)
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)


def test_mask_hides_sensitive_keys_at_any_depth_and_copies() -> None:
    value = {
        "user_id": "u1",
        "cpf": "98765432100",
        "patient": {"full_name": "Ana", "contacts": [{"email": "a@x"}, ("phone", {"phone": "9"})]},
        "steps": [1, 2],
    }
    assert mask(value) == {
        "user_id": "u1",
        "cpf": "***",
        "patient": {
            "full_name": "***",
            "contacts": [{"email": "***"}, ["phone", {"phone": "***"}]],
        },
        "steps": [1, 2],
    }
    assert value["cpf"] == "98765432100", "the original is left alone"
    clean = {"a": [1, {"b": 2}]}
    copy = mask(clean)
    assert copy == clean
    assert copy is not clean
    assert copy["a"][1] is not clean["a"][1]


def test_names_match_ignoring_case_underscores_and_hyphens() -> None:
    assert mask({"CPF": 1, "FullName": 2, "full-name": 3, "E_Mail": 4, "name": 5}) == {
        "CPF": "***",
        "FullName": "***",
        "full-name": "***",
        "E_Mail": "***",
        "name": 5,  # plans, goals and steps have names too
    }
    assert not is_sensitive(3)


def test_defaults_cover_personal_data_but_not_the_engines_fields() -> None:
    assert {
        "cpf",
        "email",
        "phone",
        "full_name",
        "birth_date",
        "address",
    } <= DEFAULT_SENSITIVE_FIELDS
    for engine_field in ("reason", "error", "name", "saga_id", "step", "status", "event"):
        assert not is_sensitive(engine_field)


def test_declared_names_are_masked_and_listed_as_declared() -> None:
    assert mask({"blood_type": "O-"}) == {"blood_type": "O-"}
    declare_sensitive(["blood_type", " ", ""])
    assert mask({"payload": {"Blood-Type": "O-"}}) == {"payload": {"Blood-Type": "***"}}
    assert "blood_type" in sensitive_fields()
    assert "" not in sensitive_fields()


def test_discovering_the_journeys_declares_their_fields() -> None:
    journeys = discover_journeys()
    assert journeys["plan"].sensitive_fields >= {"diagnosis_code", "procedure_code"}
    for field in ("reason", "diagnosis_code", "procedure_code", "measurement", "completion_value"):
        assert is_sensitive(field), field
    assert not is_sensitive("award_reason")


def test_log_sensitive_fields_setting_is_declared_by_configure_logging() -> None:
    settings = load_settings(log_sensitive_fields=" mothers_name, plan-card ,")
    assert settings.sensitive_fields == ("mothers_name", "plan-card")
    configure_logging(settings)
    assert mask({"mothers_name": "M", "plan_card": "1"}) == {
        "mothers_name": "***",
        "plan_card": "***",
    }


def test_a_malformed_log_sensitive_fields_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="LOG_SENSITIVE_FIELDS"):
        load_settings(log_sensitive_fields="cpf;email")


def test_masked_copies_only_what_holds_something_sensitive() -> None:
    clean = {"saga_id": "s", "result": {"points": 10, "items": [1, {"a": 2}]}}
    assert masked(clean) is clean
    listed = [{"a": 1}, {"cpf": "1"}, {"b": 2}]
    hidden = masked(listed)
    assert hidden == [{"a": 1}, {"cpf": "***"}, {"b": 2}]
    assert hidden[0] is listed[0], "clean siblings are not copied"
    assert listed[1] == {"cpf": "1"}


class Patient(BaseModel):
    cpf: str
    city: str


@dataclass
class Contact:
    email: str
    kind: str


def test_models_and_dataclasses_are_masked_not_rendered_by_repr() -> None:
    assert masked(Patient(cpf="1", city="Recife")) == {"cpf": "***", "city": "Recife"}
    assert mask([Contact(email="a@x", kind="home")]) == [{"email": "***", "kind": "home"}]


@pytest.mark.parametrize(
    ("text", "summary"),
    [
        (
            "claim invalid: diagnosis_code must be an ICD-10 code such as J45, got 'QX-1'",
            "claim invalid",
        ),
        ("step 'create_claim' failed: claim invalid: got 'QX-1'", "step 'create_claim' failed"),
        ('invalid input syntax for type uuid: "98765432100"', "invalid input syntax for type uuid"),
        ("goal not found", "goal not found"),
        ("hold expired at 2026-11-25T10:15:00+00:00", "hold expired at 2026-11-25T10:15:00+00:00"),
        ("1 validation error for Claim\ncpf\n  input_value='1'", "1 validation error for Claim"),
        (None, None),
    ],
)
def test_summarize_keeps_what_went_wrong_and_drops_what_was_quoted(
    text: str | None, summary: str | None
) -> None:
    assert summarize(text) == summary


def test_trace_ids_are_split_out_of_the_traceparent() -> None:
    assert trace_fields(TRACEPARENT) == {"trace_id": SAGA_ID.hex, "span_id": "00f067aa0ba902b7"}
    # Without a (valid) traceparent the trace is the saga's and there is no span.
    assert trace_fields("garbage", SAGA_ID) == {"trace_id": SAGA_ID.hex}
    assert trace_fields(None, SAGA_ID) == {"trace_id": SAGA_ID.hex}
    assert trace_fields(None) == {}


Emit = Callable[[], None]


def configured_output(capsys: pytest.CaptureFixture[str], log_format: str, emit: Emit) -> str:
    """What a process configured with ``log_format`` writes while ``emit`` logs."""
    configure_logging(
        load_settings(log_format=log_format, log_level="DEBUG", log_sensitive_fields="mothers_name")
    )
    declare_sensitive(["diagnosis_code"])
    emit()
    return capsys.readouterr().err


def emit_patient_lines() -> None:
    log = structlog.get_logger("saga.test")
    diagnosis = "QX-1"
    with saga_context(
        saga_id=SAGA_ID,
        definition="submit_claim",
        step="create_claim",
        journey="plan",
        phase="execute",
        attempt=2,
        traceparent=TRACEPARENT,
    ):
        log.debug(
            "command_received",
            payload={"diagnosis_code": diagnosis, "patient": {"cpf": "98765432100"}},
            context={"mothers_name": "Ophelia"},
        )
        log.info("step_refused", reason="claim invalid", cpf="98765432100")
        try:
            int(diagnosis)  # the message quotes it; the frame's source line does not
        except ValueError:
            log.exception("step_handler_crashed")
        logging.getLogger("aiokafka").warning("broker said %s", "hello")


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_configured_process_masks_in_both_renderers(
    capsys: pytest.CaptureFixture[str], log_format: str
) -> None:
    out = configured_output(capsys, log_format, emit_patient_lines)
    for secret in ("QX-1", "98765432100", "Ophelia"):
        assert secret not in out
    assert "claim invalid" in out  # the engine's own reason stays readable
    assert "step_handler_crashed" in out
    assert "ValueError: invalid literal for int() with base 10" in out
    assert "in emit_patient_lines" in out, "the traceback's frames are kept"
    assert "broker said hello" in out


def test_json_lines_carry_the_saga_context_and_third_party_lines_are_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = configured_output(capsys, "json", emit_patient_lines)
    lines: list[dict[str, Any]] = [json.loads(line) for line in out.splitlines()]
    assert [line["event"] for line in lines] == [
        "command_received",
        "step_refused",
        "step_handler_crashed",
        "broker said hello",
    ]
    for line in lines:
        assert line["saga_id"] == str(SAGA_ID)
        assert (line["definition"], line["step"], line["journey"]) == (
            "submit_claim",
            "create_claim",
            "plan",
        )
        assert (line["phase"], line["attempt"]) == ("execute", 2)
        assert (line["trace_id"], line["span_id"]) == (SAGA_ID.hex, "00f067aa0ba902b7")
        assert "traceparent" not in line
    assert lines[0]["payload"] == {"diagnosis_code": "***", "patient": {"cpf": "***"}}
    assert lines[0]["context"] == {"mothers_name": "***"}
    assert lines[1]["cpf"] == "***"
    assert lines[3]["logger"] == "aiokafka"
    assert lines[3]["level"] == "warning"


def test_lines_outside_a_saga_carry_no_saga_context(capsys: pytest.CaptureFixture[str]) -> None:
    out = configured_output(capsys, "json", lambda: structlog.get_logger().info("started"))
    assert set(json.loads(out)) == {"event", "level", "timestamp"}


def test_python_warnings_are_logged_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    def warn() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)

    line = json.loads(configured_output(capsys, "json", warn))
    assert line["logger"] == "py.warnings"
    assert "DeprecationWarning: deprecated thing" in line["event"]


def test_an_exception_without_a_traceback_shows_its_type_and_summary() -> None:
    error = KeyError("user_id")
    assert safe_traceback(error) == "KeyError: 'user_id'"
    chained = RuntimeError("gave up: 'QX-1'")
    chained.__cause__ = error
    text = safe_traceback(chained)
    assert "direct cause" in text
    assert text.endswith("RuntimeError: gave up")
    assert "QX-1" not in text


def test_the_processor_leaves_clean_lines_alone_and_the_engines_fields_readable() -> None:
    line: dict[str, Any] = {"event": "e", "result": {"points": 10}, "reason": "slot taken"}
    result = line["result"]
    assert mask_sensitive(None, "info", line) == {
        "event": "e",
        "result": {"points": 10},
        "reason": "slot taken",
    }
    assert line["result"] is result
    assert mask_sensitive(None, "info", {"reason": "engine's", "payload": {"reason": "x"}}) == {
        "reason": "engine's",
        "payload": {"reason": "x"},
    }
    declare_sensitive(["reason"])
    assert mask_sensitive(None, "info", {"reason": "engine's", "payload": {"reason": "x"}}) == {
        "reason": "engine's",
        "payload": {"reason": "***"},
    }
