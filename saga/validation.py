"""The rules a saga definition must keep, checked before it is stored or run.

Each fault raises :class:`~saga.errors.DefinitionError` naming the definition and the
position (or branch) at fault; the first fault found is the one reported.

Structure: positions that can be undone come first; then at most one final position that
needs no compensation (a step marked ``NoCompensation.LAST``, or a parallel group whose
branches may be so marked), or a tail of retriable-only steps that must eventually
succeed and are never undone. So nothing that may fail the saga comes after a step that
can never be undone: a parallel group (a branch may fail), a child saga (it may end
compensated) or a wait that compensates on timeout may not follow a retriable-only step;
a wait that continues on timeout may.

Parallel groups have at least two branches, each a plain step; a retriable-only branch is
refused (its siblings' failure would need it undone). Names are unique across the whole
saga, branches included, since results land in the context under them.

A child saga in a position that may need undoing (anything but the final position) must
be fully compensable: every position of its definition can be undone, down through its
own children. The child's definition is not part of the parent's, so this is checked only
when ``children`` is given (the coordinator passes its registered definitions); so are
cycles beyond a definition naming itself, which is always refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from saga.errors import DefinitionError
from saga.retry import RetryPolicy
from saga.shapes import (
    AwaitEvent,
    OnTimeout,
    Parallel,
    SubSaga,
    field_name_problem,
    reference_problem,
)
from saga.step import NAME_PATTERN, IsolationLevel, NoCompensation, Step, positive_seconds

SEARCH_ATTRIBUTE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,62}\Z")

if TYPE_CHECKING:
    from saga.definition import SagaDefinition

    Fail = Callable[..., DefinitionError]
    Children = Mapping[tuple[str, int], SagaDefinition]


def check_definition(definition: SagaDefinition, children: Children | None) -> None:
    name = definition.name

    def fail(problem: str, step: str | None = None) -> DefinitionError:
        return DefinitionError(name, problem, step=step)

    _check_identity(definition, fail)
    _check_search_attributes(definition, fail)
    if not definition.positions:
        raise fail("it has no steps")
    _Walk(definition, children, fail).check()


def _check_identity(definition: SagaDefinition, fail: Fail) -> None:
    if not isinstance(definition.name, str) or not NAME_PATTERN.match(definition.name):
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
    if definition.timeout is not None and not positive_seconds(definition.timeout):
        raise fail(
            f"the saga timeout must be a finite number > 0 seconds, got {definition.timeout!r}"
        )


def _check_search_attributes(definition: SagaDefinition, fail: Fail) -> None:
    seen: set[str] = set()
    for field_name in definition.search_attributes:
        if not isinstance(field_name, str) or not SEARCH_ATTRIBUTE_PATTERN.match(field_name):
            raise fail(
                f"search attribute {field_name!r}: a top-level payload field name of 1-63 "
                "lower-case letters, digits or '_', starting with a letter"
            )
        if field_name in seen:
            raise fail(f"search attribute {field_name!r} is declared twice")
        seen.add(field_name)


class _Walk:
    """One pass over the positions, remembering the names seen and whether a
    retriable-only step (after which nothing may fail) has been passed."""

    def __init__(self, definition: SagaDefinition, children: Children | None, fail: Fail) -> None:
        self.definition = definition
        self.children = children
        self.fail = fail
        self.seen: set[str] = set()
        self.retriable_from: str | None = None
        self.last = len(definition.positions) - 1

    def check(self) -> None:
        for index, position in enumerate(self.definition.positions):
            if isinstance(position, Step):
                self._plain_step(position, index)
            elif isinstance(position, Parallel):
                self._parallel(position, index)
            elif isinstance(position, AwaitEvent):
                self._await_event(position, index)
            elif isinstance(position, SubSaga):
                self._sub_saga(position, index)
            else:
                raise self.fail(
                    f"step {index} is a {type(position).__name__}, not a Step "
                    "(nor a Parallel, AwaitEvent or SubSaga)"
                )

    def _name(self, name: object, index: int, what: str = "a step name") -> str:
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise self.fail(
                f"{what} must be 1-100 lower-case letters, digits, '_', '.' or '-'",
                step=str(name) or f"#{index + 1}",
            )
        if name in self.seen:
            raise self.fail(
                "the step name is used twice (names are unique across the saga, branches included)",
                step=name,
            )
        self.seen.add(name)
        return name

    def _may_fail_here(self, label: str, what: str) -> None:
        if self.retriable_from is not None:
            raise self.fail(
                f"{what} cannot follow the retriable-only step {self.retriable_from!r}, "
                "which can never be undone",
                step=label,
            )

    def _plain_step(self, step: Step, index: int) -> None:
        label = self._name(step.name, index)
        _check_step_fields(step, label, self.fail)
        if step.compensation is not None:
            self._may_fail_here(label, "a compensatable step")
        elif step.no_compensation is NoCompensation.LAST:
            if index != self.last:
                raise self.fail(
                    "it is marked NoCompensation.LAST but is not the final step", step=label
                )
            if self.retriable_from is not None:
                raise self.fail(
                    f"it may fail, but follows the retriable-only step "
                    f"{self.retriable_from!r}, which can never be undone",
                    step=label,
                )
        elif step.no_compensation is NoCompensation.RETRIABLE:
            self.retriable_from = self.retriable_from or step.name

    def _parallel(self, group: Parallel, index: int) -> None:
        label = self._name(group.name, index, "a parallel group's name")
        self._may_fail_here(label, "a parallel group")
        branches = group.branches
        if len(branches) < 2:
            raise self.fail(
                f"a parallel group needs at least two branches, got {len(branches)}", step=label
            )
        for number, branch in enumerate(branches):
            if not isinstance(branch, Step):
                raise self.fail(
                    f"branch {number} is a {type(branch).__name__}, not a Step", step=label
                )
            branch_label = self._name(branch.name, index)
            _check_step_fields(branch, branch_label, self.fail)
            if branch.no_compensation is NoCompensation.RETRIABLE:
                raise self.fail(
                    f"a branch cannot be retriable-only: when a sibling fails, the branches "
                    f"of group {group.name!r} are undone, and it can never be",
                    step=branch_label,
                )
            if branch.compensation is None and index != self.last:
                raise self.fail(
                    f"the branch has no compensation, and its group {group.name!r} is not the "
                    "final step: a later failure could not undo it",
                    step=branch_label,
                )

    def _await_event(self, wait: AwaitEvent, index: int) -> None:
        label = self._name(wait.name, index, "a wait's name")
        if not isinstance(wait.event, str) or not NAME_PATTERN.match(wait.event):
            raise self.fail(
                f"the event must be a lower-case identifier, got {wait.event!r}", step=label
            )
        if not positive_seconds(wait.timeout):
            raise self.fail(
                f"the timeout must be a finite number > 0 seconds, got {wait.timeout!r}",
                step=label,
            )
        if not isinstance(wait.on_timeout, OnTimeout):
            raise self.fail(
                f"on_timeout must be 'compensate' or 'continue', got {wait.on_timeout!r}",
                step=label,
            )
        if wait.when is not None:
            problem = reference_problem(wait.when)
            if problem is not None:
                raise self.fail(f"when: {problem}", step=label)
        if wait.on_timeout is OnTimeout.COMPENSATE:
            self._may_fail_here(label, "a wait that compensates on timeout")

    def _sub_saga(self, sub: SubSaga, index: int) -> None:
        label = self._name(sub.name, index, "a child saga's name")
        self._may_fail_here(label, "a child saga (it may end compensated)")
        child = sub.definition
        if (
            not isinstance(child, tuple)
            or len(child) != 2
            or not isinstance(child[0], str)
            or not NAME_PATTERN.match(child[0])
            or isinstance(child[1], bool)
            or not isinstance(child[1], int)
            or child[1] < 1
        ):
            raise self.fail(
                f"the child definition must be a (name, version) pair such as "
                f"CHILD.key, got {child!r}",
                step=label,
            )
        if child == self.definition.key:
            raise self.fail("the saga starts itself as its own child", step=label)
        if not isinstance(sub.payload, Mapping):
            raise self.fail("the child payload must map field names to references", step=label)
        if not positive_seconds(sub.check_every):
            raise self.fail(
                f"check_every must be a finite number > 0 seconds, got {sub.check_every!r}",
                step=label,
            )
        for field, reference in sub.payload.items():
            problem = field_name_problem(field) or reference_problem(reference)
            if problem is not None:
                raise self.fail(f"child payload: {problem}", step=label)
        if self.children is None:
            return
        if child not in self.children:
            raise self.fail(
                f"the child definition {child[0]!r} v{child[1]} is not registered", step=label
            )
        if index != self.last:
            gap = compensation_gap(self.children[child], self.children, {self.definition.key})
            if gap is not None:
                raise self.fail(
                    f"the child saga {child[0]!r} v{child[1]} may need undoing (steps follow "
                    f"it), but {gap}",
                    step=label,
                )


def compensation_gap(
    definition: SagaDefinition, children: Children, starting: set[tuple[str, int]]
) -> str | None:
    """What keeps ``definition`` from being fully compensable, or ``None``."""
    if definition.key in starting:
        return f"{definition.name!r} v{definition.version} starts itself (a cycle of child sagas)"
    for position in definition.positions:
        where = f"{definition.name!r} v{definition.version}"
        if isinstance(position, Step) and not position.compensatable:
            return f"step {position.name!r} of {where} has no compensation"
        if isinstance(position, Parallel) and not position.compensatable:
            return f"a branch of group {position.name!r} of {where} has no compensation"
        if isinstance(position, SubSaga):
            child = children.get(position.definition)
            if child is None:
                name, version = position.definition
                return f"its child {name!r} v{version} is not registered"
            gap = compensation_gap(child, children, starting | {definition.key})
            if gap is not None:
                return gap
    return None


def _check_step_fields(step: Step, label: str, fail: Fail) -> None:
    """Everything a step says about itself (its place in the saga is checked apart)."""
    for what in ("journey", "action"):
        value = getattr(step, what)
        if not isinstance(value, str) or not NAME_PATTERN.match(value):
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
    if not positive_seconds(step.timeout):
        raise fail(
            f"the timeout must be a finite number > 0 seconds, got {step.timeout!r}", step=label
        )
    for what in ("retry", "compensation_retry"):
        if not isinstance(getattr(step, what), RetryPolicy):
            raise fail(f"{what} must be a RetryPolicy", step=label)
    if step.compensation is not None:
        if step.no_compensation is not None:
            raise fail("it names a compensation and says it needs none", step=label)
        if not isinstance(step.compensation, str) or not NAME_PATTERN.match(step.compensation):
            raise fail(
                f"the compensation must be a lower-case identifier, got {step.compensation!r}",
                step=label,
            )
        if step.compensation == step.action:
            raise fail("the compensation is the action itself", step=label)
    elif step.no_compensation is None:
        raise fail(
            "it has no compensation; name one, or mark it "
            "NoCompensation.LAST (final step) or NoCompensation.RETRIABLE",
            step=label,
        )
    elif not any(step.no_compensation is marker for marker in NoCompensation):
        raise fail(f"unknown no_compensation {step.no_compensation!r}", step=label)
