"""Saga definitions: a named, versioned list of steps, checked before anything runs.

A step says which journey does the work, which action it runs there, how to undo it, at
which isolation level it runs, how long the coordinator waits for its reply and how often
it is tried. Definitions are data: the coordinator stores them (:meth:`to_document`) and
drives every instance from the stored copy of the version it started with, so a process
that never imported the definition can still finish its sagas.

Definitions evolve without breaking what is stored: the fields a definition had when the
first ones were stored (``_FIRST_*_FIELDS``) are always written, and a field the engine
gains later is written only when it differs from its default. So a definition that does
not use a new field keeps its stored document and its :attr:`SagaDefinition.content_hash`,
and registering it again after an upgrade is the no-op it was before.

Classic saga structure is enforced: compensatable steps first, then at most one step that
needs no compensation because nothing comes after it, or a tail of retriable-only steps
that must eventually succeed (they are retried, and parked for an operator, never undone).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from saga.errors import ConfigurationError, DefinitionError
from saga.retry import RetryPolicy

_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,99}$")
_DEFAULT_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.05, max_delay=2.0)
_DEFAULT_COMPENSATION_RETRY = RetryPolicy(max_attempts=10, initial_delay=0.05, max_delay=5.0)

# The fields of the first stored documents: always written, defaults included, so that
# the documents and hashes stored since then stay what they were. Never add to these:
# a new field is optional, and written only when it is not at its default.
_FIRST_STEP_FIELDS = frozenset(
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
_FIRST_RETRY_FIELDS = frozenset(
    {"max_attempts", "initial_delay", "multiplier", "max_delay", "jitter"}
)
_FIRST_SAGA_FIELDS = frozenset({"name", "version", "steps", "timeout"})


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
    """Seconds the coordinator waits for a reply before the attempt counts as timed out;
    also the participant's statement timeout."""

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
            "retry": _retry_document(self.retry),
            "compensation_retry": _retry_document(self.compensation_retry),
            **_later_fields(self, _FIRST_STEP_FIELDS),
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
            retry=_retry_from(document["retry"]),
            compensation_retry=_retry_from(document["compensation_retry"]),
            **_later_values(cls, document, _FIRST_STEP_FIELDS),
        )


@dataclass(frozen=True, slots=True)
class SagaDefinition:
    """``SagaDefinition("book_appointment", 1, [Step(...), ...])``."""

    name: str
    version: int
    steps: Sequence[Step]
    timeout: float | None = field(default=None, kw_only=True)
    """Seconds the whole saga may take before the worker compensates it; ``None``: no limit."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.version)

    def validate(self) -> SagaDefinition:
        """Raise :class:`DefinitionError` naming the definition and step at the first fault."""
        _check_definition(self)
        return self

    def to_document(self) -> list[dict[str, Any]]:
        """The steps as stored in ``shared.saga_definition.steps``."""
        return [step.to_document() for step in self.steps]

    @property
    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON of everything that shapes an instance's run."""
        canonical = json.dumps(
            {
                "name": self.name,
                "version": self.version,
                "timeout": None if self.timeout is None else float(self.timeout),
                "steps": self.to_document(),
                **_later_fields(self, _FIRST_SAGA_FIELDS),
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def from_document(
        cls,
        name: str,
        version: int,
        steps: Sequence[Mapping[str, Any]],
        *,
        timeout: float | None = None,
    ) -> SagaDefinition:
        return cls(name, version, [Step.from_document(s) for s in steps], timeout=timeout)


def _retry_document(policy: RetryPolicy) -> dict[str, Any]:
    return {
        "max_attempts": policy.max_attempts,
        "initial_delay": policy.initial_delay,
        "multiplier": policy.multiplier,
        "max_delay": policy.max_delay,
        "jitter": policy.jitter,
        **_later_fields(policy, _FIRST_RETRY_FIELDS),
    }


def _retry_from(document: Mapping[str, Any]) -> RetryPolicy:
    first = {name: document[name] for name in _FIRST_RETRY_FIELDS if name in document}
    return RetryPolicy(**first, **_later_values(RetryPolicy, document, _FIRST_RETRY_FIELDS))


def _later_fields(instance: Any, first: frozenset[str]) -> dict[str, Any]:
    """The fields added after the first documents, each only when it is not at its
    default: a definition that does not use a new field keeps its document and hash."""
    later: dict[str, Any] = {}
    for spec in dataclasses.fields(instance):
        if spec.name in first:
            continue
        value = getattr(instance, spec.name)
        if spec.default is not dataclasses.MISSING and value == spec.default:
            continue
        if spec.default_factory is not dataclasses.MISSING and value == spec.default_factory():
            continue
        later[spec.name] = _encoded(value)
    return later


def _encoded(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, RetryPolicy):
        return _retry_document(value)
    if isinstance(value, list | tuple):
        return [_encoded(item) for item in value]
    return value


def _later_values(kind: type, document: Mapping[str, Any], first: frozenset[str]) -> dict[str, Any]:
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
        spec.name: _decoded(hints[spec.name], document[spec.name])
        for spec in dataclasses.fields(kind)
        if spec.name not in first and spec.name in document
    }


def _decoded(hint: Any, raw: Any) -> Any:
    if raw is None:
        return None
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        # ``X | None``: decode as X (None was handled above).
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        hint = options[0] if len(options) == 1 else Any
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint(raw)
    if hint is RetryPolicy:
        return _retry_from(raw)
    if typing.get_origin(hint) is tuple:
        return tuple(raw)
    return raw


def _positive_seconds(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _check_definition(definition: SagaDefinition) -> None:
    name = definition.name

    def fail(problem: str, step: str | None = None) -> DefinitionError:
        return DefinitionError(name, problem, step=step)

    if not isinstance(name, str) or not _NAME.match(name):
        raise fail(
            "the name must be 1-100 lower-case letters, digits, '_', '.' or '-', "
            "starting with a letter"
        )
    if (
        isinstance(definition.version, bool)
        or not isinstance(definition.version, int)
        or definition.version < 1
    ):
        raise fail(f"the version must be an integer >= 1, got {definition.version!r}")
    if definition.timeout is not None and not _positive_seconds(definition.timeout):
        raise fail(
            f"the saga timeout must be a finite number > 0 seconds, got {definition.timeout!r}"
        )
    if not definition.steps:
        raise fail("it has no steps")

    seen: set[str] = set()
    retriable_from: str | None = None
    last = len(definition.steps) - 1
    for index, step in enumerate(definition.steps):
        if not isinstance(step, Step):
            raise fail(f"step {index} is a {type(step).__name__}, not a Step")
        label = step.name
        if not isinstance(step.name, str) or not _NAME.match(step.name):
            raise fail(
                "a step name must be 1-100 lower-case letters, digits, '_', '.' or '-'",
                step=str(step.name) or f"#{index + 1}",
            )
        if step.name in seen:
            raise fail("the step name is used twice", step=label)
        seen.add(step.name)
        for what in ("journey", "action"):
            value = getattr(step, what)
            if not isinstance(value, str) or not _NAME.match(value):
                raise fail(f"the {what} must be a lower-case identifier, got {value!r}", step=label)
        if not isinstance(step.isolation, IsolationLevel):
            try:
                IsolationLevel(step.isolation)
            except ValueError:
                raise fail(
                    f"unknown isolation level {step.isolation!r}; use one of "
                    + ", ".join(level.name for level in IsolationLevel),
                    step=label,
                ) from None
            raise fail(f"isolation must be an IsolationLevel, got {step.isolation!r}", step=label)
        if not _positive_seconds(step.timeout):
            raise fail(
                f"the timeout must be a finite number > 0 seconds, got {step.timeout!r}", step=label
            )
        for what in ("retry", "compensation_retry"):
            if not isinstance(getattr(step, what), RetryPolicy):
                raise fail(f"{what} must be a RetryPolicy", step=label)

        if step.compensation is not None:
            if step.no_compensation is not None:
                raise fail("it names a compensation and says it needs none", step=label)
            if not isinstance(step.compensation, str) or not _NAME.match(step.compensation):
                raise fail(
                    f"the compensation must be a lower-case identifier, got {step.compensation!r}",
                    step=label,
                )
            if step.compensation == step.action:
                raise fail("the compensation is the action itself", step=label)
            if retriable_from is not None:
                raise fail(
                    f"a compensatable step cannot follow the retriable-only step "
                    f"{retriable_from!r}, which can never be undone",
                    step=label,
                )
        elif step.no_compensation is None:
            raise fail(
                "it has no compensation; name one, or mark it "
                "NoCompensation.LAST (final step) or NoCompensation.RETRIABLE",
                step=label,
            )
        elif step.no_compensation is NoCompensation.LAST:
            if index != last:
                raise fail("it is marked NoCompensation.LAST but is not the final step", step=label)
            if retriable_from is not None:
                raise fail(
                    f"it may fail, but follows the retriable-only step "
                    f"{retriable_from!r}, which can never be undone",
                    step=label,
                )
        elif step.no_compensation is NoCompensation.RETRIABLE:
            retriable_from = retriable_from or step.name
        else:
            raise fail(f"unknown no_compensation {step.no_compensation!r}", step=label)
