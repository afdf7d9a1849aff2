"""Translate driver errors into :mod:`saga.errors` at the database edge.

SQLAlchemy wraps asyncpg's exceptions in ``DBAPIError``; the SQLSTATE sits on the wrapped
driver error. Units on the driver connection raise asyncpg's exceptions directly.
Everything that leaves :mod:`saga.store` is a :class:`~saga.errors.SagaError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
from sqlalchemy import exc as sa_exc

from saga.errors import (
    CheckViolation,
    ConnectFailed,
    DatabaseError,
    DatabaseUnavailable,
    DeadlockDetected,
    ExclusionViolation,
    ForeignKeyViolation,
    InsufficientPrivilege,
    IntegrityViolation,
    PoolExhausted,
    SerializationConflict,
    StatementTimeout,
    TransactionConflict,
    UniqueViolation,
)

_BY_SQLSTATE: dict[str, type[DatabaseError]] = {
    "40001": SerializationConflict,
    "40P01": DeadlockDetected,
    "23505": UniqueViolation,
    "23503": ForeignKeyViolation,
    "23514": CheckViolation,
    "23P01": ExclusionViolation,
    "57014": StatementTimeout,
    "42501": InsufficientPrivilege,
}

# Class 08 is "connection exception"; 57P01..57P03 are admin shutdown / crash / cannot
# connect, 57P05 an idle session ended by the server; class 53 is "insufficient resources"
# (too many connections, out of memory, disk full): the server cannot serve now, and the
# work must wait for it rather than be dropped.
_UNAVAILABLE_PREFIXES = ("08", "53", "57P01", "57P02", "57P03", "57P05")


def sqlstate_of(error: BaseException) -> str | None:
    """The SQLSTATE carried by a driver error or any error it wraps."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        state = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(state, str) and state:
            return state
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return None


def constraint_of(error: BaseException) -> str | None:
    current: BaseException | None = error
    for _ in range(4):
        if current is None:
            return None
        name = getattr(current, "constraint_name", None)
        if isinstance(name, str):
            return name
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return None


def translate(error: BaseException) -> DatabaseError:
    """The most specific :class:`~saga.errors.DatabaseError` for a driver or pool error."""
    if isinstance(error, DatabaseError):
        return error
    state = sqlstate_of(error)
    message = _first_line(error)
    if state is not None:
        kind = _BY_SQLSTATE.get(state)
        if kind is None and state.startswith("23"):
            kind = IntegrityViolation
        if kind is not None and issubclass(kind, IntegrityViolation):
            return kind(message, sqlstate=state, constraint=constraint_of(error))
        if kind is not None:
            return kind(message, sqlstate=state)
        if state.startswith(_UNAVAILABLE_PREFIXES):
            return DatabaseUnavailable(message, sqlstate=state)
        return DatabaseError(message, sqlstate=state)
    if isinstance(error, asyncpg.ConnectionDoesNotExistError):
        return DatabaseUnavailable(message)
    if isinstance(error, sa_exc.TimeoutError):
        return PoolExhausted(f"no database connection free in time: {message}")
    if isinstance(error, OSError | ConnectionError | TimeoutError) or (
        isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated
    ):
        return DatabaseUnavailable(message)
    if isinstance(error, sa_exc.InterfaceError | sa_exc.OperationalError):
        return DatabaseUnavailable(message)
    return DatabaseError(message)


DATABASE_ERRORS = (
    sa_exc.DBAPIError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    sa_exc.TimeoutError,
    OSError,
    ConnectionError,
    TimeoutError,
)


@contextmanager
def database_errors() -> Iterator[None]:
    """Re-raise driver and connection errors as :mod:`saga.errors` types."""
    try:
        yield
    except DATABASE_ERRORS as exc:
        raise translate(exc) from exc


@contextmanager
def opening_errors() -> Iterator[None]:
    """Like :func:`database_errors`, around getting a connection from the pool: a server
    that refused, timed out or was not ready gives :class:`~saga.errors.ConnectFailed`,
    which says that nothing of the unit was sent. Wrong credentials or an unknown database
    stay what they are: trying again would not help."""
    try:
        yield
    except DATABASE_ERRORS as exc:
        error = translate(exc)
        if type(error) is DatabaseUnavailable:
            error = ConnectFailed(f"could not connect: {error}", sqlstate=error.sqlstate)
        raise error from exc


def is_conflict(error: BaseException) -> bool:
    """Whether ``error`` (translated or not) is a serialization failure or a deadlock:
    PostgreSQL rolled the transaction back, and running it again may succeed."""
    return isinstance(translate(error), TransactionConflict)


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip()
    # SQLAlchemy appends the statement and a help URL; the first line is the server's message.
    first = text.splitlines()[0] if text else type(error).__name__
    return first.removeprefix("<class 'asyncpg.exceptions.").split(">: ", 1)[-1]
