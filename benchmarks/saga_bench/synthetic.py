"""The default workload: ``BENCH_SAGA`` served by ``benchmarks.saga_services``, one saga
in ten refused at its last step."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from benchmarks import saga_services
from benchmarks.saga_bench.constants import FAIL_EVERY
from benchmarks.saga_bench.workload import Starter, Verdict
from benchmarks.saga_services import BENCH_SAGA
from saga.coordinator import Coordinator
from saga.definition import SagaDefinition
from saga.settings import to_plain_url


def starter(payload: Mapping[str, Any]) -> Starter:
    async def start(coordinator: Coordinator) -> uuid.UUID:
        return await coordinator.start(BENCH_SAGA, payload)

    return start


class Synthetic:
    name = "synthetic"
    definitions: Sequence[SagaDefinition] = (BENCH_SAGA,)

    def __init__(self, warmup: int) -> None:
        self._warmup = warmup

    def commands(self, level: int) -> dict[str, list[str]]:
        return {
            "coordinator": ["saga", "run", "coordinator", "--concurrency", str(max(level, 128))],
            **{
                journey: [
                    "benchmarks.saga_services",
                    "--journey",
                    journey,
                    "--concurrency",
                    str(max(level, 64)),
                ]
                for journey in saga_services.JOURNEYS
            },
        }

    def prepare(self, url: str, level: int, sagas: int) -> list[Starter]:
        """The reference rows and a saga per payload; one in ten fails at the last step,
        in the warm-up and in the run."""
        payloads = asyncio.run(saga_services.prepare(url, sagas))
        warmup = self._warmup
        for n, payload in enumerate(payloads):
            index = n - warmup if n >= warmup else n
            payload["fail"] = index % FAIL_EVERY == FAIL_EVERY - 1
        return [starter(payload) for payload in payloads]

    def expected_compensated(self, measured: int) -> int | None:
        return measured // FAIL_EVERY  # the measured sagas told to fail

    async def verify(self, url: str, ids: Sequence[uuid.UUID]) -> Verdict:
        conn = await asyncpg.connect(to_plain_url(url))
        try:
            return Verdict(problems=await saga_services.check_effects(conn))
        finally:
            await conn.close()

    def describe(self) -> dict[str, Any]:
        return {
            "workload": self.name,
            "definition": f"{BENCH_SAGA.name} v{BENCH_SAGA.version}",
            "fail_every": FAIL_EVERY,
        }
