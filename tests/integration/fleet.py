"""The engine process fleet and the mixed journey load for tests
(:mod:`benchmarks.reliability.processes`, :mod:`benchmarks.reliability.load`), bound to a
test's :class:`SagaEnvironment`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from benchmarks.reliability import load
from benchmarks.reliability.load import (
    count_finished,
    start_all,
    wait_finished,
    wait_some_finished,
)
from benchmarks.reliability.processes import EngineProcess, Fleet, log_events, probe
from benchmarks.saga_bench.workload import Starter
from tests.integration.conftest import SagaEnvironment

__all__ = [
    "EngineProcess",
    "Fleet",
    "count_finished",
    "fleet",
    "log_events",
    "prepare_mix",
    "probe",
    "start_all",
    "wait_finished",
    "wait_some_finished",
]


@contextlib.contextmanager
def fleet(env: SagaEnvironment, logs: Path, **environ: str) -> Iterator[Fleet]:
    """A fleet on the test's database, broker and topics whose processes are killed on
    the way out; on failure each one's output is printed."""
    running = Fleet(env.process_environment(), logs, dict(environ))
    try:
        yield running
    except BaseException:
        print(running.describe())
        raise
    finally:
        running.stop_all()


async def prepare_mix(env: SagaEnvironment, sagas: int) -> list[Starter]:
    return await load.prepare_mix(env.database_url, sagas)
