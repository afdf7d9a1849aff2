"""pytest fixtures for testing sagas: a database of each test's own, migrated to head.

Enable it in the suite's ``conftest.py``::

    pytest_plugins = ["saga.testing.pytest_plugin"]

- ``saga_settings`` (session): ``load_settings()``, which the template is made with; a
  suite that needs other settings overrides this fixture in its conftest.
- ``saga_database_template`` (session): a :class:`~saga.testing.MigratedTemplate`, made
  once per run on the server ``DATABASE_URL`` names, or on an embedded PostgreSQL started
  for the run when it is unset; dropped (and the server stopped) at the end.
- ``saga_database_url`` (function): the URL of a database of the test's own, copied from
  the template (migrated, reference seeds loaded), dropped after the test.

It is not registered as a ``pytest11`` entry point on purpose: that would load it into
every pytest run of every project installed alongside the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from saga.settings import Settings, load_settings
from saga.testing.database import MigratedTemplate

T = TypeVar("T")


def _run_in_own_loop(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``work()`` to its end in an event loop of its own, on a thread of its own.

    The fixtures are plain functions so that they work whatever runs the suite's async
    tests (pytest-asyncio in any mode, anyio) and whatever loop scope it gives them; a
    thread keeps ``asyncio.run`` from meeting, or replacing, a loop of the caller's."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="saga-testing") as thread:
        return thread.submit(lambda: asyncio.run(work())).result()


@pytest.fixture(scope="session")
def saga_settings() -> Settings:
    """The settings the kit's databases are made with: ``load_settings()``."""
    return load_settings()


@pytest.fixture(scope="session")
def saga_database_template(saga_settings: Settings) -> Iterator[MigratedTemplate]:
    """A database migrated to head with the reference seeds, copied by each test's
    ``saga_database_url``; on the configured server or an embedded one."""
    template = MigratedTemplate(saga_settings)
    _run_in_own_loop(template.open)
    try:
        yield template
    finally:
        _run_in_own_loop(template.close)


@pytest.fixture
def saga_database_url(saga_database_template: MigratedTemplate) -> Iterator[str]:
    """A migrated database of this test's own (a copy of the template), dropped after it."""
    url = _run_in_own_loop(saga_database_template.create_copy)
    try:
        yield url
    finally:
        _run_in_own_loop(lambda: saga_database_template.drop_copy(url))
