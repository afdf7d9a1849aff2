"""The positions of a saga beyond a plain step: parallel groups, waits and child sagas.

A saga is a sequence of positions; a position is a :class:`~saga.step.Step`, a
:class:`Parallel` group of steps, an :class:`AwaitEvent` or a :class:`SubSaga`. Every name
(positions and the branches of groups alike) is unique across the saga, because results
land in the context under it: a plain step's result merges into the context as it always
has, while a branch's result, a signal's payload and a child saga's final context are
each stored under the name of their position (``context["reserve_slot"]``), so that
parallel or foreign results never overwrite each other.

Documents: a plain step is stored without a ``kind`` (exactly as before these shapes
existed, so straight-line definitions keep their documents and hashes); each new position
carries ``"kind"`` (:data:`KINDS`), and a kind this engine does not know is refused.

References (:class:`AwaitEvent` ``when``, :class:`SubSaga` ``payload``) are data, never
code: ``"payload.<field>"`` or ``"context.<field>"``, with dotted sub-fields allowed
(``"context.review.amount_cents"``). They are checked when the definition is validated
and read by the state machine (:func:`resolve_reference`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from saga.errors import ConfigurationError
from saga.step import Step, later_fields, later_values

_REFERENCE = re.compile(r"^(payload|context)(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# The fields every stored document of each kind holds (later fields follow the rule of
# saga.step: written only when not at their default). Never add to these.
_FIRST_PARALLEL_FIELDS = frozenset({"name", "branches"})
_FIRST_AWAIT_FIELDS = frozenset({"name", "event", "timeout", "on_timeout", "when"})
_FIRST_SUB_SAGA_FIELDS = frozenset({"name", "definition", "payload"})


class OnTimeout(StrEnum):
    """What a wait does when no signal came before its timeout."""

    COMPENSATE = "compensate"
    """Undo the positions before the wait (the wait itself has nothing to undo)."""

    CONTINUE = "continue"
    """Go on without the signal: the context has no entry under the wait's name."""


@dataclass(frozen=True, slots=True)
class Parallel:
    """``Parallel("reserve", [Step(...), Step(...)])``: branches run at the same time.

    Every branch's command goes out in one transition; the group succeeds when every
    branch has. When one fails, nothing new starts, the branches still in flight are
    awaited (or time out), and every branch that succeeded or whose outcome is unknown is
    compensated, concurrently, before the positions ahead of the group are undone.
    """

    name: str
    """Unique within the definition; shows in the saga log."""

    branches: Sequence[Step]
    """At least two steps; each one's result goes into the context under its name."""

    kind: ClassVar[str] = "parallel"

    def __post_init__(self) -> None:
        object.__setattr__(self, "branches", tuple(self.branches))

    @property
    def compensatable(self) -> bool:
        return all(branch.compensatable for branch in self.branches)

    @property
    def retriable_only(self) -> bool:
        return False

    def to_document(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "branches": [branch.to_document() for branch in self.branches],
            **later_fields(self, _FIRST_PARALLEL_FIELDS),
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Parallel:
        fields = _without_kind(document)
        return cls(
            name=fields["name"],
            branches=[Step.from_document(branch) for branch in fields["branches"]],
            **later_values(cls, fields, _FIRST_PARALLEL_FIELDS),
        )


@dataclass(frozen=True, slots=True)
class AwaitEvent:
    """``AwaitEvent("review", "claim_reviewed", timeout=86400.0)``: pause for a signal.

    The saga waits, visibly, until :meth:`Coordinator.signal` delivers ``event`` (its
    payload goes into the context under the wait's name) or ``timeout`` passes. A signal
    that comes before the saga reaches the wait is kept and consumed when it does. A wait
    has no compensation: undoing passes through it.
    """

    name: str
    """Unique within the definition; the signal's payload lands under it in the context."""

    event: str
    """The signal that ends the wait."""

    timeout: float
    """Seconds the saga waits for the signal."""

    on_timeout: OnTimeout = field(default=OnTimeout.COMPENSATE, kw_only=True)
    """Compensate (the default) or continue without the signal."""

    when: str | None = field(default=None, kw_only=True)
    """A reference (``"context.needs_review"``): the saga waits only when it is truthy.
    The wait is skipped only when the field is present and falsy, so a handler that forgot
    to set it gets a wait a person can see rather than a silently skipped review."""

    kind: ClassVar[str] = "await_event"

    def __post_init__(self) -> None:
        known = {member.value: member for member in OnTimeout}
        if not isinstance(self.on_timeout, OnTimeout) and self.on_timeout in known:
            # "continue" as plain text is fine; anything else is left for validation to name.
            object.__setattr__(self, "on_timeout", known[self.on_timeout])

    @property
    def compensatable(self) -> bool:
        return True

    @property
    def retriable_only(self) -> bool:
        return False

    @property
    def timeout_ms(self) -> int:
        return max(1, round(self.timeout * 1000))

    def to_document(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "event": self.event,
            "timeout": float(self.timeout),
            "on_timeout": OnTimeout(self.on_timeout).value,
            "when": self.when,
            **later_fields(self, _FIRST_AWAIT_FIELDS),
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> AwaitEvent:
        fields = _without_kind(document)
        return cls(
            fields["name"],
            fields["event"],
            float(fields["timeout"]),
            on_timeout=OnTimeout(fields["on_timeout"]),
            when=fields["when"],
            **later_values(cls, fields, _FIRST_AWAIT_FIELDS),
        )


@dataclass(frozen=True, slots=True)
class SubSaga:
    """``SubSaga("credit", ("apply_wellness_credit", 1), payload={...})``: a child saga.

    The parent starts the child (at most one per position and attempt) and the position
    ends when the child does: completed, the child's context is the result (under the
    position's name); compensated, the position failed and the parent compensates. Undoing
    the position asks the completed child to compensate its own steps.
    """

    name: str
    """Unique within the definition; the child's final context lands under it."""

    definition: tuple[str, int]
    """The child's definition, pinned by name and version (``CHILD.key``), so a stored
    parent always starts the same child version."""

    payload: Mapping[str, str] = field(default_factory=dict, kw_only=True)
    """The child's payload: each field a reference to the parent's payload or context
    (``{"amount_cents": "context.credit_cents"}``)."""

    check_every: float = field(default=30.0, kw_only=True)
    """Seconds between the parent's looks at its child while it waits on it. The child's
    end (and the parent's request that it compensate) travel as messages; one lost with
    a broker is found at the next look, which reads the child's row instead."""

    kind: ClassVar[str] = "sub_saga"

    def __post_init__(self) -> None:
        if isinstance(self.definition, list):  # read back from JSON
            object.__setattr__(self, "definition", tuple(self.definition))
        object.__setattr__(self, "payload", dict(self.payload))

    @property
    def compensatable(self) -> bool:
        # Undone by its child's own compensations; validation checks, with the child's
        # definition at hand, that those exist wherever the parent may need them.
        return True

    @property
    def retriable_only(self) -> bool:
        return False

    def child_payload(
        self, payload: Mapping[str, Any], context: Mapping[str, Any]
    ) -> tuple[dict[str, Any], list[str]]:
        """The child's payload, and the references that did not resolve."""
        built: dict[str, Any] = {}
        missing: list[str] = []
        for name, reference in self.payload.items():
            found, value = resolve_reference(reference, payload, context)
            if found:
                built[name] = value
            else:
                missing.append(reference)
        return built, missing

    def to_document(self) -> dict[str, Any]:
        name, version = self.definition
        return {
            "kind": self.kind,
            "name": self.name,
            "definition": {"name": name, "version": version},
            "payload": dict(self.payload),
            **later_fields(self, _FIRST_SUB_SAGA_FIELDS),
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> SubSaga:
        fields = _without_kind(document)
        child = fields["definition"]
        return cls(
            fields["name"],
            (child["name"], int(child["version"])),
            payload=dict(fields["payload"]),
            **later_values(cls, fields, _FIRST_SUB_SAGA_FIELDS),
        )


Position = Step | Parallel | AwaitEvent | SubSaga
"""One place in a saga's sequence."""

KINDS: Mapping[str, type[Parallel] | type[AwaitEvent] | type[SubSaga]] = {
    kind.kind: kind for kind in (Parallel, AwaitEvent, SubSaga)
}
"""The stored ``kind`` of each new position; a plain step's document has none."""


def position_from_document(document: Mapping[str, Any]) -> Position:
    """A stored position: a plain step when the document has no ``kind``."""
    kind = document.get("kind")
    if kind is None:
        return Step.from_document(document)
    if kind not in KINDS:
        raise ConfigurationError(
            f"a stored saga position {document.get('name')!r} has kind {kind!r}, which this "
            f"engine does not know (it knows {', '.join(sorted(KINDS))}); a newer engine "
            "stored it, so upgrade this process"
        )
    return KINDS[kind].from_document(document)


def _without_kind(document: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in document.items() if name != "kind"}


def reference_problem(reference: object) -> str | None:
    """Why ``reference`` is not a valid reference, or ``None`` when it is."""
    if not isinstance(reference, str) or not _REFERENCE.match(reference):
        return (
            f"{reference!r} is not a reference; write 'payload.<field>' or "
            "'context.<field>' (dotted sub-fields allowed)"
        )
    return None


def field_name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not _FIELD.match(name):
        return f"{name!r} is not a field name (letters, digits and '_', not starting with a digit)"
    return None


def reads_payload(reference: str) -> bool:
    return reference.startswith("payload.")


def resolve_reference(
    reference: str, payload: Mapping[str, Any], context: Mapping[str, Any]
) -> tuple[bool, Any]:
    """``(True, value)`` when every part of the reference exists, else ``(False, None)``."""
    root, *path = reference.split(".")
    value: Any = payload if root == "payload" else context
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, value
