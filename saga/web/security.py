"""The console's defences that need no database: signed session cookies, the CSRF check,
a limit on failed sign-ins, and the headers every response carries.

A session cookie holds only the token's id and the session's CSRF token, signed and
time-stamped; it proves which token signed in and when, and nothing more. Whether that
token may still be used is the database's to say, on every request
(:func:`saga.web.tokens.token_by_id`).
"""

from __future__ import annotations

import hmac
import secrets
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from itsdangerous import BadData, TimestampSigner, URLSafeTimedSerializer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Clock = Callable[[], float]

MAX_COOKIE_LENGTH = 4096
"""Browsers keep no longer cookie; a longer value is garbage and is not even decoded."""


@dataclass(frozen=True, slots=True)
class Session:
    token_id: uuid.UUID
    """The sign-in token this session was opened with."""
    csrf: str
    """The value every form of this session must send back."""
    issued_at: datetime
    """When the session began (to the second)."""


class SessionCookie:
    """Issues and reads the console's signed session cookie.

    ``clock`` (seconds since the epoch) stands in for ``time.time`` in tests, which need
    a cookie to age without waiting.
    """

    COOKIE_NAME = "saga_session"
    _SALT = "saga.web.session"

    def __init__(self, secret_key: str, max_age: timedelta, *, clock: Clock = time.time) -> None:
        if not secret_key:
            raise ValueError("SessionCookie: secret_key must not be empty")
        if max_age <= timedelta(0):
            raise ValueError(f"SessionCookie: max_age must be positive; got {max_age}")
        self.max_age = max_age
        self._serializer = URLSafeTimedSerializer(
            secret_key, salt=self._SALT, signer=_ClockedSigner, signer_kwargs={"clock": clock}
        )

    def issue(self, token_id: uuid.UUID) -> tuple[Session, str]:
        """A new session for ``token_id``, with a CSRF token of its own, and the cookie's
        value that carries it."""
        value = self._serializer.dumps({"t": str(token_id), "c": secrets.token_urlsafe(32)})
        session = self._decode(value, max_age=None)
        assert session is not None  # we signed it a moment ago
        return session, value

    def read(self, cookie_value: str | None) -> Session | None:
        """The session in a cookie, or None when it is missing, expired, tampered with or
        not one of ours."""
        # Ours is URL-safe ASCII; anything else (a surrogate would not even encode) is not.
        if not cookie_value or len(cookie_value) > MAX_COOKIE_LENGTH or not cookie_value.isascii():
            return None
        return self._decode(cookie_value, max_age=self.max_age)

    @staticmethod
    def cookie_options(secure: bool) -> dict[str, Any]:
        """Keyword arguments for Starlette's ``set_cookie``/``delete_cookie``. No
        ``max_age``: the cookie ends with the browser, and the server refuses it after
        ``max_age`` anyway."""
        return {"httponly": True, "samesite": "strict", "path": "/", "secure": secure}

    def _decode(self, value: str, *, max_age: timedelta | None) -> Session | None:
        try:
            payload, signed_at = self._serializer.loads(
                value,
                max_age=None if max_age is None else int(max_age.total_seconds()),
                return_timestamp=True,
            )
        except BadData:
            return None
        if not isinstance(payload, dict):
            return None
        token, csrf = payload.get("t"), payload.get("c")
        if not isinstance(token, str) or not isinstance(csrf, str) or not csrf:
            return None
        try:
            token_id = uuid.UUID(token)
        except ValueError:
            return None
        return Session(token_id, csrf, signed_at.astimezone(UTC))


class _ClockedSigner(TimestampSigner):
    """itsdangerous's signer, reading the time from an injectable clock (it reads it
    both to stamp a value and to judge its age)."""

    def __init__(self, *args: Any, clock: Clock, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock())


def csrf_ok(session: Session, given: str | None) -> bool:
    """Whether a form sent back this session's CSRF token (compared in constant time)."""
    if not given:
        return False
    return hmac.compare_digest(session.csrf.encode(), given.encode("utf-8", "replace"))


class LoginLimiter:
    """At most ``attempts`` failed sign-ins per ``window`` (a minute, as
    ``WEB_LOGIN_ATTEMPTS`` counts them) for each key (a client's address), counted over a
    sliding window, in this process's memory.

    Memory is bounded: a key keeps at most ``attempts`` times, keys idle for a window
    are forgotten, and past ``max_keys`` the key that failed least recently is dropped
    (a flood of addresses can then free one address early, but never exhaust memory).
    """

    def __init__(
        self,
        attempts: int,
        window: timedelta = timedelta(minutes=1),
        *,
        max_keys: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        if attempts < 1 or max_keys < 1 or window <= timedelta(0):
            raise ValueError(
                "LoginLimiter: attempts and max_keys must be >= 1 and window positive; "
                f"got {attempts}, {max_keys}, {window}"
            )
        self.attempts = attempts
        self.window = window.total_seconds()
        self.max_keys = max_keys
        self._clock = clock
        # Ordered by each key's latest failure, oldest first: idle keys sit at the front.
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, key: str) -> float | None:
        """Seconds ``key`` must wait before it may try again, or None if it may now."""
        now = self._clock()
        self._forget_idle(now)
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) < self.attempts:
            return None
        return times[0] + self.window - now

    def failed(self, key: str) -> None:
        now = self._clock()
        self._forget_idle(now)
        times = self._failures.pop(key, None)
        if times is None:
            while len(self._failures) >= self.max_keys:
                self._failures.popitem(last=False)
            times = deque(maxlen=self.attempts)
        times.append(now)
        self._failures[key] = times

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)

    def __len__(self) -> int:
        """How many keys are remembered."""
        return len(self._failures)

    def _forget_idle(self, now: float) -> None:
        while self._failures:
            key, times = next(iter(self._failures.items()))
            if times and times[-1] > now - self.window:
                return
            del self._failures[key]


SECURITY_HEADERS: Mapping[str, str] = MappingProxyType(
    {
        # Scripts, styles and images from the console itself only (SVG drawings are
        # inline markup or data: URLs); no inline script, so an injected one cannot run.
        "Content-Security-Policy": (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; font-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        ),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    }
)

_ENCODED = tuple(
    (name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()
)


class SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every HTTP response (a response that
    sets one itself keeps its own), ``Cache-Control: no-store`` unless the response says
    how to cache it (static files do), and ``Server-Timing: app;dur=<ms>`` from the
    request's arrival to the response's start. Bodies pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                took_ms = (time.perf_counter() - started) * 1000
                message["headers"] = _with_headers(message.get("headers", ()), took_ms)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _with_headers(raw: Any, took_ms: float) -> list[tuple[bytes, bytes]]:
    headers = [(bytes(name), bytes(value)) for name, value in raw]
    present = {name.lower() for name, _ in headers}
    headers += [(name, value) for name, value in _ENCODED if name not in present]
    if b"cache-control" not in present:
        headers.append((b"cache-control", b"no-store"))
    headers.append((b"server-timing", f"app;dur={took_ms:.1f}".encode()))
    return headers
