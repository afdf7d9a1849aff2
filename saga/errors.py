"""Every error the engine raises, rooted at :class:`SagaError`.

The tree::

    SagaError
    ├── ConfigurationError            misuse: fix the configuration or the code, do not retry
    │   ├── SettingsError             a setting is missing or malformed (names the variable)
    │   ├── MigrationNameError        a migration name breaks the add_/update_/remove_ rule
    │   ├── DefinitionError           a saga definition is invalid (names it and the step)
    │   ├── DefinitionConflict        a changed definition re-registered under its version
    │   ├── UnknownDefinition         no definition of that name and version is registered
    │   ├── PolicyError               a RetryPolicy field is out of range (also ValueError)
    │   ├── HandlerError              a handler registration is wrong, e.g. a bad action name
    │   │   └── HandlerConflict           a second handler for an action (also ValueError)
    │   ├── UsageError                an engine call's arguments contradict each other
    │   │                             (also ValueError)
    │   └── BrokerFeatureMissing      the broker lacks what a setting or command needs
    │                                 (Tansu: idempotent producers, adding partitions)
    ├── InvalidPayload                a saga's payload is not a JSON object, or too large
    │                                 (also TypeError and ValueError)
    ├── SagaNotFound                  no saga instance has that id
    ├── SignalRefused                 a signal for a finished saga, or for an event its
    │   │                             definition never waits for: nothing was stored
    │   └── SignalConflict            a signal id already used with another saga, event
    │                                 or payload
    ├── SagaFailed                    awaited saga ended compensated or parked (``saga.testing``)
    ├── SagaTimeout                   awaited saga did not end in time
    ├── StepRefused                   a handler declines for a business reason (not a fault)
    ├── MessageRejected               a message cannot be handled: dead-lettered with ``reason``
    │   └── MalformedMessage          it is not a valid envelope (empty, not JSON, bad fields)
    ├── BrokerUnavailable             retriable = True: Kafka could not be reached or did not ack
    └── DatabaseError                 a failure reported by, or on the way to, PostgreSQL
        ├── RetriableDatabaseError    retriable = True: trying again later may succeed
        │   ├── TransactionConflict       rolled back for a conflict: re-running is safe
        │   │   ├── SerializationConflict     SQLSTATE 40001
        │   │   └── DeadlockDetected          SQLSTATE 40P01
        │   └── DatabaseUnavailable       connection refused, lost or timed out; if it was
        │                                 lost during COMMIT the outcome is unknown
        ├── RetriesExhausted          a conflict kept happening past the retry limit
        ├── IntegrityViolation        SQLSTATE class 23: the data broke a constraint
        │   ├── UniqueViolation           23505
        │   ├── ForeignKeyViolation       23503
        │   ├── CheckViolation            23514
        │   └── ExclusionViolation        23P01 (for example a double-booked provider)
        ├── StatementTimeout          57014: the statement outran its time limit
        ├── InsufficientPrivilege     42501: the role may not touch that object
        └── SchemaNotMigrated         the tables are missing: run `saga db upgrade`

Retryability is the class attribute ``retriable``, never read from a message. The errors
marked "also ValueError/TypeError" replaced those built-in errors and still subclass them,
so code that caught the built-in error keeps working. Driver
exceptions are translated where the database code lives (:mod:`saga.store.errors`) and
chained with ``raise ... from``, so nothing from asyncpg or SQLAlchemy leaks through the
public API.
"""

from __future__ import annotations


class SagaError(Exception):
    """Root of every error raised by the engine."""

    retriable: bool = False


class ConfigurationError(SagaError):
    """The engine was configured or called wrongly; retrying cannot help."""


class SettingsError(ConfigurationError):
    """One or more settings are missing or malformed.

    ``problems`` maps each variable name to what was expected of it.
    """

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = dict(problems)
        lines = [f"{name}: {why}" for name, why in sorted(self.problems.items())]
        super().__init__("invalid settings:\n  " + "\n  ".join(lines))


class MigrationNameError(ConfigurationError):
    """A new migration's name does not follow the guide's naming rule."""


class DefinitionError(ConfigurationError):
    """A saga definition breaks a rule; the message names the definition and the step."""

    def __init__(self, definition: str, problem: str, *, step: str | None = None) -> None:
        where = f"saga definition {definition!r}" + (f", step {step!r}" if step else "")
        super().__init__(f"{where}: {problem}")
        self.definition = definition
        self.step = step
        self.problem = problem


class DefinitionConflict(ConfigurationError):
    """A definition was registered again under the same name and version with other
    content; publish the change as a new version instead."""


class UnknownDefinition(ConfigurationError):
    """No definition with that name (and version) is registered."""


class PolicyError(ConfigurationError, ValueError):
    """A policy object (:class:`~saga.retry.RetryPolicy`) was given a value out of range;
    the message names the field and the value."""


class HandlerError(ConfigurationError, ValueError):
    """A step handler cannot be registered as asked (the message names the journey and
    the action)."""


class HandlerConflict(HandlerError):
    """A journey already has a handler for that action: each action has exactly one."""


class UsageError(ConfigurationError, ValueError):
    """An engine call was given arguments that contradict each other; the message names
    them."""


class BrokerFeatureMissing(ConfigurationError):
    """The Kafka broker does not do what a setting or an operator's command asks for
    (``KAFKA_ENABLE_IDEMPOTENCE=true``, ``saga topics add-partitions``): ask for less, or
    use a broker that does it. Retrying against the same broker cannot help."""


class InvalidPayload(SagaError, TypeError, ValueError):
    """The payload given to :meth:`~saga.Coordinator.start` cannot start a saga: it is not
    a mapping, not JSON-serialisable, or its first command would exceed the broker's
    message size. The message says which."""


class SagaNotFound(SagaError):
    """No saga instance has the given id."""


class SignalRefused(SagaError):
    """:meth:`~saga.Coordinator.signal` refused the signal (the saga is finished, or its
    definition never waits for that event); nothing was stored. The message says why."""


class SignalConflict(SignalRefused):
    """A signal id was used before for another saga, event or payload: a signal id
    names one signal, and sending it again must repeat it exactly."""


class SagaTimeout(SagaError):
    """A saga did not reach a final state within the time the caller waited."""


class SagaFailed(SagaError):
    """An awaited saga ended compensated or parked; ``status`` and ``error`` say how."""

    def __init__(self, saga_id: object, status: str, error: str | None) -> None:
        super().__init__(f"saga {saga_id} ended {status}: {error or 'no reason recorded'}")
        self.saga_id = saga_id
        self.status = status
        self.error = error


class StepRefused(SagaError):
    """Raised by a step handler to decline for a business reason (slot taken, not covered).

    The participant rolls back the handler's writes and replies *failed* with ``reason``;
    the coordinator then compensates. It is an answer, not a fault, so it is never retried.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MessageRejected(SagaError):
    """A consumed message cannot be handled (unparseable, invalid, oversize, unknown saga
    or action); it goes to the dead-letter topic with ``reason`` and consumption goes on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MalformedMessage(MessageRejected):
    """A consumed message is not a valid envelope: empty, not JSON, or a field missing or
    of the wrong type (dead-lettered as ``malformed`` rather than ``rejected``)."""


class BrokerUnavailable(SagaError):
    """The Kafka broker could not be reached or did not acknowledge a message. The message
    itself is fine, so sending it again later may succeed."""

    retriable = True


class DatabaseError(SagaError):
    """PostgreSQL refused or failed a statement.

    ``sqlstate`` is the five-character SQLSTATE when the server sent one.
    """

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class RetriableDatabaseError(DatabaseError):
    """Running the whole unit of work again may succeed."""

    retriable = True


class TransactionConflict(RetriableDatabaseError):
    """PostgreSQL rolled the transaction back because of a concurrent one. Nothing of it
    was committed, so running the whole unit of work again is always safe."""


class SerializationConflict(TransactionConflict):
    """SQLSTATE 40001: a concurrent transaction made this one's view invalid."""


class DeadlockDetected(TransactionConflict):
    """SQLSTATE 40P01: PostgreSQL broke a deadlock by aborting this transaction."""


class DatabaseUnavailable(RetriableDatabaseError):
    """The server could not be reached, or the connection broke.

    Not re-run by the transaction runner: a connection lost while committing leaves the
    outcome unknown, so only a caller whose work is idempotent may simply try again.
    """


class PoolExhausted(DatabaseUnavailable):
    """No pooled connection came free within ``DATABASE_CONNECTION_TIMEOUT``.

    Nothing was sent to the server, so the transaction runner waits and tries again within
    its retry policy; it surfaces only when the pool stays full that long.
    """


class ConnectFailed(DatabaseUnavailable):
    """A new connection could not be opened: the server refused it, did not answer within
    ``DATABASE_CONNECTION_TIMEOUT``, or is starting, shutting down or full.

    The unit had not begun, so the transaction runner waits and tries again within its
    retry policy, as for :class:`PoolExhausted`; it surfaces only when every attempt fails.
    """


class RetriesExhausted(DatabaseError):
    """A transaction conflict happened on every attempt the policy allowed."""

    def __init__(self, unit: str, attempts: int, last: TransactionConflict) -> None:
        super().__init__(
            f"unit of work {unit!r} gave up after {attempts} attempts; last error: {last}",
            sqlstate=last.sqlstate,
        )
        self.unit = unit
        self.attempts = attempts
        self.last = last


class IntegrityViolation(DatabaseError):
    """SQLSTATE class 23: the data broke a constraint. ``constraint`` names it when known."""

    def __init__(
        self, message: str, *, sqlstate: str | None = None, constraint: str | None = None
    ) -> None:
        super().__init__(message, sqlstate=sqlstate)
        self.constraint = constraint


class UniqueViolation(IntegrityViolation):
    """SQLSTATE 23505."""


class ForeignKeyViolation(IntegrityViolation):
    """SQLSTATE 23503."""


class CheckViolation(IntegrityViolation):
    """SQLSTATE 23514."""


class ExclusionViolation(IntegrityViolation):
    """SQLSTATE 23P01."""


class StatementTimeout(DatabaseError):
    """SQLSTATE 57014: the statement ran past its ``statement_timeout``."""


class InsufficientPrivilege(DatabaseError):
    """SQLSTATE 42501: the connected role lacks a privilege."""


class SchemaNotMigrated(DatabaseError):
    """The engine's tables are missing from the database."""
