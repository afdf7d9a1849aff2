"""The console's database-free defences: session cookies, CSRF, the sign-in limiter and
the headers middleware."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from saga.web.security import (
    SECURITY_HEADERS,
    LoginLimiter,
    SecurityHeaders,
    Session,
    SessionCookie,
    csrf_ok,
)

KEY = "k" * 40
START = 1_800_000_000.0


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cookie(clock: FakeClock, *, key: str = KEY, hours: float = 8) -> SessionCookie:
    return SessionCookie(key, timedelta(hours=hours), clock=clock)


# --- session cookies ----------------------------------------------------------------------


def test_a_cookie_reads_back_as_the_session_it_was_issued_for() -> None:
    clock = FakeClock()
    cookies = cookie(clock)
    token_id = uuid.uuid4()
    session, value = cookies.issue(token_id)
    assert session.token_id == token_id
    assert session.issued_at == datetime.fromtimestamp(START, UTC)
    assert len(session.csrf) >= 32
    assert value.count(".") == 2  # payload, time stamp, signature
    clock.now += 3600
    assert cookies.read(value) == session


def test_every_session_has_a_csrf_token_of_its_own() -> None:
    cookies = cookie(FakeClock())
    token_id = uuid.uuid4()
    first, _ = cookies.issue(token_id)
    second, _ = cookies.issue(token_id)
    assert first.csrf != second.csrf


def test_a_cookie_past_its_age_is_refused() -> None:
    clock = FakeClock()
    cookies = cookie(clock, hours=1)
    _, value = cookies.issue(uuid.uuid4())
    clock.now += 3600
    assert cookies.read(value) is not None
    clock.now += 1
    assert cookies.read(value) is None


def test_a_cookie_from_the_future_is_refused() -> None:
    clock = FakeClock()
    cookies = cookie(clock)
    _, value = cookies.issue(uuid.uuid4())
    clock.now -= 60
    assert cookies.read(value) is None


def test_a_tampered_cookie_is_refused() -> None:
    clock = FakeClock()
    cookies = cookie(clock)
    _, value = cookies.issue(uuid.uuid4())
    payload, stamp, signature = value.split(".")
    forged = base64.urlsafe_b64encode(b'{"t":"%s","c":"x"}' % str(uuid.uuid4()).encode())
    assert cookies.read(f"{forged.decode().rstrip('=')}.{stamp}.{signature}") is None
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    assert cookies.read(f"{payload}.{stamp}.{flipped}") is None
    assert cookie(clock, key="o" * 40).read(value) is None  # another key


@pytest.mark.parametrize(
    "garbage",
    [None, "", "x", "a.b.c", "...", "\x00\udcff", "é" * 50, "a" * 5000, "saga_session=1"],
)
def test_garbage_is_no_session(garbage: str | None) -> None:
    assert cookie(FakeClock()).read(garbage) is None


def test_a_signed_payload_of_another_shape_is_no_session() -> None:
    clock = FakeClock()
    cookies = cookie(clock)
    for payload in ([1, 2], {"t": "not-a-uuid", "c": "x"}, {"t": str(uuid.uuid4())}, "text"):
        value = cookies._serializer.dumps(payload)
        assert cookies.read(value) is None, payload


def test_cookie_options_keep_the_cookie_from_scripts_and_other_sites() -> None:
    assert SessionCookie.cookie_options(True) == {
        "httponly": True,
        "samesite": "strict",
        "path": "/",
        "secure": True,
    }
    assert SessionCookie.cookie_options(False)["secure"] is False
    assert SessionCookie.COOKIE_NAME == "saga_session"


def test_a_cookie_signer_needs_a_key_and_an_age() -> None:
    with pytest.raises(ValueError, match="secret_key"):
        SessionCookie("", timedelta(hours=1))
    with pytest.raises(ValueError, match="max_age"):
        SessionCookie(KEY, timedelta(0))


# --- CSRF ---------------------------------------------------------------------------------


def test_csrf_must_match_the_sessions_token() -> None:
    session = Session(uuid.uuid4(), "right-token", datetime.now(UTC))
    assert csrf_ok(session, "right-token")
    assert not csrf_ok(session, "wrong-token")
    assert not csrf_ok(session, "right-token ")
    assert not csrf_ok(session, "")
    assert not csrf_ok(session, None)
    assert not csrf_ok(session, "\udcff")


# --- the sign-in limiter ------------------------------------------------------------------


def test_the_limiter_allows_attempts_then_says_how_long_to_wait() -> None:
    clock = FakeClock(100.0)
    limiter = LoginLimiter(3, timedelta(minutes=1), clock=clock)
    assert limiter.check("10.0.0.1") is None
    for _ in range(3):
        assert limiter.check("10.0.0.1") is None
        limiter.failed("10.0.0.1")
        clock.now += 10
    # Failures at 100, 110, 120; now 130: the first leaves the window at 160.
    assert limiter.check("10.0.0.1") == pytest.approx(30.0)
    assert limiter.check("10.0.0.2") is None  # other clients are not held back
    clock.now = 160.5
    assert limiter.check("10.0.0.1") is None  # a sliding window: one attempt freed
    limiter.failed("10.0.0.1")
    assert limiter.check("10.0.0.1") == pytest.approx(9.5)  # until 110 leaves at 170


def test_a_success_clears_the_clients_failures() -> None:
    clock = FakeClock()
    limiter = LoginLimiter(2, timedelta(minutes=1), clock=clock)
    limiter.failed("a")
    limiter.failed("a")
    assert limiter.check("a") is not None
    limiter.succeeded("a")
    assert limiter.check("a") is None
    limiter.succeeded("never-seen")  # nothing to clear is fine


def test_idle_clients_are_forgotten() -> None:
    clock = FakeClock()
    limiter = LoginLimiter(5, timedelta(minutes=1), clock=clock)
    for number in range(100):
        limiter.failed(f"10.0.0.{number}")
    assert len(limiter) == 100
    clock.now += 61
    limiter.failed("10.0.1.1")
    assert len(limiter) == 1


def test_the_number_of_clients_remembered_is_capped() -> None:
    clock = FakeClock()
    limiter = LoginLimiter(1, timedelta(minutes=1), max_keys=3, clock=clock)
    for key in ("a", "b", "c", "d"):
        limiter.failed(key)
        clock.now += 1
    assert len(limiter) == 3
    assert limiter.check("a") is None  # the least recently failed was dropped
    assert limiter.check("b") is not None
    assert limiter.check("d") is not None


def test_a_clients_memory_is_bounded_by_the_attempts() -> None:
    clock = FakeClock()
    limiter = LoginLimiter(3, timedelta(minutes=1), clock=clock)
    for _ in range(1000):
        limiter.failed("a")
    assert len(limiter._failures["a"]) == 3


def test_a_limiter_needs_sane_bounds() -> None:
    with pytest.raises(ValueError, match="LoginLimiter"):
        LoginLimiter(0, timedelta(minutes=1))
    with pytest.raises(ValueError, match="LoginLimiter"):
        LoginLimiter(1, timedelta(0))


# --- the headers middleware ---------------------------------------------------------------


def _page(request: Request) -> Response:
    return PlainTextResponse("hello")


def _static(request: Request) -> Response:
    return PlainTextResponse("body {}", headers={"Cache-Control": "public, max-age=3600"})


def _framed(request: Request) -> Response:
    return PlainTextResponse("x", headers={"X-Frame-Options": "SAMEORIGIN"})


def _streamed(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"one "
        yield b"two"

    return StreamingResponse(chunks(), media_type="text/plain")


def client() -> httpx.AsyncClient:
    app = Starlette(
        routes=[
            Route("/", _page),
            Route("/static/app.css", _static),
            Route("/framed", _framed),
            Route("/stream", _streamed),
        ]
    )
    app.add_middleware(SecurityHeaders)
    # httpx's ASGI transport rather than starlette.testclient, which warns (an error
    # here) unless the httpx2 package is installed.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console")


async def test_every_response_carries_the_security_headers() -> None:
    async with client() as http:
        for path in ("/", "/missing", "/static/app.css", "/stream"):
            response = await http.get(path)
            for name, value in SECURITY_HEADERS.items():
                assert response.headers[name] == value, (path, name)
            assert response.headers["server-timing"].startswith("app;dur="), path
            float(response.headers["server-timing"].removeprefix("app;dur="))


async def test_pages_are_not_cached_but_static_files_keep_their_own_rule() -> None:
    async with client() as http:
        assert (await http.get("/")).headers["cache-control"] == "no-store"
        static = await http.get("/static/app.css")
        assert static.headers.get_list("cache-control") == ["public, max-age=3600"]
        assert static.text == "body {}"


async def test_a_header_the_response_sets_itself_is_not_doubled() -> None:
    async with client() as http:
        assert (await http.get("/framed")).headers.get_list("x-frame-options") == ["SAMEORIGIN"]


async def test_a_streamed_body_passes_through_whole() -> None:
    async with client() as http:
        assert (await http.get("/stream")).text == "one two"


def test_the_csp_allows_no_inline_script_and_no_framing() -> None:
    policy = SECURITY_HEADERS["Content-Security-Policy"]
    assert "script-src 'self';" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
