"""One step of a saga, and how definitions are stored so that they can evolve.

A step says which journey does the work, which action it runs there, how to undo it, at
which isolation level it runs, how long the coordinator waits for its reply and how often
it is tried.

Definitions evolve without breaking what is stored: the fields a definition had when the
first ones were stored (``FIRST_*_FIELDS``) are always written, and a field the engine
gains later is written only when it differs from its default (:func:`later_fields`). So a
definition that does not use a new field keeps its stored document and its content hash,
and registering it again after an upgrade is the no-op it was before. The positions added
later (:mod:`saga.shapes`) store themselves with the same helpers.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from saga.errors import ConfigurationError
from saga.retry import RetryPolicy

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,99}$")
_DEFAULT_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.05, max_delay=2.0)
_DEFAULT_COMPENSATION_RETRY = RetryPolicy(max_attempts=10, initial_delay=0.05, max_delay=5.0)
# Each attempt waits twice as long for its reply as the one before, up to this many times
# the step's timeout (5, 10, 20, 20, ... s at the default timeout).
REPLY_WAIT_GROWTH_CAP = 4.0

# The fields of the first stored documents: always written, defaults included, so that
# the documents and hashes stored since then stay what they were. Never add to these:
# a new field is optional, and written only when it is not at its default.
FIRST_STEP_FIELDS = frozenset(
    {
        "name",
        "journey",
        "action",
        "compensation",
        "no_compensation",
        "isolation",
        "timeout",
        "retry",
        "compensation_retry",
    }
)
FIRST_RETRY_FIELDS = frozenset(
    {"max_attempts", "initial_delay", "multiplier", "max_delay", "jitter"}
)
FIRST_SAGA_FIELDS = frozenset({"name", "version", "steps", "timeout"})


class IsolationLevel(StrEnum):
    """The isolation levels a step may ask for (the guide's three)."""

    READ_COMMITTED = "READ COMMITTED"
    REPEATABLE_READ = "REPEATABLE READ"
    SERIALIZABLE = "SERIALIZABLE"


class NoCompensation(StrEnum):
    """Why a step has no compensating action."""

    LAST = "last"
    """The final step: if it fails it did nothing, and once it succeeds the saga is done."""

    RETRIABLE = "retriable"
    """Retried until it succeeds (parked for an operator past its attempts); it never
    fails the saga, so it never needs undoing. Only retriable steps may follow it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One step of a saga, run by one journey service in one local transaction."""

    name: str
    """Unique within the definition; shows in the saga log."""

    journey: str
    """The journey service that runs the step (its command topic)."""

    action: str
    """The handler the journey service runs for this step."""

    compensation: str | None = None
    """The handler that undoes the action; ``None`` needs ``no_compensation``."""

    no_compensation: NoCompensation | None = None
    """Why there is no compensation, when there is none."""

    isolation: IsolationLevel = IsolationLevel.READ_COMMITTED
    """The isolation level of the participant's transaction (Serializable for money)."""

    timeout: float = 5.0
    """Seconds the coordinator waits for the first attempt's reply before it counts as
    timed out (later attempts wait longer: :meth:`reply_wait`); also the participant's
    statement timeout."""

    retry: RetryPolicy = _DEFAULT_RETRY
    """How often the action is tried when an attempt errs or times out."""

    compensation_retry: RetryPolicy = _DEFAULT_COMPENSATION_RETRY
    """How often the compensation is tried before the saga is parked for an operator."""

    @property
    def compensatable(self) -> bool:
        return self.compensation is not None

    @property
    def retriable_only(self) -> bool:
        return self.no_compensation is NoCompensation.RETRIABLE

    @property
    def timeout_ms(self) -> int:
        return max(1, round(self.timeout * 1000))

    def reply_wait(self, attempt: int) -> float:
        """Seconds the coordinator waits for the reply to attempt ``attempt`` (from 1) of
        the action or the compensation: the timeout for the first, twice the previous
        wait for each one after, at most REPLY_WAIT_GROWTH_CAP times the timeout.

        A reply is mostly late because the queue ahead of the participant is longer than
        the timeout, not because a message was lost; every attempt sends the same command
        and the first answer settles whichever attempt is current, so a wait that grows
        turns such a queue into one resend instead of a step out of attempts, and the
        resends no longer lengthen the queue they are waiting on (exponential backoff, as
        in TCP's retransmission timer). The price: a participant that is really gone is
        given up on later (35 s instead of 15 s for three attempts of 5 s)."""
        return self.timeout * min(2.0 ** max(0, attempt - 1), REPLY_WAIT_GROWTH_CAP)

    def to_document(self) -> dict[str, Any]:
        """The step as stored: the first fields always, later ones unless at default."""
        return {
            "name": self.name,
            "journey": self.journey,
            "action": self.action,
            "compensation": self.compensation,
            "no_compensation": self.no_compensation.value if self.no_compensation else None,
            "isolation": self.isolation.value,
            "timeout": float(self.timeout),
            "retry": retry_document(self.retry),
            "compensation_retry": retry_document(self.compensation_retry),
            **later_fields(self, FIRST_STEP_FIELDS),
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Step:
        """The step from its stored document; a field the document lacks takes its
        default (the document was stored before the field existed, or at its default)."""
        no_compensation = document.get("no_compensation")
        return cls(
            name=document["name"],
            journey=document["journey"],
            action=document["action"],
            compensation=document.get("compensation"),
            no_compensation=NoCompensation(no_compensation) if no_compensation else None,
            isolation=IsolationLevel(document["isolation"]),
            timeout=float(document["timeout"]),
            retry=retry_from(document["retry"]),
            compensation_retry=retry_from(document["compensation_retry"]),
            **later_values(cls, document, FIRST_STEP_FIELDS),
        )


def retry_document(policy: RetryPolicy) -> dict[str, Any]:
    return {
        "max_attempts": policy.max_attempts,
        "initial_delay": policy.initial_delay,
        "multiplier": policy.multiplier,
        "max_delay": policy.max_delay,
        "jitter": policy.jitter,
        **later_fields(policy, FIRST_RETRY_FIELDS),
    }


def retry_from(document: Mapping[str, Any]) -> RetryPolicy:
    first = {name: document[name] for name in FIRST_RETRY_FIELDS if name in document}
    return RetryPolicy(**first, **later_values(RetryPolicy, document, FIRST_RETRY_FIELDS))


def later_fields(instance: Any, first: frozenset[str]) -> dict[str, Any]:
    """The fields added after the first documents, each only when it is not at its
    default: a definition that does not use a new field keeps its document and hash."""
    later: dict[str, Any] = {}
    for spec in dataclasses.fields(instance):
        if spec.name in first or not spec.init:  # not init: worked out, not declared
            continue
        value = getattr(instance, spec.name)
        if spec.default is not dataclasses.MISSING and value == spec.default:
            continue
        if spec.default_factory is not dataclasses.MISSING and value == spec.default_factory():
            continue
        later[spec.name] = encoded(value)
    return later


def encoded(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, RetryPolicy):
        return retry_document(value)
    if isinstance(value, list | tuple):
        return [encoded(item) for item in value]
    return value


def later_values(kind: type, document: Mapping[str, Any], first: frozenset[str]) -> dict[str, Any]:
    """The later fields a stored document holds, decoded to their declared types."""
    known = {spec.name for spec in dataclasses.fields(kind)}
    unknown = sorted(set(document) - known)
    if unknown:
        # Ignoring them would run a saga otherwise than its definition says.
        raise ConfigurationError(
            f"a stored {kind.__name__} has fields this engine does not know: "
            f"{', '.join(unknown)}; a newer engine stored it, so upgrade this process"
        )
    hints = typing.get_type_hints(kind)
    return {
        spec.name: decoded(hints[spec.name], document[spec.name])
        for spec in dataclasses.fields(kind)
        if spec.name not in first and spec.name in document
    }


def decoded(hint: Any, raw: Any) -> Any:
    if raw is None:
        return None
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        # ``X | None``: decode as X (None was handled above).
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        hint = options[0] if len(options) == 1 else Any
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint(raw)
    if hint is RetryPolicy:
        return retry_from(raw)
    if typing.get_origin(hint) is tuple:
        return tuple(raw)
    return raw


def positive_seconds(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )
