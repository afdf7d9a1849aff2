"""The sagas list (every filter ``saga ls`` has, plus search), its live update, one saga's
page with its timeline, and the download of its whole history."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from saga.errors import ConfigurationError
from saga.machine import SagaStatus
from saga.operator import queries
from saga.operator.decisions import Action
from saga.operator.documents import detail_document
from saga.operator.filters import (
    Cursor,
    SagaFilter,
    SagaListing,
    check_window,
    parse_attributes,
    parse_duration,
    parse_key,
    parse_moment,
    parse_names,
    parse_saga_id,
    parse_statuses,
    select_sagas,
)
from saga.operator.render import json_default
from saga.store.driver import DriverConnection
from saga.web.auth import SignedIn, page
from saga.web.console import Console
from saga.web.formats import short_error
from saga.web.responses import render
from saga.web.timeline_svg import timeline_svg

PAGE_SIZE = 50
LIVE_MAX_IDS = 200
IN_FLIGHT = frozenset({SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.WAITING})

# The query parameters the list understands, each read by :func:`read_filter`.
FILTER_PARAMETERS = (
    "status",
    "definition",
    "journey",
    "since",
    "until",
    "stuck_for",
    "parked",
    "waiting_for",
    "children_of",
    "attr",
    "key",
)


def read_filter(params: QueryParams, now: datetime) -> SagaFilter:
    """The :class:`SagaFilter` a list URL describes; a bad value raises
    :class:`ConfigurationError` naming the parameter, as the CLI names its flag."""

    def given(name: str) -> list[str]:
        return [value for value in params.getlist(name) if value.strip()]

    def one(name: str) -> str | None:
        values = given(name)
        if len(values) > 1:
            raise ConfigurationError(f"{name}: give one value, not {len(values)}")
        return values[0] if values else None

    since, until = one("since"), one("until")
    since_at = None if since is None else parse_moment(since, "since", now=now)
    until_at = None if until is None else parse_moment(until, "until", now=now)
    check_window(since_at, until_at)
    stuck, parent, parked = one("stuck_for"), one("children_of"), one("parked")
    if parked not in (None, "1", "true", "on"):
        raise ConfigurationError(f"parked: expected 1 or nothing; got {parked[:40]!r}")
    return SagaFilter(
        statuses=parse_statuses(given("status"), "status"),
        definitions=parse_names(given("definition"), "definition"),
        journeys=parse_names(given("journey"), "journey"),
        started_since=since_at,
        started_until=until_at,
        stuck_for=None if stuck is None else parse_duration(stuck, "stuck_for"),
        parked=parked is not None,
        waiting_for=parse_names(given("waiting_for"), "waiting_for"),
        children_of=None if parent is None else parse_saga_id(parent, "children_of"),
        attributes=parse_attributes(given("attr"), "attr"),
        idempotency_key=parse_key(one("key"), "key"),
    )


def search_target(text: str) -> tuple[str, str] | uuid.UUID:
    """What the one search box means: a saga id goes to that saga, ``name=value`` is a
    search attribute, anything else an idempotency key."""
    cleaned = text.strip()
    try:
        return uuid.UUID(cleaned)
    except ValueError:
        pass
    if "=" in cleaned:
        return ("attr", cleaned)
    return ("key", cleaned)


@page()
async def sagas_list(request: Request, console: Console, user: SignedIn) -> Response:
    params = request.query_params
    search = (params.get("q") or "").strip()
    if search:
        target = search_target(search)
        if isinstance(target, uuid.UUID):
            return RedirectResponse(f"/sagas/{target}", 303)
        name, value = target
        kept = [(k, v) for k, v in params.multi_items() if k not in ("q", "cursor")]
        kept.append((name, value))
        return RedirectResponse("/sagas?" + str(QueryParams(kept)), 303)
    now = console.now()
    selected = read_filter(params, now)
    text = params.get("cursor")
    cursor = None if not text else Cursor.parse(text, "cursor")

    async def work(conn: DriverConnection) -> tuple[list[SagaListing], list[str]]:
        listed = await select_sagas(conn, selected, limit=PAGE_SIZE + 1, after=cursor)
        names = await conn.fetch("SELECT DISTINCT name FROM shared.saga_definition ORDER BY 1")
        return listed, [row["name"] for row in names]

    listed, definition_names = await console.read(work, name="list")
    more = len(listed) > PAGE_SIZE
    listed = listed[:PAGE_SIZE]
    older = None
    if more:
        kept = [(k, v) for k, v in params.multi_items() if k != "cursor"]
        kept.append(("cursor", Cursor.after(listed[-1]).text()))
        older = "/sagas?" + str(QueryParams(kept))
    return render(
        request,
        console,
        "sagas.html",
        sagas=listed,
        params=params,
        statuses=[s.value for s in SagaStatus],
        chosen_statuses={s.value for s in selected.effective_statuses},
        definition_names=definition_names,
        older=older,
        first_page=None if cursor is None else _first_page(params),
        now=now,
        in_flight={s.value for s in IN_FLIGHT},
    )


@page(api=True)
async def sagas_live(request: Request, console: Console, user: SignedIn) -> Response:
    """The current state of the listed sagas still in flight: the list's script asks
    every few seconds and rewrites their rows (one indexed read of at most 200 ids)."""
    raw = request.query_params.get("ids", "")
    parts = [part for part in raw.split(",") if part.strip()]
    if len(parts) > LIVE_MAX_IDS:
        raise ConfigurationError(f"ids: at most {LIVE_MAX_IDS} saga ids; got {len(parts)}")
    ids = tuple(parse_saga_id(part.strip(), "ids") for part in parts)
    listed: Sequence[SagaListing] = ()
    if ids:

        async def work(conn: DriverConnection) -> list[SagaListing]:
            return await select_sagas(conn, SagaFilter(saga_ids=ids), limit=len(ids))

        listed = await console.read(work, name="live")
    return JSONResponse(
        {
            "sagas": [_live_row(saga) for saga in listed],
            "at": console.now().isoformat(),
        }
    )


@page()
async def saga_page(request: Request, console: Console, user: SignedIn) -> Response:
    saga_id = parse_saga_id(request.path_params["saga_id"], "saga id")

    async def work(conn: DriverConnection) -> queries.SagaDetail:
        return await queries.saga_detail(conn, saga_id)

    detail = await console.read(work, name="saga")
    now = console.now()
    return render(
        request,
        console,
        "saga.html",
        saga=detail,
        timeline=timeline_svg(
            detail.entries, started_at=detail.started_at, finished_at=detail.finished_at, now=now
        ),
        actions=_actions_for(detail),
        now=now,
        in_flight={s.value for s in IN_FLIGHT},
    )


@page(api=True)
async def saga_history(request: Request, console: Console, user: SignedIn) -> Response:
    """The whole history as ``saga show --json`` gives it, with the same masking; reasons
    cut to their safe part, as everywhere on the console."""
    saga_id = parse_saga_id(request.path_params["saga_id"], "saga id")

    async def work(conn: DriverConnection) -> queries.SagaDetail:
        return await queries.saga_detail(conn, saga_id)

    detail = await console.read(work, name="history")
    document = _safe_reasons(detail_document(detail))
    body = json.dumps(document, default=json_default, indent=2, ensure_ascii=False)
    return Response(
        body,
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="saga-{saga_id}.json"'},
    )


def _safe_reasons(document: dict[str, Any]) -> dict[str, Any]:
    """Reasons may quote a handler's input after their first ``": "``
    (:func:`saga.masking.summarize`): the console gives only the part before it."""
    document["error"] = short_error(document.get("error")) or None
    for entry in document.get("timeline", ()):
        entry["error"] = short_error(entry.get("error")) or None
    return document


def _actions_for(detail: queries.SagaDetail) -> list[str]:
    """The actions worth offering; whether one applies is still judged when it is
    previewed, by the same decisions as the CLI's."""
    if detail.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.ABORTED):
        return []
    offered = [Action.RETRY, Action.COMPENSATE, Action.SKIP, Action.ABORT]
    return [action.value for action in offered]


def _live_row(saga: SagaListing) -> dict[str, Any]:
    return {
        "id": str(saga.id),
        "status": saga.status.value,
        "step": saga.step_name,
        "phase": saga.phase.value,
        "attempt": saga.step_attempt,
        "waiting_for": saga.waiting_for,
        "reason": short_error(saga.error) or None,
        "finished_at": None if saga.finished_at is None else saga.finished_at.isoformat(),
    }


def _first_page(params: QueryParams) -> str:
    kept = [(k, v) for k, v in params.multi_items() if k != "cursor"]
    return "/sagas" + (f"?{QueryParams(kept)}" if kept else "")
