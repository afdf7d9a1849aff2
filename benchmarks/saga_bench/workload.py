"""What a workload is to the driver: the sagas it registers, the service processes it
runs, the sagas it starts (built in each level's fresh database), what it expects of
their outcomes, and its check of their effects once they have all ended."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from benchmarks.saga_bench.results import InvariantFigures
from saga.coordinator import Coordinator
from saga.definition import SagaDefinition

Starter = Callable[[Coordinator], Awaitable[uuid.UUID]]
"""Starts one saga through the coordinator and returns its id."""


@dataclass
class Verdict:
    """What a workload's check found once every saga of a level had ended."""

    problems: list[str]
    invariants: InvariantFigures | None = None


class Workload(Protocol):
    name: str
    definitions: Sequence[SagaDefinition]

    def commands(self, level: int) -> dict[str, list[str]]:
        """Each service process: its name and ``python -m`` argv, coordinator first."""
        ...

    def prepare(self, url: str, level: int, sagas: int) -> list[Starter]:
        """Build the rows ``sagas`` sagas act on in the database at ``url`` and return a
        starter per saga, in the order they are to start."""
        ...

    def expected_compensated(self, measured: int) -> int | None:
        """How many of ``measured`` sagas must compensate, when the workload knows."""
        ...

    async def verify(self, url: str, ids: Sequence[uuid.UUID]) -> Verdict:
        """Check the effects, after every service has stopped."""
        ...

    def describe(self) -> dict[str, Any]:
        """The workload's settings, for the JSON report."""
        ...
