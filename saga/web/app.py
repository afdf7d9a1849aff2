"""The operators' console as an ASGI app: :func:`create_app` builds it from the settings.

Server-rendered pages (Jinja templates, SVG drawn here), one small script for the live
update, every asset served by the process itself: it works with no internet and needs no
front-end build. It reads through the CLI's queries and masking and acts through the CLI's
decisions and transitions (:mod:`saga.operator`); it has no rules of its own about saga
states.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from saga.coordinator.service import COORDINATOR_OUTBOX
from saga.errors import (
    BrokerUnavailable,
    ConfigurationError,
    DatabaseUnavailable,
    SagaError,
    SagaNotFound,
    UnknownDefinition,
)
from saga.operator.actions import SagaActions
from saga.outbox import OutboxPublisher
from saga.settings import Settings
from saga.store import Database
from saga.store.driver import DriverConnection
from saga.transport import Producer, Topics
from saga.web.auth import console_of
from saga.web.console import Console, secret_key, session_length, templates
from saga.web.pages import acting, overview, sagas, signin
from saga.web.responses import refuse
from saga.web.security import LoginLimiter, SecurityHeaders, SessionCookie

log = structlog.get_logger("saga.web")

READY_TIMEOUT_SECONDS = 2.0

# Measured on a log of a million sagas (benchmarks/README.md, "The console benchmark"):
# - JIT compiled the needs-attention query for 490 ms of its 600 ms: the pages read one
#   saga or aggregate the unfinished ones, never long enough to repay compiling.
# - A statement's sixth run may switch to a generic plan, made without its parameters:
#   for a search by attribute that plan walks every saga newest first instead of asking
#   the GIN index (1.1 s instead of 9 ms). The console runs few statements, each with
#   parameters whose selectivity varies a thousandfold (one member, every parked saga),
#   so planning each one for its values is cheap and right.
CONSOLE_SERVER_SETTINGS = {"jit": "off", "plan_cache_mode": "force_custom_plan"}


def create_app(settings: Settings, *, database: Database | None = None) -> Starlette:
    """The console. ``database`` is for tests that share one; otherwise the app opens
    its own pool when it starts and closes it when it stops."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with _console(settings, database) as console:
            app.state.console = console
            yield

    app = Starlette(
        routes=_routes(),
        lifespan=lifespan,
        exception_handlers={
            ConfigurationError: _bad_input,
            SagaNotFound: _not_found,
            UnknownDefinition: _not_found,
            DatabaseUnavailable: _unavailable,
            SagaError: _refused,
            HTTPException: _http_error,
            Exception: _failed,
        },
    )
    app.add_middleware(SecurityHeaders)
    return app


def _routes() -> list[Route | Mount]:
    return [
        Route("/", _home),
        Route("/live", _live),
        Route("/ready", _ready),
        Route("/login", signin.login_form, methods=["GET"]),
        Route("/login", signin.login, methods=["POST"]),
        Route("/logout", signin.logout, methods=["POST"]),
        Route("/sagas", sagas.sagas_list),
        Route("/sagas/live", sagas.sagas_live),
        Route("/sagas/{saga_id}", sagas.saga_page),
        Route("/sagas/{saga_id}/history.json", sagas.saga_history),
        Route("/sagas/{saga_id}/act/{action}", acting.action_form, methods=["GET"]),
        Route("/sagas/{saga_id}/act/{action}", acting.action_post, methods=["POST"]),
        Route("/sagas/{saga_id}/signal", acting.signal_form, methods=["GET"]),
        Route("/sagas/{saga_id}/signal", acting.signal_post, methods=["POST"]),
        Route("/attention", overview.attention),
        Route("/attention/bulk", acting.bulk_post, methods=["POST"]),
        Route("/definitions", overview.definitions),
        Route("/definitions/{name}/{version}", overview.definition),
        Route("/stats", overview.stats),
        Mount("/static", StaticFiles(packages=[("saga.web", "static")]), name="static"),
    ]


@asynccontextmanager
async def _console(settings: Settings, shared: Database | None) -> AsyncIterator[Console]:
    database = shared or Database.from_settings(
        settings, application_name="saga-web", server_settings=CONSOLE_SERVER_SETTINGS
    )
    producer = await _producer(settings)
    publisher = (
        None if producer is None else OutboxPublisher(database, producer, COORDINATOR_OUTBOX)
    )
    console = Console(
        settings=settings,
        database=database,
        actions=SagaActions(database, Topics.from_settings(settings), publisher),
        cookie=SessionCookie(secret_key(settings), session_length(settings)),
        limiter=LoginLimiter(settings.web_login_attempts),
        templates=templates(),
        secure_cookie=settings.effective_web_cookie_secure,
    )
    try:
        yield console
    finally:
        await console.close()
        if publisher is not None:
            await publisher.close()
        if producer is not None:
            await producer.stop()
        if shared is None:
            await database.dispose()


async def _producer(settings: Settings) -> Producer | None:
    """Sends an action's command at once. Without a broker the command waits in the
    outbox for the coordinator's relay, which is only slower."""
    if not settings.kafka_bootstrap_servers:
        return None
    producer = Producer.from_settings(settings, client_id=f"{settings.kafka_client_id}-web")
    try:
        await producer.start()
    except BrokerUnavailable as exc:
        log.warning("web_no_broker", error=str(exc))
        return None
    return producer


async def _home(request: Request) -> Response:
    return RedirectResponse("/sagas", 303)


async def _live(request: Request) -> Response:
    return JSONResponse({"process": "web", "alive": True})


async def _ready(request: Request) -> Response:
    """Ready when the database answers: every page needs it."""
    console = console_of(request)

    async def probe(conn: DriverConnection) -> Any:
        return await conn.fetchval("SELECT 1")

    try:
        await asyncio.wait_for(
            console.database.run_driver(probe, transaction=False, name="web.ready"),
            READY_TIMEOUT_SECONDS,
        )
    except (TimeoutError, SagaError) as exc:
        return JSONResponse(
            {"process": "web", "ready": False, "waiting_for": ["database"], "error": str(exc)},
            status_code=503,
        )
    return JSONResponse({"process": "web", "ready": True, "waiting_for": []})


Handler = Callable[[Request, Exception], Awaitable[Response]]


async def _bad_input(request: Request, exc: Exception) -> Response:
    return _error(request, 400, str(exc))


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(request, 404, str(exc))


async def _unavailable(request: Request, exc: Exception) -> Response:
    log.warning("web_database_unavailable", path=request.url.path, error=str(exc))
    return _error(request, 503, "The database is not answering; try again in a moment.")


async def _refused(request: Request, exc: Exception) -> Response:
    return _error(request, 409, str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = "No such page." if exc.status_code == 404 else str(exc.detail)
    return _error(request, exc.status_code, message)


async def _failed(request: Request, exc: Exception) -> Response:
    log.exception("web_request_failed", path=request.url.path)
    return _error(request, 500, "Something went wrong on our side; it has been logged.")


def _error(request: Request, status: int, message: str) -> Response:
    wants_json = request.url.path.endswith((".json", "/live")) or "application/json" in (
        request.headers.get("accept", "")
    )
    if wants_json or not hasattr(request.app.state, "console"):
        return JSONResponse({"error": message}, status_code=status)
    return refuse(request, console_of(request), status, message)
