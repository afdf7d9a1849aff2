"""Sagas for the console's tests, made by really running them over the broker, and the
console itself served in process against the same database.

Nothing inserts saga rows by hand: every saga is started through a coordinator and driven
by the test participants (``tests/integration/sagas.py``), so its log and timeline are
what the engine writes. The sagas, by role:

=============  ===============================================================
role           how
=============  ===============================================================
member_a_1..3  completed; member A's (``member_id`` is a search attribute)
member_b       completed; member B's
compensated    ``award`` refuses, so it compensated; its payload carries
               sensitive fields and a ``<script>`` note
parked         ``award`` refuses and ``void`` errs on every attempt: parked
               while compensating ``authorize``
=============  ===============================================================
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
from starlette.applications import Starlette

from saga.definition import SagaDefinition
from saga.machine import SagaStatus
from saga.settings import Settings
from saga.store.driver import DriverConnection
from saga.web.app import create_app
from saga.web.tokens import Role, create_token
from tests.integration.conftest import SagaEnvironment
from tests.integration.sagas import BOOKING, cluster, create_effect_tables, starter

SEARCHABLE_BOOKING = SagaDefinition(
    "test_searchable_booking",
    1,
    BOOKING.positions,
    search_attributes=("member_id", "slot_id"),
)

# ``email`` and ``cpf`` are masked everywhere: none of these may reach a page.
PATIENT_VALUES = ("ana@example.com", "123.456.789-09")
SCRIPT_NOTE = "<script>alert('owned')</script>"

MEMBER_A = "member-a-0001"
MEMBER_B = "member-b-0002"


@dataclass(frozen=True)
class ConsoleScene:
    env: SagaEnvironment
    sagas: dict[str, uuid.UUID]
    viewer_token: str
    operator_token: str

    @property
    def member_a_sagas(self) -> set[uuid.UUID]:
        return {self.sagas[f"member_a_{n}"] for n in (1, 2, 3)}


def payload(member_id: str, slot: int, **extra: object) -> dict[str, object]:
    return {"member_id": member_id, "slot_id": f"slot-{slot}", **extra}


async def build_console_scene(env: SagaEnvironment) -> ConsoleScene:
    await create_effect_tables(env.database)
    sagas: dict[str, uuid.UUID] = {}
    async with cluster(env.settings, env.database, env.bootstrap), starter(env) as coordinator:
        for n in (1, 2, 3):
            sagas[f"member_a_{n}"] = await coordinator.start(
                SEARCHABLE_BOOKING, payload(MEMBER_A, n), idempotency_key=f"booking-a-{n}"
            )
        sagas["member_b"] = await coordinator.start(SEARCHABLE_BOOKING, payload(MEMBER_B, 9))
        sagas["compensated"] = await coordinator.start(
            SEARCHABLE_BOOKING,
            payload(
                MEMBER_B,
                10,
                refuse="award",
                email=PATIENT_VALUES[0],
                member={"cpf": PATIENT_VALUES[1]},
                note=SCRIPT_NOTE,
            ),
        )
        sagas["parked"] = await coordinator.start(
            SEARCHABLE_BOOKING, payload(MEMBER_B, 11, refuse="award", error={"void": 99})
        )
        for role, saga_id in sagas.items():
            summary = await coordinator.wait(saga_id, timeout=60)
            expected = {
                "compensated": SagaStatus.COMPENSATED,
                "parked": SagaStatus.PARKED,
            }.get(role, SagaStatus.COMPLETED)
            assert summary.status is expected, (role, summary)

    async def tokens(conn: DriverConnection) -> tuple[str, str]:
        _, viewer = await create_token(
            conn, name="vera.viewer", role=Role.VIEWER, expires_in=timedelta(days=1), created_by="t"
        )
        _, operator = await create_token(
            conn,
            name="otto.operator",
            role=Role.OPERATOR,
            expires_in=timedelta(days=1),
            created_by="t",
        )
        return viewer, operator

    viewer, operator = await env.database.run_driver(tokens)
    return ConsoleScene(env, sagas, viewer, operator)


def console_settings(env: SagaEnvironment, **overrides: object) -> Settings:
    """The test's settings, with the broker the console publishes actions through."""
    return env.settings.model_copy(update={"kafka_bootstrap_servers": env.bootstrap, **overrides})


@contextlib.asynccontextmanager
async def console_app(env: SagaEnvironment, **overrides: object) -> AsyncIterator[Starlette]:
    """The console app with its lifespan entered (as a server would), on the test's
    database."""
    app = create_app(console_settings(env, **overrides), database=env.database)
    async with app.router.lifespan_context(app):
        yield app


@contextlib.asynccontextmanager
async def console_client(
    env: SagaEnvironment, **overrides: object
) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        console_app(env, **overrides) as app,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://console.test"
        ) as client,
    ):
        yield client


async def sign_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    form = await client.get("/login")
    csrf = form.cookies.get("saga_login_csrf") or client.cookies.get("saga_login_csrf")
    assert csrf, "the sign-in form sets its CSRF cookie"
    return await client.post("/login", data={"token": token, "csrf": csrf, "next": "/sagas"})


def csrf_of(page: str) -> str:
    """The session's CSRF token, from any page's sign-out form."""
    marker = 'name="csrf" value="'
    start = page.index(marker) + len(marker)
    return page[start : page.index('"', start)]
