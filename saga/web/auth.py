"""Who is asking: the session cookie, the token behind it, and what its role allows.

Every page goes through :func:`page`. A request without a valid session is sent to the
sign-in page (or refused, for anything but a page read); the token behind a session is
read from the database on every request, so revoking a token, or its expiry, ends its
sessions at once. Every POST must carry the session's CSRF token, and only an operator's
session may act.
"""

from __future__ import annotations

import functools
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from saga.web.console import Console
from saga.web.responses import refuse
from saga.web.security import Session, SessionCookie, csrf_ok
from saga.web.tokens import Role, WebToken, token_by_id

LOGIN_CSRF_COOKIE = "saga_login_csrf"
"""Before a session exists the sign-in form is protected by a double-submit cookie."""


@dataclass(frozen=True, slots=True)
class SignedIn:
    token: WebToken
    session: Session

    @property
    def actor(self) -> str:
        """What the step log records as the actor: the personal token's name, as the CLI
        records the operator's login name."""
        return self.token.name

    @property
    def can_act(self) -> bool:
        return self.token.role is Role.OPERATOR

    @property
    def csrf(self) -> str:
        return self.session.csrf


Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Console, SignedIn], Awaitable[Response]]


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def page(*, acts: bool = False, api: bool = False) -> Callable[[Handler], Endpoint]:
    """Wrap a handler: a signed-in session is required (an operator's when ``acts``), and
    every POST must carry the session's CSRF token. An ``api`` endpoint (read by the
    console's script or downloaded) is refused with a JSON 401 rather than sent to the
    sign-in page."""

    def wrap(handler: Handler) -> Endpoint:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            console = console_of(request)
            user = await signed_in(request, console)
            if user is None:
                if api:
                    return JSONResponse({"error": "Sign in first."}, status_code=401)
                if request.method == "GET" and not acts:
                    return RedirectResponse(f"/login?next={quote(_here(request))}", 303)
                return refuse(request, console, 401, "Sign in first.")
            if request.method == "POST":
                form = await request.form()
                given = form.get("csrf")
                if not isinstance(given, str) or not csrf_ok(user.session, given):
                    return refuse(
                        request,
                        console,
                        403,
                        "This form's security token is missing or wrong: reload the page "
                        "and try again.",
                        user=user,
                    )
            if acts and not user.can_act:
                return refuse(
                    request,
                    console,
                    403,
                    f"Signed in as {user.token.name} ({user.token.role.value}): viewers "
                    "read, operators act.",
                    user=user,
                )
            request.state.user = user
            return await handler(request, console, user)

        return endpoint

    return wrap


async def signed_in(request: Request, console: Console) -> SignedIn | None:
    session = console.cookie.read(request.cookies.get(SessionCookie.COOKIE_NAME))
    if session is None:
        return None
    token_id: uuid.UUID = session.token_id
    now = console.now()

    async def load(conn: Any) -> WebToken | None:
        return await token_by_id(conn, token_id, now=now)

    token = await console.read(load, name="session")
    return None if token is None else SignedIn(token, session)


def new_login_csrf() -> str:
    return secrets.token_urlsafe(24)


def client_key(request: Request) -> str:
    """Whom failed sign-ins are counted against: the peer address. Forwarded headers are
    not trusted (any client could write them), so behind a proxy every client counts as
    the proxy: a flood of wrong tokens then slows everyone's sign-in for a minute, and
    never ends a session already open."""
    return request.client.host if request.client is not None else "unknown"


def _here(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")
