"""What every page of the console shares: the database, the operator actions, the
templates and the sign-in machinery, made once per process."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog
from jinja2 import Environment, PackageLoader, select_autoescape
from prometheus_client import Counter

from saga.coordinator import Coordinator
from saga.errors import ConfigurationError
from saga.operator.actions import SagaActions
from saga.operator.queries import read_only
from saga.settings import Settings
from saga.store import Database
from saga.store.driver import DriverConnection
from saga.web import formats
from saga.web.security import LoginLimiter, SessionCookie

T = TypeVar("T")

log = structlog.get_logger("saga.web")

SIGN_INS = Counter(
    "saga_console_sign_ins_total",
    "Sign-in attempts at the operators' console, by outcome.",
    ["outcome"],
)
ACTIONS = Counter(
    "saga_console_actions_total",
    "Operator actions taken in the console, by action and outcome (applied, refused).",
    ["action", "outcome"],
)


@dataclass
class Console:
    settings: Settings
    database: Database
    actions: SagaActions
    cookie: SessionCookie
    limiter: LoginLimiter
    templates: Environment
    secure_cookie: bool
    _coordinator: Coordinator | None = None

    def coordinator(self) -> Coordinator:
        """Only for signals (:meth:`Coordinator.signal` stores and applies one in a
        transaction; the console never starts or drives sagas). Made on first use, so
        the console starts and reads without a broker."""
        if self._coordinator is None:
            if not self.settings.kafka_bootstrap_servers:
                raise ConfigurationError(
                    "signals are sent through the broker: set KAFKA_BOOTSTRAP_SERVERS for "
                    "the console (or use `saga signal` where it is set)"
                )
            self._coordinator = Coordinator(
                settings=self.settings, database=self.database, name="saga-web"
            )
        return self._coordinator

    async def close(self) -> None:
        if self._coordinator is not None:
            await self._coordinator.stop()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def read(self, work: Callable[[DriverConnection], Awaitable[T]], *, name: str) -> T:
        """``work`` in one read-only snapshot, as ``saga show`` and ``saga stats`` read."""
        return await read_only(self.database, work, name=f"web.{name}")

    async def write(self, work: Callable[[DriverConnection], Awaitable[T]], *, name: str) -> T:
        return await self.database.run_driver(work, name=f"web.{name}")


def secret_key(settings: Settings) -> str:
    """The key that signs session cookies (see :meth:`Settings.web_session_key`)."""
    return settings.web_session_key() or secrets.token_urlsafe(32)


def templates() -> Environment:
    environment = Environment(
        loader=PackageLoader("saga.web", "templates"),
        autoescape=select_autoescape(["html", "svg"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(formats.FILTERS)
    return environment


def session_length(settings: Settings) -> timedelta:
    return timedelta(hours=settings.web_session_hours)


def audit(what: str, **fields: Any) -> None:
    """Every sign-in and every action is logged with who and from where."""
    log.info(what, **fields)
