"""Saga definitions: a named, versioned sequence of positions, checked before anything runs.

A position is a plain :class:`~saga.step.Step` (one journey, one local transaction) or one
of the shapes of :mod:`saga.shapes`: a :class:`~saga.shapes.Parallel` group, an
:class:`~saga.shapes.AwaitEvent` or a :class:`~saga.shapes.SubSaga`. Definitions are data:
the coordinator stores them (:meth:`SagaDefinition.to_document`) and drives every instance
from the stored copy of the version it started with, so a process that never imported the
definition can still finish its sagas. A definition that uses none of the new shapes is
stored exactly as before they existed, so it keeps its :attr:`~SagaDefinition.content_hash`.

The sequence is held in :attr:`SagaDefinition.positions`. :attr:`SagaDefinition.steps`
stays what it always was for a straight line (the plain steps, which is all the callers
written before the shapes handle) and refuses, with a message naming the first shape, to
answer for a definition that uses them: such a caller would mistake a group for a step.

The rules (:mod:`saga.validation`) keep the classic saga structure: positions that can be
undone first, then at most one final position that needs no compensation, or a tail of
retriable-only steps that must eventually succeed (they are retried, and parked for an
operator, never undone).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from saga.errors import ConfigurationError, UsageError
from saga.shapes import AwaitEvent, OnTimeout, Parallel, Position, SubSaga, position_from_document
from saga.step import IsolationLevel, NoCompensation, Step, later_fields
from saga.validation import check_definition

__all__ = [
    "AwaitEvent",
    "IsolationLevel",
    "NoCompensation",
    "OnTimeout",
    "Parallel",
    "Position",
    "SagaDefinition",
    "Step",
    "SubSaga",
]

# The fields of the first stored definitions: always part of the content hash. The
# positions were called "steps" then and are stored under that name still.
_FIRST_SAGA_FIELDS = frozenset({"name", "version", "positions", "timeout"})
# Fields that do not shape a run, so a change to them is not a new version.
_NOT_HASHED = frozenset({"search_attributes"})


@dataclass(frozen=True, slots=True, init=False)
class SagaDefinition:
    """``SagaDefinition("book_appointment", 1, [Step(...), Parallel(...), ...])``."""

    name: str
    version: int
    positions: tuple[Position, ...]
    """The saga's sequence: steps, parallel groups, waits and child sagas, in order."""

    timeout: float | None = None
    """Seconds the whole saga may take before the worker compensates it; ``None``: no limit."""

    search_attributes: tuple[str, ...] = ()
    """Top-level payload fields operators find this definition's sagas by (``saga ls
    --attr user_id=...``, the console's search): stored with each saga when it starts and
    indexed, so finding a member's sagas among millions is an index lookup. A field must
    not be one masked as personal or health data (:mod:`saga.masking`). Not part of the
    :attr:`content_hash`: it changes what is indexed, not how a saga runs, so it may be
    declared on a version already running (its sagas started from then on are indexed)."""

    # Read on every transition: worked out once. Not part of the stored document.
    _steps: tuple[Step, ...] | None = field(init=False, repr=False, compare=False, default=None)

    def __init__(
        self,
        name: str,
        version: int,
        steps: Sequence[Position] = (),
        *,
        timeout: float | None = None,
        positions: Sequence[Position] = (),
        search_attributes: Sequence[str] = (),
    ) -> None:
        # ``positions`` is what dataclasses.replace passes; people write ``steps``.
        if steps and positions:
            raise UsageError(
                f"SagaDefinition {name!r}: give its positions as steps or as positions, not both"
            )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "positions", tuple(steps or positions))
        object.__setattr__(self, "timeout", timeout)
        # A lone string is one field, not a sequence of one-letter fields.
        fields = (search_attributes,) if isinstance(search_attributes, str) else search_attributes
        object.__setattr__(self, "search_attributes", tuple(fields))
        plain = tuple(p for p in self.positions if isinstance(p, Step))
        object.__setattr__(self, "_steps", plain if len(plain) == len(self.positions) else None)

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.version)

    @property
    def straight_line(self) -> bool:
        """Every position is a plain step: none of the shapes of :mod:`saga.shapes`."""
        return self._steps is not None

    @property
    def steps(self) -> tuple[Step, ...]:
        """The steps of a straight-line definition (see the module docstring)."""
        if self._steps is not None:
            return self._steps
        index, shape = next(
            (index, position)
            for index, position in enumerate(self.positions)
            if not isinstance(position, Step)
        )
        raise ConfigurationError(
            f"saga definition {self.name!r} has a {_kind_name(shape)} at position {index} "
            f"({getattr(shape, 'name', '?')!r}): .steps lists the steps of a straight-line "
            "saga only; read .positions"
        )

    def validate(
        self, *, children: Mapping[tuple[str, int], SagaDefinition] | None = None
    ) -> SagaDefinition:
        """Raise :class:`DefinitionError` naming the definition and step at the first fault.

        ``children`` maps ``(name, version)`` to the definitions a :class:`SubSaga` may
        start; with it, a child in a position that may need undoing is checked to be fully
        compensable (the coordinator passes its registered definitions). Without it, only
        what this definition says is checked.
        """
        check_definition(self, children)
        return self

    def to_document(self) -> list[dict[str, Any]]:
        """The positions as stored in ``shared.saga_definition.steps``."""
        return [position.to_document() for position in self.positions]

    @property
    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON of everything that shapes an instance's run."""
        canonical = json.dumps(
            {
                "name": self.name,
                "version": self.version,
                "timeout": None if self.timeout is None else float(self.timeout),
                "steps": self.to_document(),
                **later_fields(self, _FIRST_SAGA_FIELDS | _NOT_HASHED),
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
        search_attributes: Sequence[str] = (),
    ) -> SagaDefinition:
        """The definition from its stored positions (plain steps and shapes alike)."""
        return cls(
            name,
            version,
            [position_from_document(s) for s in steps],
            timeout=timeout,
            search_attributes=search_attributes,
        )


def _kind_name(position: object) -> str:
    names = {Parallel: "parallel group", AwaitEvent: "wait (AwaitEvent)", SubSaga: "child saga"}
    return names.get(type(position), type(position).__name__)
