"""Print a saga definition step by step: what the journey examples show first."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from saga import SagaDefinition


def print_outline(definition: SagaDefinition, start: Callable[..., Any]) -> None:
    """The definition's steps (who runs what, at which isolation, undone by what) and the
    signature of the function its journey starts it with."""
    print(f"{definition.name} v{definition.version}: {len(definition.steps)} steps")
    for number, step in enumerate(definition.steps, 1):
        undo = step.compensation or f"nothing ({step.no_compensation} step)"
        print(
            f"  {number}. {step.journey:<13} {step.action:<24} {step.isolation:<15} "
            f"timeout {step.timeout:g} s, {step.retry.max_attempts} attempts; undone by {undo}"
        )
    signature = inspect.signature(start)
    bare = signature.replace(
        parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
        return_annotation=signature.empty,
    )
    print(f"started with: saga_id = await {start.__name__}{bare}")
    print()
