"""Operators' actions: retry, compensate, skip, abort and signal, on one saga or on a
group of them (bulk, from the needs-attention page).

Every action goes in three steps, as with the CLI's dry run: a form asking why; a preview
that runs the same decision as the action with nothing written (``SagaActions.apply``
with ``dry_run``) and says exactly what will happen; and the action itself, which is
taken only if the saga still stands as the preview found it (so a second click, or a
change by someone else in between, is shown again instead of acting twice).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from saga.coordinator.signals import SignalReceipt
from saga.errors import ConfigurationError, SagaError
from saga.machine import SagaStatus
from saga.operator import queries
from saga.operator.actions import ActionOutcome, ActionRequest
from saga.operator.decisions import Action, Operator
from saga.operator.filters import parse_saga_id
from saga.store.driver import DriverConnection
from saga.web.auth import SignedIn, client_key, page
from saga.web.console import ACTIONS, Console, audit
from saga.web.responses import render

MAX_REASON = 500
MAX_RESULT = 20_000
BULK_MAX = 100


@dataclass(frozen=True, slots=True)
class ActionForm:
    action: Action
    reason: str
    step: str | None
    result: dict[str, Any]
    result_text: str


def parse_action(text: str) -> Action:
    try:
        return Action(text)
    except ValueError:
        choices = ", ".join(a.value for a in Action)
        raise ConfigurationError(
            f"action: unknown action {text[:40]!r} (one of {choices})"
        ) from None


def read_reason(form: FormData) -> str:
    reason = _text(form, "reason").strip()
    if not reason:
        raise ConfigurationError("reason: say why (it is written to the step log with your name)")
    if len(reason) > MAX_REASON:
        raise ConfigurationError(f"reason: at most {MAX_REASON} characters; got {len(reason)}")
    return reason


def read_action_form(action: Action, form: FormData) -> ActionForm:
    reason = read_reason(form)
    step: str | None = None
    result: dict[str, Any] = {}
    result_text = "{}"
    if action is Action.SKIP:
        step = _text(form, "step").strip()
        if not step:
            raise ConfigurationError("step: name the step (or its index) to skip")
        result_text = _text(form, "result").strip() or "{}"
        result = json_object(result_text, "result")
    return ActionForm(action, reason, step, result, result_text)


def json_object(text: str, field: str) -> dict[str, Any]:
    if len(text) > MAX_RESULT:
        raise ConfigurationError(f"{field}: at most {MAX_RESULT} characters of JSON")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"{field}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(value, dict):
        raise ConfigurationError(f"{field}: must be a JSON object, got {type(value).__name__}")
    return value


@page(acts=True)
async def action_form(request: Request, console: Console, user: SignedIn) -> Response:
    saga_id = parse_saga_id(request.path_params["saga_id"], "saga id")
    action = parse_action(request.path_params["action"])
    detail = await _detail(console, saga_id)
    return _action_page(request, console, detail, action, stage="form", step=detail.step_name)


@page(acts=True)
async def action_post(request: Request, console: Console, user: SignedIn) -> Response:
    saga_id = parse_saga_id(request.path_params["saga_id"], "saga id")
    action = parse_action(request.path_params["action"])
    form = await request.form()
    stage = _text(form, "stage")
    detail = await _detail(console, saga_id)
    try:
        given = read_action_form(action, form)
    except ConfigurationError as exc:
        return _action_page(
            request,
            console,
            detail,
            action,
            status=400,
            stage="form",
            form=form,
            step=_text(form, "step") or detail.step_name,
            problem=str(exc),
        )
    request_ = ActionRequest(
        action, Operator(user.actor, given.reason), step=given.step, result=given.result
    )
    preview = await console.actions.apply(saga_id, request_, dry_run=True)
    if stage == "execute" and preview.refused is None and preview.before == _text(form, "before"):
        outcome = await console.actions.apply(saga_id, request_)
        _count(outcome, user, request, given.reason)
        return render(
            request, console, "action_done.html", saga=detail, outcome=outcome, form=given
        )
    changed = stage == "execute" and preview.refused is None
    return _action_page(
        request,
        console,
        detail,
        action,
        stage="preview",
        preview=preview,
        form=given,
        changed=changed,
    )


def _action_page(
    request: Request,
    console: Console,
    detail: queries.SagaDetail,
    action: Action,
    *,
    status: int = 200,
    **context: Any,
) -> Response:
    """The action's page at one of its stages: the form, the preview, or the form again
    with what was wrong."""
    return render(
        request,
        console,
        "action.html",
        status=status,
        saga=detail,
        action=action.value,
        explained=_explained(action),
        **{"form": None, **context},
    )


@page(acts=True)
async def signal_form(request: Request, console: Console, user: SignedIn) -> Response:
    saga_id = parse_saga_id(request.path_params["saga_id"], "saga id")
    detail = await _detail(console, saga_id)
    return render(
        request, console, "signal.html", saga=detail, stage="form", values={}, problem=None
    )


@page(acts=True)
async def signal_post(request: Request, console: Console, user: SignedIn) -> Response:
    saga_id = parse_saga_id(request.path_params["saga_id"], "saga id")
    form = await request.form()
    detail = await _detail(console, saga_id)
    values = {name: _text(form, name) for name in ("event", "data", "reason", "signal_id")}
    try:
        event = values["event"].strip()
        if not event:
            raise ConfigurationError("event: name the event the saga waits for")
        data = json_object(values["data"].strip() or "{}", "data")
        reason = read_reason(form)
    except ConfigurationError as exc:
        return render(
            request,
            console,
            "signal.html",
            status=400,
            saga=detail,
            stage="form",
            values=values,
            problem=str(exc),
        )
    if _text(form, "stage") != "execute":
        # One id per previewed signal: sending the form twice delivers it once.
        values["signal_id"] = f"console-{uuid.uuid4()}"
        return render(
            request,
            console,
            "signal.html",
            saga=detail,
            stage="preview",
            values=values,
            foreseen=_foresee(detail, event),
            problem=None,
        )
    signal_id = values["signal_id"].strip()
    if not signal_id.startswith("console-") or len(signal_id) > 80:
        raise ConfigurationError("signal_id: preview the signal first")
    try:
        receipt: SignalReceipt | None = await console.coordinator().signal(
            saga_id, event, data, signal_id=signal_id, actor=user.actor, reason=reason
        )
        refused = None
    except SagaError as exc:
        receipt, refused = None, str(exc)
    ACTIONS.labels("signal", "refused" if refused else "applied").inc()
    audit(
        "console_action",
        action="signal",
        saga_id=str(saga_id),
        signal_event=event,
        actor=user.actor,
        why=reason,
        refused=refused,
        outcome=None if receipt is None else receipt.outcome.value,
        client=client_key(request),
    )
    return render(
        request,
        console,
        "signal_done.html",
        saga=detail,
        receipt=receipt,
        refused=refused,
        event=event,
    )


@page(acts=True)
async def bulk_post(request: Request, console: Console, user: SignedIn) -> Response:
    """A group from the needs-attention page: previewed saga by saga, then acted on."""
    form = await request.form()
    action = parse_action(_text(form, "action"))
    if action is Action.SKIP:
        raise ConfigurationError("action: skip names one saga's step; skip from the saga's page")
    ids = [parse_saga_id(text, "ids") for text in _all(form, "ids")]
    if not ids:
        raise ConfigurationError("ids: choose at least one saga")
    if len(ids) > BULK_MAX:
        raise ConfigurationError(f"ids: at most {BULK_MAX} sagas at once; got {len(ids)}")
    given = read_action_form(action, form)
    request_ = ActionRequest(action, Operator(user.actor, given.reason))
    previews = [await console.actions.apply(saga_id, request_, dry_run=True) for saga_id in ids]
    outcomes: list[ActionOutcome] = []
    if _text(form, "stage") == "execute":
        before = {text.partition("=")[0]: text.partition("=")[2] for text in _all(form, "before")}
        for preview in previews:
            if preview.refused is None and before.get(str(preview.saga_id)) == preview.before:
                outcome = await console.actions.apply(preview.saga_id, request_)
                _count(outcome, user, request, given.reason)
                outcomes.append(outcome)
            else:
                outcomes.append(preview)
    return render(
        request,
        console,
        "bulk.html",
        action=action.value,
        explained=_explained(action),
        form=given,
        ids=ids,
        previews=previews,
        outcomes=outcomes,
        executed=bool(outcomes),
    )


def _explained(action: Action) -> str:
    return action.description[0].upper() + action.description[1:] + "."


def _foresee(detail: queries.SagaDetail, event: str) -> str:
    """What sending ``event`` will do, read from the saga as it stands (the coordinator
    decides for good when it is sent)."""
    if detail.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.ABORTED):
        return f"Nothing: the saga is {detail.status.value}, so the signal will be refused."
    if detail.waiting_for == event:
        return (
            f"The saga waits for {event!r} at {detail.step_name!r}: it moves on at once, and "
            f"the signal's data lands in its context under {detail.step_name!r}."
        )
    return (
        f"The saga is not waiting for {event!r} now: the signal is kept and applied when "
        "the saga reaches a wait for it; refused if its definition never waits for it."
    )


def _count(outcome: ActionOutcome, user: SignedIn, request: Request, reason: str) -> None:
    ACTIONS.labels(outcome.action.value, "applied" if outcome.applied else "refused").inc()
    audit(
        "console_action",
        action=outcome.action.value,
        saga_id=str(outcome.saga_id),
        actor=user.actor,
        why=reason,
        applied=outcome.applied,
        refused=outcome.refused,
        before=outcome.before,
        after=outcome.after,
        client=client_key(request),
    )


async def _detail(console: Console, saga_id: uuid.UUID) -> queries.SagaDetail:
    async def work(conn: DriverConnection) -> queries.SagaDetail:
        return await queries.saga_detail(conn, saga_id)

    return await console.read(work, name="saga")


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _all(form: FormData, name: str) -> Sequence[str]:
    return [value for value in form.getlist(name) if isinstance(value, str) and value.strip()]
