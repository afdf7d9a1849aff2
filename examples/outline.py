"""Print a saga definition position by position: what the journey examples show first."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from saga import AwaitEvent, Parallel, SagaDefinition, Step, SubSaga


def _step(step: Step) -> str:
    undo = step.compensation or f"nothing ({step.no_compensation} step)"
    return (
        f"{step.journey:<13} {step.action:<24} {step.isolation:<15} "
        f"timeout {step.timeout:g} s, {step.retry.max_attempts} attempts; undone by {undo}"
    )


def print_outline(definition: SagaDefinition, start: Callable[..., Any] | None) -> None:
    """The definition's positions (who runs what, at which isolation, undone by what; a
    parallel group's branches together; what a wait waits for; which child saga starts,
    with what payload) and the signature of the function its journey starts it with
    (``None``: a saga that other sagas start as their child)."""
    print(f"{definition.name} v{definition.version}: {len(definition.positions)} positions")
    for number, position in enumerate(definition.positions, 1):
        if isinstance(position, Step):
            print(f"  {number}. {_step(position)}")
        elif isinstance(position, Parallel):
            print(f"  {number}. parallel group {position.name!r}, its branches at the same time:")
            for branch in position.branches:
                print(f"     | {_step(branch)}")
        elif isinstance(position, AwaitEvent):
            skipped = f", skipped when {position.when} is false" if position.when else ""
            print(
                f"  {number}. wait {position.name!r} for the signal {position.event!r}, "
                f"up to {position.timeout:g} s, then {position.on_timeout}{skipped}"
            )
        elif isinstance(position, SubSaga):
            child, version = position.definition
            fields = ", ".join(f"{k}={v}" for k, v in position.payload.items()) or "nothing"
            print(
                f"  {number}. child saga {child} v{version} as {position.name!r}, "
                f"its payload {fields}; done when the child ends"
            )
    if start is None:
        print("started as a child saga by the sagas that need it")
        print()
        return
    signature = inspect.signature(start)
    bare = signature.replace(
        parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
        return_annotation=signature.empty,
    )
    print(f"started with: saga_id = await {start.__name__}{bare}")
    print()
