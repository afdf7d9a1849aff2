"""Signing in with a personal token, and out."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from saga.store.driver import DriverConnection
from saga.web.auth import LOGIN_CSRF_COOKIE, SignedIn, client_key, console_of, new_login_csrf, page
from saga.web.console import SIGN_INS, Console, audit
from saga.web.responses import refuse, render
from saga.web.security import SessionCookie
from saga.web.tokens import WebToken, authenticate


async def login_form(request: Request) -> Response:
    console = console_of(request)
    csrf = new_login_csrf()
    response = render(
        request,
        console,
        "login.html",
        login_csrf=csrf,
        next=_next(request.query_params.get("next")),
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE, csrf, **SessionCookie.cookie_options(console.secure_cookie)
    )
    return response


async def login(request: Request) -> Response:
    console = console_of(request)
    client = client_key(request)
    wait = console.limiter.check(client)
    if wait is not None:
        SIGN_INS.labels("throttled").inc()
        audit("console_sign_in", outcome="throttled", client=client)
        response = refuse(
            request,
            console,
            429,
            f"Too many failed sign-ins from your address: try again in {wait:.0f} s.",
        )
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response
    form = await request.form()
    given_csrf, cookie_csrf = form.get("csrf"), request.cookies.get(LOGIN_CSRF_COOKIE)
    if (
        not isinstance(given_csrf, str)
        or not cookie_csrf
        or not hmac.compare_digest(given_csrf, cookie_csrf)
    ):
        SIGN_INS.labels("refused").inc()
        audit("console_sign_in", outcome="no_csrf", client=client)
        return refuse(
            request, console, 403, "The sign-in form expired: reload the page and try again."
        )
    secret = form.get("token")
    token: WebToken | None = None
    if isinstance(secret, str) and secret.strip():
        now = console.now()

        async def check(conn: DriverConnection) -> WebToken | None:
            return await authenticate(conn, secret, now=now)

        token = await console.write(check, name="sign_in")
    if token is None:
        console.limiter.failed(client)
        SIGN_INS.labels("failed").inc()
        audit("console_sign_in", outcome="failed", client=client)
        return render(
            request,
            console,
            "login.html",
            status=401,
            login_csrf=cookie_csrf,
            next=_next(form.get("next")),
            failed="That token is unknown, revoked or expired.",
        )
    console.limiter.succeeded(client)
    SIGN_INS.labels("signed_in").inc()
    audit(
        "console_sign_in",
        outcome="signed_in",
        token=token.name,
        role=token.role.value,
        client=client,
    )
    _, cookie = console.cookie.issue(token.id)
    redirect = RedirectResponse(_next(form.get("next")), 303)
    options = SessionCookie.cookie_options(console.secure_cookie)
    redirect.set_cookie(SessionCookie.COOKIE_NAME, cookie, **options)
    redirect.delete_cookie(LOGIN_CSRF_COOKIE, **options)
    return redirect


@page()
async def logout(request: Request, console: Console, user: SignedIn) -> Response:
    audit("console_sign_out", token=user.token.name, client=client_key(request))
    response = RedirectResponse("/login", 303)
    response.delete_cookie(
        SessionCookie.COOKIE_NAME, **SessionCookie.cookie_options(console.secure_cookie)
    )
    return response


def _next(target: object) -> str:
    """Only a path of this site: a sign-in link must not send anyone elsewhere."""
    if (
        isinstance(target, str)
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and len(target) < 2000
    ):
        return target
    return "/sagas"
